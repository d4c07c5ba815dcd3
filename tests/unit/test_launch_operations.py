"""Launch operations as a user runs them: a run directory holding another run is refused (or set aside with
--overwrite), and `bastion status|logs|cancel` reach Slurm and Kubernetes jobs through their clients (stub scripts
on PATH that record the command lines they get). The real local launch is tests/dist/test_local_launch_ops.py."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from bastion.rundir.occupant import find_occupant, set_aside
from helpers.cli import run, user_error


def _config(model: str = "tiny", dp: int = 1, seed: int = 0, data: str = "/data") -> dict:
    return {"format": 1, "world_size": dp, "train": {"data": data, "seed": seed, "steps": 10, "seq_len": None},
            "model": {"name": model, "hidden": 64 if model == "tiny" else 128, "source": "preset"},
            "plan": {"dp": dp, "tp": 1, "global_batch": 8}}


def _held(run_dir: Path, config: dict) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run_config.json").write_text(json.dumps(config))
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n')
    return run_dir


def test_what_makes_another_run(tmp_path: Path) -> None:
    run_dir = _held(tmp_path / "run", _config())
    assert find_occupant(tmp_path / "empty", _config()) is None
    assert find_occupant(run_dir, {**_config(), "train": {**_config()["train"], "steps": 99}}).is_same_run
    assert find_occupant(run_dir, _config(model="small")).differences == ("model tiny → small",)
    assert find_occupant(run_dir, _config(dp=2)).differences == ("plan dp 1 → 2",)
    assert find_occupant(run_dir, _config(seed=3)).differences == ("seed 0 → 3",)
    (run_dir / "run_config.json").unlink()   # a run of an older bastion: model.json and plan.json tell
    (run_dir / "model.json").write_text(json.dumps(_config()["model"]))
    assert find_occupant(run_dir, _config(dp=2)).is_same_run   # no plan.json: the plan cannot differ
    (run_dir / "model.json").unlink()
    assert "cannot be read" in find_occupant(run_dir, _config()).differences[0]


def test_overwrite_moves_the_run_aside_and_keeps_other_files(tmp_path: Path) -> None:
    run_dir = _held(tmp_path / "run", _config())
    (run_dir / "checkpoints" / "step-00000001").mkdir(parents=True)
    (run_dir / "notes.txt").write_text("mine")
    folder, moved = set_aside(run_dir)
    assert folder.parent == run_dir and folder.name.startswith("replaced-")
    assert sorted(moved) == ["checkpoints", "metrics.jsonl", "run_config.json"]
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(["notes.txt", folder.name])
    assert (folder / "checkpoints" / "step-00000001").is_dir()
    assert set_aside(run_dir) is None


@pytest.fixture()
def inputs(tmp_path: Path) -> dict[str, Path]:
    from bastion.runtime.data import prepare_dataset
    from bastion.specs.plan import ParallelPlan

    text = tmp_path / "text.txt"
    text.write_text("a small corpus for the launch operation tests\n" * 100)
    prepare_dataset([text], tmp_path / "data")
    return {"plan": ParallelPlan(dp=1, global_batch=2, precision="fp32").save(tmp_path / "plan.json"),
            "data": tmp_path / "data", "run": tmp_path / "run"}


@pytest.mark.parametrize("command", ["train", "launch"])
def test_train_and_launch_refuse_a_directory_holding_another_run(inputs, capsys, command) -> None:
    from bastion.specs.model import load_model
    from bastion.specs.plan import ParallelPlan

    run_dir = inputs["run"]
    config = {"format": 1, "world_size": 1, "train": {"data": str(inputs["data"]), "seed": 0},
              "model": load_model("small").to_dict(), "plan": ParallelPlan.load(inputs["plan"]).to_dict()}
    _held(run_dir, config)
    before = sorted(p.name for p in run_dir.iterdir())
    argv = [command, "--model", "tiny", "--plan", str(inputs["plan"]), "--data", str(inputs["data"]), "--run-dir",
            str(run_dir), "--steps", "4", *(["--on", "local", "--device", "cpu", "--dry-run"]
                                            if command == "launch" else [])]
    user_error(argv, capsys, f"--run-dir {run_dir} holds another run: model small → tiny",
               "add --resume to continue that run", "--overwrite to start over", "replaced-DATE-TIME")
    user_error([*argv, "--resume", "--overwrite"], capsys, "--resume and --overwrite contradict each other")
    assert sorted(p.name for p in run_dir.iterdir()) == before   # refused before anything was written
    if command == "launch":   # --overwrite passes the check; a dry run moves nothing
        code, out, err = run([*argv, "--overwrite"], capsys)
        assert code == 0, err
        assert sorted(p.name for p in run_dir.iterdir()) == before


# ---- Slurm and Kubernetes through their clients ---------------------------------------------------------------

def _stub(bin_dir: Path, name: str, log: Path, body: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / name
    script.write_text(f"#!/bin/sh\necho {name} \"$@\" >> {shlex.quote(str(log))}\n{body}\n")
    script.chmod(0o755)


def test_slurm_cancel_and_status_of_a_run_directory(tmp_path: Path, capsys, monkeypatch) -> None:
    from bastion.rundir.launch_record import add_slurm_job

    log = tmp_path / "calls.txt"
    _stub(tmp_path / "bin", "scancel", log, "exit 0")
    _stub(tmp_path / "bin", "squeue", log, "echo 'RUNNING|None|0:05|1:00:00|1|node1'")
    _stub(tmp_path / "bin", "scontrol", log, "exit 1")
    _stub(tmp_path / "bin", "sacct", log, "exit 1")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}")
    monkeypatch.setenv("BASTION_STATE_DIR", str(tmp_path / "state"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    add_slurm_job(run_dir, "76")
    add_slurm_job(run_dir, "77")   # requeued by hand: the newest submission is the one followed
    code, out, err = run(["status", str(run_dir)], capsys)
    assert code == 0, err
    assert out.startswith("job 77: RUNNING, elapsed 0:05, nodes node1")
    code, out, err = run(["cancel", str(run_dir), "--json"], capsys)
    assert code == 0 and json.loads(out) == {"engine": "slurm", "job_id": "77"}
    assert "scancel 77" in log.read_text().splitlines()


def _kubectl(bin_dir: Path, log: Path) -> None:
    job = {"status": {"conditions": [{"type": "Created", "status": "True"},
                                     {"type": "Running", "status": "True", "message": "job is running"}]}}
    pods = {"items": [{"metadata": {"name": "r1-worker-0"},
                       "status": {"phase": "Running", "containerStatuses": [{"restartCount": 2}]}}]}
    _stub(bin_dir, "kubectl", log, f"""case "$1" in
  get) if [ "$2" = pods ]; then echo {shlex.quote(json.dumps(pods))}; else echo {shlex.quote(json.dumps(job))}; fi;;
  logs) echo '[pod/r1-worker-0/trainer] step 3 loss 4.1';;
  delete) echo 'pytorchjob.kubeflow.org "r1" deleted';;
