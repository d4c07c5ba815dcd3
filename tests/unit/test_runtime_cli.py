"""`bastion train` checks its input before any process starts, writes the run config once and starts workers
with the one worker entry (`bastion _worker CONFIG`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bastion.cli import main
from bastion.launch import local, worker
from bastion.rundir.layout import RUN_CONFIG_FILE
from bastion.runtime.data import prepare_dataset


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    """A dataset, a valid dp4 plan, and a launcher that records instead of starting torchrun."""
    (tmp_path / "t.txt").write_bytes(b"some text for tokens " * 200)
    prepare_dataset([tmp_path / "t.txt"], tmp_path / "data")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"dp": 4, "micro_batch": 1, "global_batch": 8, "precision": "fp32"}))
    launches = []
    monkeypatch.setattr(local, "run", lambda command, **_: launches.append(list(command)) or 0)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    return tmp_path, plan, launches


def _train(tmp_path, plan, *extra):
    return ["train", "--model", "tiny", "--plan", str(plan), "--data", str(tmp_path / "data"), "--steps", "3",
            "--run-dir", str(tmp_path / "run"), *extra]


def _fails_with(argv, capsys, *phrases):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for phrase in phrases:
        assert phrase in err, err
    return err


def test_a_valid_request_writes_the_run_config_and_starts_the_worker_entry(setup):
    tmp_path, plan, launches = setup
    with pytest.raises(SystemExit) as exit_info:
        main(_train(tmp_path, plan, "--nproc", "4", "--seed", "7"))
    assert exit_info.value.code == 0
    command, = launches
    assert "--nproc-per-node=4" in command
    config_path = tmp_path / "run" / RUN_CONFIG_FILE
    assert command[-4:] == ["-m", "bastion", "_worker", str(config_path)]
    config = json.loads(config_path.read_text())
    assert config["world_size"] == 4 and config["train"]["seed"] == 7 and config["train"]["model"] == "tiny"
    assert config["plan"]["dp"] == 4 and config["model"]["name"] == "tiny"   # the worker reads only this file
    assert config["run_dir_lock"] == "launcher"   # this process held the run directory; the workers do not lock
    assert not (tmp_path / "run" / "run.lock").read_text()   # released (the owner record cleared) at exit


def test_plan_not_matching_the_world_size(setup, capsys):
    tmp_path, plan, launches = setup
    _fails_with(_train(tmp_path, plan, "--nproc", "3"), capsys, "4 processes", "world size is 3", "To fix")
    assert launches == []


def test_plan_not_matching_the_model(setup, capsys):
    tmp_path, _, launches = setup
    bad = tmp_path / "tp3.json"
    bad.write_text(json.dumps({"tp": 3, "micro_batch": 1, "global_batch": 1}))
    _fails_with(_train(tmp_path, bad, "--nproc", "3"), capsys, "tp = 3 does not divide")
    assert launches == []


def test_missing_data_directory(setup, capsys):
    tmp_path, plan, launches = setup
    argv = _train(tmp_path, plan, "--nproc", "4")
    argv[argv.index("--data") + 1] = str(tmp_path / "missing")
    _fails_with(argv, capsys, "does not exist", "bastion data prepare")
    assert launches == []


def test_unknown_model(setup, capsys):
    tmp_path, plan, launches = setup
    argv = _train(tmp_path, plan, "--nproc", "4")
    argv[argv.index("--model") + 1] = "tinyy"
    _fails_with(argv, capsys, "Unknown model 'tinyy'", "Did you mean 'tiny'")
    assert launches == []


def test_local_torchrun_command_names_addresses_not_hosts():
    command = local.torchrun_command(4, 2, "/runs/r/run_config.json")
    assert command[1:3] == ["-m", "bastion.runtime.local_agent"]   # torchrun, its name lookups kept local
    assert "--nproc-per-node=4" in command and "--max-restarts=2" in command
    assert "--local-addr=127.0.0.1" in command
    assert any(word.startswith("--rdzv-endpoint=127.0.0.1:") for word in command)
    assert command[-4:] == ["-m", "bastion", "_worker", "/runs/r/run_config.json"]


def test_worker_environment_is_defined_once_and_user_values_win(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    env = worker.process_environment(worker.worker_env(single_host=True))
    assert env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1" and env["GLOO_SOCKET_IFNAME"] == "lo"
    assert env["OMP_NUM_THREADS"] == "3"
    assert "GLOO_SOCKET_IFNAME" not in worker.worker_env()   # several hosts: gloo picks the host's interface


def test_train_under_torchrun_is_refused(setup, capsys, monkeypatch):
    tmp_path, plan, launches = setup
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(key, value)
    _fails_with(_train(tmp_path, plan), capsys, "starts its own workers", "To fix")
    assert launches == []


@pytest.mark.parametrize(("extra", "needle"), [
    (["--hang-timeout-s", "nan"], "--hang-timeout-s must be a positive number"),
    (["--hang-timeout-s", "inf"], "--hang-timeout-s must be a positive number"),
    (["--mtbf-hours", "nan"], "--mtbf-hours must be a positive number"),
    (["--mtbf-hours", "0"], "--mtbf-hours must be a positive number"),
    (["--skip-batch", "-5"], "--skip-batch -5 is not a step"),
    (["--seed", "-1"], "--seed must be a whole number from 0"),
    (["--keep-last", "0"], "--keep-last must be >= 1"),
    (["--inject", "kill:rank=0,step=0", "--max-restarts", "1"], "step must be >= 1"),
])
def test_nonsense_numbers_are_guidance_errors(setup, capsys, extra, needle):
    tmp_path, plan, launches = setup
    _fails_with(_train(tmp_path, plan, *extra), capsys, needle, "To fix:")
    assert launches == [] and not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_unwritable_run_dir_is_a_guidance_error(setup, capsys, where):
    tmp_path, plan, launches = setup
    (tmp_path / "afile").write_text("x")
    run_dir = tmp_path / "afile" / "run" if where == "under_a_file" else "/proc/bastion-run"
    argv = _train(tmp_path, plan)
    argv[argv.index("--run-dir") + 1] = str(run_dir)
    _fails_with(argv, capsys, str(run_dir), "To fix:")
    assert launches == []


def test_train_and_data_commands_do_not_import_torch():
    code = ("import sys; import bastion.cli; import bastion.commands.train_cmds, bastion.commands.demo_cmds; "
            "import bastion.launch.local, bastion.launch.worker, bastion.runtime.preflight, bastion.rundir.lock; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def _written_config(setup, monkeypatch) -> str:
    tmp_path, plan, launches = setup
    with pytest.raises(SystemExit):
        main(_train(tmp_path, plan, "--nproc", "4"))
    path = tmp_path / "run" / RUN_CONFIG_FILE
    config = json.loads(path.read_text())
    del config["run_dir_lock"]   # as `bastion launch --on slurm|k8s` writes it: the job's rank 0 locks
    path.write_text(json.dumps(config))
    return str(path)


def test_a_scheduled_jobs_rank_zero_refuses_a_run_dir_in_use(setup, capsys, monkeypatch):
    from bastion.rundir.lock import acquire

    config = _written_config(setup, monkeypatch)
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(key, value)
    from bastion.runtime import worker_entry as worker

    monkeypatch.setattr(worker, "PREDECESSOR_EXIT_S", 1.0)   # a requeued job waits this long, then gives up
    with acquire(setup[0] / "run"):   # another run holds it
        _fails_with(["_worker", config], capsys, "is in use by another run", "To fix:")


def test_a_worker_refuses_a_config_for_another_world_size(setup, capsys, monkeypatch):
    config = _written_config(setup, monkeypatch)
    for key, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(key, value)
    _fails_with(["_worker", config], capsys, "is a run of 4 workers", "WORLD_SIZE is 2")


def test_the_worker_builds_its_train_config_from_the_run_config_alone(setup, monkeypatch, tmp_path):
    pytest.importorskip("torch", reason="TrainConfig lives with the runtime")
    from bastion.runtime.worker_entry import train_config_of
    from bastion.specs.model import load_model
    from bastion.specs.plan import ParallelPlan

    with open(_written_config(setup, monkeypatch)) as file:
        config = json.load(file)
    train = train_config_of(config)
    # the resolved model and plan travel in the config: the worker reads no file (and writes none) for them
    assert isinstance(train.plan, ParallelPlan) and train.plan.dp == 4 and train.steps == 3
    assert train.model == load_model("tiny") and train.resolved_plan() is train.plan
    assert train.resilience.inject == () and train.seq_len is None
    # a model file: the worker takes the spec shipped in the config, not the launching machine's file
    config["train"]["model"] = "/nowhere/on/this/machine.toml"
    config["model"]["num_layers"] = 3
    train = train_config_of(config)
    assert train.resolved_model().num_layers == 3
