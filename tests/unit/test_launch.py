"""`bastion launch`: request checks (layout, time, partition), the CLI's dry runs, and what it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bastion.errors import LaunchError
from bastion.launch.request import (
    format_time_limit,
    k8s_name,
    parse_time_limit,
    slurm_job_name,
    worker_layout,
)
from bastion.launch.slurm import SlurmOptions, check_options
from bastion.rundir.layout import RUN_CONFIG_FILE
from bastion.runtime.data import prepare_dataset
from bastion.specs import ParallelPlan
from helpers.cli import bastion, run, user_error

PYTHON = sys.executable


# ---- request checks -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("workers", "nodes", "per_node", "device", "expected"), [
    (4, 2, None, "cpu", (2, 2)),
    (16, None, None, "gpu", (2, 8)),     # GPU default: 8 per node
    (4, None, None, "gpu", (1, 4)),
    (6, None, None, "cpu", (1, 6)),      # CPU default: one node
    (32, None, 4, "gpu", (8, 4)),
    (8, 2, 4, "gpu", (2, 4)),
])
def test_worker_layout_splits_the_plan(workers, nodes, per_node, device, expected) -> None:
    layout = worker_layout(workers, nodes, per_node, device)
    assert (layout.nodes, layout.procs_per_node) == expected
    assert layout.world_size == workers


@pytest.mark.parametrize(("workers", "nodes", "per_node", "needle"), [
    (8, None, 3, "3 GPUs per node do not divide the plan's 8 workers"),
    (8, 3, None, "8 workers (dp × tp × pp × cp), which 3 nodes cannot share"),
    (8, 2, 8, "--nodes 2 × --gpus-per-node 8 = 16"),
    (8, 0, None, "--nodes must be at least 1"),
])
def test_worker_layout_refuses_uneven_splits(workers, nodes, per_node, needle) -> None:
    with pytest.raises(LaunchError) as err:
        worker_layout(workers, nodes, per_node, "gpu")
    assert needle in err.value.problem
    assert err.value.fix


@pytest.mark.parametrize(("text", "seconds"), [
    ("00:01:00", 60), ("01:30:00", 5400), ("2-00:00:00", 172800), ("1-02:03:04", 93784), ("100:00:00", 360000),
])
def test_time_limit_parses_and_formats(text: str, seconds: int) -> None:
    assert parse_time_limit(text) == seconds
    assert parse_time_limit(format_time_limit(seconds)) == seconds


@pytest.mark.parametrize("text", ["90", "1:2:3", "00:61:00", "00:00:75", "1h", "", "00:00:30", "-1:00:00"])
def test_bad_time_limits_are_refused(text: str) -> None:
    with pytest.raises(LaunchError) as err:
        parse_time_limit(text)
    assert "HH:MM:SS" in err.value.render() or "one minute" in err.value.problem


def test_format_time_limit_uses_days_only_when_needed() -> None:
    assert format_time_limit(3599) == "00:59:59"
    assert format_time_limit(86400 + 61) == "1-00:01:01"


@pytest.mark.parametrize("partition", ["gpu", "gpu,gpu-long", "a100_80g.x"])
def test_partition_names_are_accepted(partition: str) -> None:
    assert check_options(SlurmOptions(partition=partition)).partition == partition


@pytest.mark.parametrize("partition", ["gpu part", "gpu;rm -rf ~", "gpu,", ",gpu", "$(id)", "gpu\nx"])
def test_unknown_partition_syntax_is_refused(partition: str) -> None:
    with pytest.raises(LaunchError, match="not a Slurm partition name"):
        check_options(SlurmOptions(partition=partition))


def test_signal_lead_follows_the_time_limit() -> None:
    assert SlurmOptions().lead_seconds() == 120                        # partition default limit
    assert SlurmOptions(time_limit_s=120).lead_seconds() == 30         # floor of 30 s
    assert SlurmOptions(time_limit_s=4 * 3600).lead_seconds() == 600   # 10%, capped at 10 min
    assert SlurmOptions(time_limit_s=3000).lead_seconds() == 300
    assert SlurmOptions(time_limit_s=60).lead_seconds() == 30          # never more than half
    with pytest.raises(LaunchError, match="before the job starts"):
        check_options(SlurmOptions(time_limit_s=60, signal_lead_s=60))


def test_names_are_reduced_to_what_schedulers_accept() -> None:
    assert slurm_job_name('x"; rm -rf ~') == "x-rm--rf"
    assert slurm_job_name("$(id)") == "id"
    assert slurm_job_name("!!!") == "bastion"
    assert k8s_name("My_Run.2026") == "my-run-2026"
    assert k8s_name("7b-run") == "bastion-7b-run"   # a label must start with a letter here
    assert len(k8s_name("a" * 100)) == 40


# ---- the CLI ----------------------------------------------------------------------------------------------
@pytest.fixture()
def inputs(tmp_path: Path) -> dict[str, Path]:
    plan = ParallelPlan(dp=4, zero_stage=3, global_batch=8, precision="fp32").save(tmp_path / "plan.json")
    text = tmp_path / "text.txt"
    text.write_text("a small corpus for the launch tests\n" * 200)
    data = tmp_path / "data"
    prepare_dataset([text], data)  # launch checks the dataset before writing a job
    return {"plan": plan, "data": data, "run": tmp_path / "runs" / "r1"}


def launch_args(inputs: dict[str, Path], *more: str) -> list[str]:
    return ["launch", "--model", "tiny", "--plan", str(inputs["plan"]), "--data", str(inputs["data"]),
            "--run-dir", str(inputs["run"]), "--steps", "12", *more]


def test_slurm_dry_run_prints_the_script_and_writes_nothing(inputs) -> None:
    done = bastion(*launch_args(inputs, "--on", "slurm", "--nodes", "2", "--device", "cpu", "--time", "00:10:00",
                                "--partition", "debug", "--dry-run", "--", "--seed", "3"))
    assert done.returncode == 0, done.stderr
    script = done.stdout
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=2",
                 "#SBATCH --time=00:10:00", "#SBATCH --partition=debug", "#SBATCH --requeue",
                 "#SBATCH --signal=B:USR1@60", f"#SBATCH --output={inputs['run']}/slurm-%j.out"):
        assert line in script.splitlines()
    assert "--gpus-per-node" not in script   # a CPU job asks for no GPUs
    # the workers' Python is found when the job runs, in its environment, not fixed here
    assert str(Path(PYTHON).absolute()) not in script
    assert 'python=$(command -v "${BASTION_PYTHON:-python3}" || true)' in script.splitlines()
    assert "--nproc-per-node=2" in script and '"--nnodes=$nnodes"' in script
    assert "#SBATCH --no-kill" in script.splitlines()   # a lost node does not end the allocation
    assert not inputs["run"].exists()


def test_gpu_script_asks_for_gpus_per_node(inputs) -> None:
    plan = ParallelPlan(dp=8, tp=2, global_batch=16).save(inputs["plan"])
    done = bastion(*launch_args(inputs, "--on", "slurm", "--gpus-per-node", "8", "--plan", str(plan),
                                "--dry-run"))
    assert done.returncode == 0, done.stderr
    assert "#SBATCH --nodes=2" in done.stdout and "#SBATCH --gpus-per-node=8" in done.stdout
    assert "#SBATCH --cpus-per-task=8" in done.stdout


def test_slurm_without_submit_writes_script_and_run_config(inputs) -> None:
    done = bastion(*launch_args(inputs, "--on", "slurm", "--nodes", "2", "--device", "cpu"))
    assert done.returncode == 0, done.stderr
    script = inputs["run"] / "launch" / "job.sbatch"
    copy = inputs["run"] / RUN_CONFIG_FILE
    assert script.is_file() and f"sbatch {script}" in done.stdout
    assert ParallelPlan.from_dict(json.loads(copy.read_text())["plan"]) == ParallelPlan.load(inputs["plan"])
    # a requeued job reads the copy, not the files the user may edit
    assert f"-m bastion _worker {copy}" in " ".join(script.read_text().split())
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def test_local_dry_run_is_one_torchrun_command(inputs) -> None:
    done = bastion(*launch_args(inputs, "--on", "local", "--device", "cpu", "--dry-run"))
    assert done.returncode == 0, done.stderr
    words = done.stdout.split()
    assert words[:3] == [str(Path(PYTHON).absolute()), "-m", "bastion.runtime.local_agent"]   # torchrun, offline
    assert "--nproc-per-node=4" in words and "--local-addr=127.0.0.1" in words   # addresses, not host names
    assert words[-3:] == ["bastion", "_worker", str(inputs["run"].absolute() / RUN_CONFIG_FILE)]
    assert not inputs["run"].exists()


@pytest.mark.parametrize(("more", "needle"), [
    (["--on", "slurm", "--time", "10 minutes"], "is not HH:MM:SS"),
    (["--on", "slurm", "--partition", "gpu;reboot"], "not a Slurm partition name"),
    (["--on", "slurm", "--gpus-per-node", "3"], "3 GPUs per node do not divide"),
    (["--on", "local", "--nodes", "2"], "runs on this machine only"),
    (["--on", "lsf"], "Unknown launch engine 'lsf'"),
    (["--on", "k8s"], "needs a container image"),
    (["--on", "k8s", "--image", "img:1", "--k8s-kind", "mpijob"], "Unknown Kubernetes job kind"),
    (["--on", "slurm", "--dry-run", "--submit"], "contradict"),
])
def test_malformed_requests_get_guidance_and_exit_2(inputs, more, needle, capsys) -> None:
    user_error(launch_args(inputs, *more), capsys, needle)   # in this process: a refusal needs no interpreter
    assert not inputs["run"].exists()


def test_plan_is_validated_against_the_model_before_anything_is_written(inputs, capsys) -> None:
    bad = ParallelPlan(dp=1, tp=3, global_batch=4).save(inputs["plan"])  # tiny has 4 heads
    user_error(launch_args(inputs, "--on", "slurm", "--plan", str(bad)), capsys,
               "tp = 3 does not divide the 4 attention heads")
    assert not inputs["run"].exists()


def test_missing_data_directory_is_refused(inputs, capsys) -> None:
    user_error(launch_args(inputs, "--on", "slurm", "--data", str(inputs["data"] / "nope")), capsys,
               "does not exist", "bastion data prepare")


def test_status_of_a_run_directory_reads_metrics_and_summary(tmp_path: Path) -> None:
    from bastion.launch.slurm import run_dir_progress

    run = tmp_path / "run"
    for name in ("step-00000004", "step-00000008", ".tmp-step-00000012", "quarantine", "step-00000010"):
        (run / "checkpoints" / name).mkdir(parents=True)
    for name in ("step-00000004", "step-00000008"):   # step 10 has no manifest: not committed
        (run / "checkpoints" / name / "manifest.json").write_text("{}")
    lines = [{"step": 1, "loss": 5.0}, {"event": "checkpoint", "step": 4}, {"step": 2, "loss": 4.5},
             {"event": "checkpoint", "step": 8}, {"event": "resume", "resumed_from_step": 8}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 3, "lo')
    (run / "summary.json").write_text(json.dumps({"steps": 2, "final_loss": 4.5}))
    progress = run_dir_progress(run)
    assert progress["last_step"] == 2 and progress["last_loss"] == 4.5   # the cut-off last line is skipped
    assert progress["events"] == {"checkpoint": 2, "resume": 1}
    assert progress["checkpoints"] == ["step-00000004", "step-00000008"]
    assert progress["summary"]["final_loss"] == 4.5


def test_registry_remembers_the_newest_run_dir(tmp_path: Path, monkeypatch) -> None:
    from bastion.launch import registry

    monkeypatch.setenv("BASTION_STATE_DIR", str(tmp_path / "state"))
    assert registry.run_dir_of("slurm", "7") is None
    registry.record("slurm", "7", "/runs/a")
    registry.record("slurm", "8", "/runs/b")
    registry.record("slurm", "7", "/runs/c")
    assert registry.run_dir_of("slurm", "7") == "/runs/c"
    assert registry.run_dir_of("slurm", "8") == "/runs/b"
    assert registry.run_dir_of("k8s", "7") is None


def test_status_of_an_unknown_job_gets_guidance(tmp_path: Path) -> None:
    """Slurm clients that know no such job (stubs that answer like squeue/scontrol/sacct do for a purged id)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("squeue", "scontrol", "sacct"):
        (bin_dir / tool).write_text("#!/bin/sh\necho 'Invalid job id specified' >&2\nexit 1\n")
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "BASTION_STATE_DIR": str(tmp_path / "s")}
    done = subprocess.run([PYTHON, "-m", "bastion", "status", "4242"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 2
    assert "Slurm does not know job 4242" in done.stderr and "--run-dir" in done.stderr
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 5, "loss": 1.0}\n')
    done = subprocess.run([PYTHON, "-m", "bastion", "status", "4242", "--run-dir", str(run), "--json"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    reported = json.loads(done.stdout)
    assert reported["job"]["state"].startswith("gone from Slurm") and reported["run"]["last_step"] == 5


def test_launched_jobs_checkpoint_unless_told_otherwise(inputs, capsys) -> None:
    """A requeued or restarted job resumes from its run directory: with no checkpoints it would start over."""
    def every(*extra: str) -> int:
        code, _, err = run(launch_args(inputs, "--on", "slurm", "--nodes", "2", "--device", "cpu", "--", *extra),
                           capsys)
        assert code == 0, err
        return json.loads((inputs["run"] / RUN_CONFIG_FILE).read_text())["train"]["resilience"]["checkpoint_every"]

    assert every() == -1   # auto
    assert every("--checkpoint-every", "5") == 5
    assert every("--checkpoint-every=0") == 0


@pytest.mark.parametrize(("more", "needle"), [
    (["--", "--hang-timeout-s", "nan"], "--hang-timeout-s must be a positive number"),
    (["--", "--inject", "kill:rank=9,step=3", "--max-restarts", "1"], "is an option of `bastion launch`"),
    (["--", "--inject", "kill:rank=9,step=3"], "targets rank 9"),
    (["--", "--no-such-flag"], "No such option"),
    (["--run-dir", "/proc/bastion/run"], "is not writable"),
])
def test_train_arguments_are_checked_at_launch_time(inputs, more, needle, capsys) -> None:
    user_error(launch_args(inputs, "--on", "slurm", "--device", "cpu", *more), capsys, needle)
    assert not inputs["run"].exists()


# ---- Slurm options ----------------------------------------------------------------------------------------
def test_slurm_options_reach_the_script_quoted(inputs) -> None:
    done = bastion(*launch_args(
        inputs, "--on", "slurm", "--nodes", "2", "--device", "cpu", "--dry-run", "--account", "proj-1",
        "--qos", "high", "--gres", "gpu:a100:2", "--constraint", "a100&ib", "--exclusive", "--exclude", "n[3-4]",
        "--container-image", "nvcr.io#nvidia/pytorch:25.01-py3", "--sbatch-arg=--comment=two words; $(id)",
        "--sbatch-arg", "--mail-type=END", "--switches", "auto"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for line in ("#SBATCH --account=proj-1", "#SBATCH --qos=high", "#SBATCH --gres=gpu:a100:2",
                 "#SBATCH --constraint='a100&ib'", "#SBATCH --exclusive", "#SBATCH --exclude='n[3-4]'",
                 "#SBATCH --switches=1@10:00",
                 "#SBATCH '--comment=two words; $(id)'", "#SBATCH --mail-type=END"):
        assert line in lines
    assert "--gpus-per-node" not in done.stdout   # --gres says what each node gets
    script = " ".join(done.stdout.replace("\\\n", " ").split())   # bash's line continuations joined
    run, data = inputs["run"], inputs["data"]
    assert (f"'--container-image=nvcr.io#nvidia/pytorch:25.01-py3' --container-mounts={run}:{run},{data}:{data}"
            in script)
    assert "worker_cmd=( python3 -m torch.distributed.run" in script   # the image's Python runs the workers
    assert subprocess.run(["bash", "-n"], input=done.stdout, text=True).returncode == 0


@pytest.mark.parametrize(("more", "needle"), [
    (["--account", "a b"], "--account 'a b' is empty or contains white space"),
    (["--sbatch-arg", "--nodes=3"], "--sbatch-arg --nodes is an option bastion sets itself"),
    (["--sbatch-arg", "mail"], "is not one sbatch option"),
    (["--sbatch-arg", "--comment=a\nb"], "control character"),
    (["--node-selector", "a=b"], "are options of --on k8s"),
    (["--topology-label", "rack"], "are options of --on k8s"),
    (["--switches", "two"], "is not COUNT[@MAX-WAIT]"),
    (["--switches", "2@1-00:00:00"], None),
    (["--min-nodes", "1"], "this job is not elastic"),
    (["--min-nodes", "1", "--", "--on-failure", "shrink", "--checkpoint-every", "2"], None),
    (["--", "--on-failure", "spares"], "add --spare-nodes K"),
    (["--spare-nodes", "1", "--", "--on-failure", "spares"], None),
])
def test_slurm_option_mistakes_get_guidance(inputs, more, needle, capsys) -> None:
    argv = launch_args(inputs, "--on", "slurm", "--nodes", "2", "--device", "cpu", "--dry-run",
                       *[m.replace("\\n", "\n") for m in more])
    if needle is None:
        code, _, err = run(argv, capsys)
        assert code == 0, err
        return
    user_error(argv, capsys, needle)


def test_a_slurm_job_with_spares_allocates_them_and_steps_on_the_plans_nodes(inputs, capsys) -> None:
    code, out, err = run(launch_args(inputs, "--on", "slurm", "--nodes", "2", "--device", "cpu", "--dry-run",
                                     "--json", "--spare-nodes", "1", "--", "--on-failure", "auto"), capsys)
    assert code == 0, err
    done = json.loads(out)
    assert "#SBATCH --nodes=3" in done["script"].splitlines()
    # without bastion on the batch host the steps still leave the spare out
    assert "step_nodes=$(( SLURM_JOB_NUM_NODES - 1 ))" in done["script"]
    assert subprocess.run(["bash", "-n"], input=done["script"], text=True).returncode == 0
    assert done["run_config"]["spares"] == {"plan_nodes": 2, "spare_nodes": 1}
    # auto chose among what this job can run, said so, and the run config keeps the choice for the report
    decision = done["run_config"]["on_failure"]
    assert decision["asked"] == "auto" and set(decision["predicted_goodput"]) == {"requeue", "shrink", "spares"}
    assert decision["policy"] == decision["chosen"] and decision["chosen"] in decision["predicted_goodput"]
    assert f"on-failure auto: {decision['chosen']} (predicted goodput requeue" in err


def test_spares_on_this_machine_run_as_requeue(inputs, capsys) -> None:
    code, out, err = run(launch_args(inputs, "--on", "local", "--dry-run", "--json", "--", "--on-failure",
                                     "spares"), capsys)
    assert code == 0, err
    assert "a restart gets its replacement at once, which is what requeue does" in err
    assert json.loads(out)["run_config"]["on_failure"] == {"asked": "spares", "policy": "requeue"}


@pytest.mark.parametrize(("more", "needle"), [
    (["--on", "local", "--spare-nodes", "1"], "--spare-nodes allocates hot spare nodes for a Slurm job"),
    (["--on", "k8s", "--", "--on-failure", "spares"], "Kubernetes job does not have"),
])
def test_spares_outside_slurm_are_refused(inputs, more, needle, capsys) -> None:
    user_error(launch_args(inputs, "--dry-run", *more), capsys, needle)


def test_an_elastic_slurm_job_carries_its_node_range(inputs) -> None:
    done = bastion(*launch_args(inputs, "--on", "slurm", "--nodes", "2", "--device", "cpu", "--dry-run", "--json",
                                "--", "--on-failure", "shrink", "--checkpoint-every", "2"))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["run_config"]["elastic"] == {"min_nodes": 1, "max_nodes": 2, "procs_per_node": 2}
    assert "_slurm_nodes" in out["script"]