esac""")


def test_kubernetes_status_logs_cancel_through_kubectl(tmp_path: Path, capsys, monkeypatch, inputs) -> None:
    log = tmp_path / "calls.txt"
    monkeypatch.setenv("BASTION_STATE_DIR", str(tmp_path / "state"))
    code, out, err = run(["launch", "--on", "k8s", "--image", "reg/bastion:1", "--model", "tiny", "--plan",
                          str(inputs["plan"]), "--data", "/data", "--run-dir", "/runs/r1", "--steps", "4",
                          "--manifest", str(tmp_path / "r1.yaml")], capsys)
    assert code == 0, err
    assert "bastion status r1" in out and "bastion cancel r1" in out

    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))   # no kubectl: guidance naming it
    user_error(["status", "r1"], capsys, "kubectl is not on PATH", "install kubectl")
    user_error(["logs", "r1"], capsys, "kubectl is not on PATH")
    user_error(["cancel", "r1"], capsys, "kubectl is not on PATH")
    user_error(["status", "nosuchjob"], capsys, "'nosuchjob' is neither a run directory, a Slurm job id")

    _kubectl(tmp_path / "bin", log)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    code, out, err = run(["status", "r1"], capsys)
    assert code == 0, err
    assert out.splitlines()[:2] == ["pytorchjob r1: Running (job is running)", "pods: r1-worker-0 Running "
                                                                              "(restarted 2x)"]
    code, out, err = run(["status", "r1", "--json"], capsys)
    assert json.loads(out)["job"]["state"] == "Running" and json.loads(out)["run_dir"] == "/runs/r1"
    code, out, err = run(["logs", "r1", "-n", "5", "--json"], capsys)
    assert code == 0 and json.loads(out) == {"source": "kubectl", "line": "[pod/r1-worker-0/trainer] step 3 loss 4.1"}
    code, out, err = run(["cancel", "r1"], capsys)
    assert code == 0 and out.startswith('pytorchjob.kubeflow.org "r1" deleted')
    assert log.read_text().splitlines() == [
        "kubectl get pytorchjobs.kubeflow.org r1 -o json",
        "kubectl get pods -l training.kubeflow.org/job-name=r1 -o json",
        "kubectl get pytorchjobs.kubeflow.org r1 -o json",
        "kubectl get pods -l training.kubeflow.org/job-name=r1 -o json",
        "kubectl logs -l training.kubeflow.org/job-name=r1 --all-containers --prefix --tail=5 --max-log-requests=64",
        "kubectl delete pytorchjobs.kubeflow.org r1 --wait=false",
    ]


# ---- a task file: one reviewed file per run ----------------------------------------------------------------------

TASK = """on = "slurm"
name = "tiny-task"
[resources]
nodes = 1
device = "cpu"
[slurm]
time = "00:30:00"
partition = "debug"
[train]
model = "tiny"
data = "data"
steps = 20
run_dir = "runs/task"
[train.plan]
dp = 2
global_batch = 4
precision = "fp32"
[train.optimizer]
lr = 3e-4
"""


def test_a_task_file_is_the_whole_launch_and_flags_override_it(inputs, capsys) -> None:
    task = inputs["data"].parent / "task.toml"
    task.write_text(TASK)
    code, out, err = run(["launch", str(task), "--dry-run", "--json"], capsys)
    assert code == 0, err
    done = json.loads(out)
    assert done["engine"] == "slurm"
    lines = done["script"].splitlines()
    for line in ("#SBATCH --job-name=tiny-task", "#SBATCH --nodes=1", "#SBATCH --time=00:30:00",
                 "#SBATCH --partition=debug", f"#SBATCH --output={task.parent / 'runs' / 'task'}/slurm-%j.out"):
        assert line in lines
    train = done["run_config"]["train"]
    assert (train["lr"], train["steps"], done["run_config"]["plan"]["dp"]) == (3e-4, 20, 2)
    assert train["data"] == str(inputs["data"])   # [train] paths are relative to the task file

    code, out, err = run(["launch", str(task), "--dry-run", "--json", "--partition", "long", "--on", "slurm",
                          "--set", "optimizer.lr=1e-3", "--", "--seed", "7"], capsys)
    assert code == 0, err
    done = json.loads(out)
    assert "#SBATCH --partition=long" in done["script"].splitlines()
    assert (done["run_config"]["train"]["lr"], done["run_config"]["train"]["seed"]) == (1e-3, 7)

    code, out, err = run(["launch", str(task), "--dry-run", "--json", "--on", "local"], capsys)
    assert code == 0, err   # the [slurm] table is for Slurm: a local try of the same file ignores it
    assert json.loads(out)["command"][-1] == str(task.parent / "runs" / "task" / "run_config.json")

    task.write_text(TASK.replace("partition =", "partiton ="))
    user_error(["launch", str(task), "--dry-run"], capsys, "unknown setting 'slurm.partiton'",
               "Did you mean 'slurm.partition'?")
    task.write_text(TASK.replace('nodes = 1', 'nodes = "two"'))
    user_error(["launch", str(task), "--dry-run"], capsys, "nodes:")
    task.write_text(TASK.split("[train]")[0])
    user_error(["launch", str(task), "--dry-run"], capsys, "has no [train] table")
