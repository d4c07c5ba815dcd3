"""`bastion train` checks its input before any process starts, and starts workers with the same options."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bastion.cli import main
from bastion.runtime import launcher
from bastion.runtime.data import prepare_dataset


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    """A dataset, a valid dp4 plan, and a launcher that records instead of starting torchrun."""
    (tmp_path / "t.txt").write_bytes(b"some text for tokens " * 200)
    prepare_dataset([tmp_path / "t.txt"], tmp_path / "data")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"dp": 4, "micro_batch": 1, "global_batch": 8, "precision": "fp32"}))
    launches = []
    monkeypatch.setattr(launcher, "launch", lambda config, args: launches.append((config, list(args))) or 0)
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


def test_a_valid_request_starts_torchrun_with_the_same_options(setup):
    tmp_path, plan, launches = setup
    with pytest.raises(SystemExit) as exit_info:
        main(_train(tmp_path, plan, "--nproc", "4", "--seed", "7"))
    assert exit_info.value.code == 0
    (config, args), = launches
    assert config.nproc == 4
    assert args[0] == "train" and "--nproc" not in args
    assert args[args.index("--seed") + 1] == "7" and args[args.index("--model") + 1] == "tiny"
    assert "--progress" in args


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


def test_torchrun_command_line_and_worker_environment():
    config = launcher.LaunchConfig(nproc=4, max_restarts=2)
    command = launcher.torchrun_command(config, ["train", "--model", "tiny"])
    assert command[1:3] == ["-m", "torch.distributed.run"]
    assert "--nproc-per-node=4" in command and "--max-restarts=2" in command
    assert command[-5:] == ["-m", "bastion", "train", "--model", "tiny"]
    env = launcher.worker_environment(config)
    assert env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1" and "OMP_NUM_THREADS" in env


def test_strip_option_removes_both_spellings():
    args = ["train", "--nproc", "4", "--steps", "3", "--nproc=2"]
    assert launcher.strip_option(args, "--nproc") == ["train", "--steps", "3"]


def test_train_and_data_commands_do_not_import_torch():
    code = ("import sys; import bastion.cli; import bastion.commands.train_cmds, bastion.commands.demo_cmds; "
            "import bastion.runtime.launcher, bastion.runtime.preflight; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
