"""`bastion train --config run.toml` / `bastion launch --config`: every setting from one file, flags and --set
override it, unknown keys and bad values are guidance errors (exit 2) that write nothing; plus the checks of
--data mixtures, --eval-every and --profile that run before any worker starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer.main

from bastion.cli import app, main
from bastion.commands.train_cmds import resolve_run, train_params
from bastion.rundir.layout import RUN_CONFIG_FILE
from bastion.runtime.data import prepare_dataset
from helpers.cli import user_error

RUN_TOML = """
model = "tiny"
plan = "plan.json"
data = "data"
steps = 8
run_dir = "run"
seq_len = 64
[optimizer]
lr = 0.01
betas = [0.8, 0.9]
weight_decay = 0.05
eps = 1e-6
[schedule]
warmup_steps = 2
decay = "linear"
min_lr_ratio = 0.0
[clipping]
max_grad_norm = 0.5
[checkpoint]
every = "never"
[eval]
every = 4
batches = 2
[logging]
progress = false
"""


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    (tmp_path / "t.txt").write_text("some text to train on, held out in part\n" * 300)
    prepare_dataset([tmp_path / "t.txt"], tmp_path / "data", eval_fraction=0.2)
    (tmp_path / "plan.json").write_text(json.dumps({"dp": 2, "micro_batch": 1, "global_batch": 2,
                                                    "precision": "fp32"}))
    (tmp_path / "run.toml").write_text(RUN_TOML)
    return tmp_path


def resolved(argv: list[str]) -> dict:
    """The run config `bastion train ARGV` would write (parsed and checked as the command does, no workers)."""
    command = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    params = train_params(command.make_context("bastion train", argv))
    return resolve_run(params, world_size=params.pop("nproc")).config["train"]


def test_every_setting_comes_from_the_file(project):
    train = resolved(["--config", str(project / "run.toml")])
    assert train["model"] == "tiny" and train["steps"] == 8 and train["seq_len"] == 64
    assert train["data"] == str(project / "data") and train["run_dir"] == str(project / "run")  # file-relative
    assert (train["lr"], train["betas"], train["weight_decay"], train["eps"]) == (0.01, (0.8, 0.9), 0.05, 1e-6)
    assert (train["warmup_steps"], train["lr_decay"], train["min_lr_ratio"], train["max_grad_norm"]) == \
        (2, "linear", 0.0, 0.5)
    assert (train["eval_every"], train["eval_batches"], train["progress"]) == (4, 2, False)
    assert train["resilience"]["save_final"] is False


def test_flags_then_set_then_file(project):
    config = ["--config", str(project / "run.toml")]
    assert resolved([*config, "--set", "optimizer.lr=0.02"])["lr"] == 0.02
    assert resolved([*config, "--set", "optimizer.lr=0.02", "--lr", "0.03"])["lr"] == 0.03
    assert resolved([*config, "--set", "schedule.decay=cosine", "--set", "optimizer.betas=[0.9, 0.99]"])[
        "betas"] == (0.9, 0.99)
    assert resolved([*config, "--steps", "5"])["steps"] == 5
    assert resolved([*config, "--set", "checkpoint.every=3"])["resilience"]["checkpoint_every"] == 3


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("lr = 0.01", "lrr = 0.01", ["unknown setting 'optimizer.lrr'", "Did you mean 'optimizer.lr'",
                                 "use one of: model, plan"]),
    ("steps = 8", "stepz = 8", ["unknown setting 'stepz'", "Did you mean 'steps'"]),
    ("steps = 8", "steps = 'many'", ["Setting steps"]),
    ("steps = 8", "steps = [", ["is not valid TOML"]),
])
def test_unknown_keys_and_bad_values_in_the_file(project, capsys, old, new, expected):
    (project / "bad.toml").write_text(RUN_TOML.replace(old, new))
    user_error(["train", "--config", str(project / "bad.toml")], capsys, "To fix:", *expected)
    assert not (project / "run").exists()


@pytest.mark.parametrize(("args", "expected"), [
    (["--set", "optimizer.lrr=1"], "Did you mean 'optimizer.lr'"),
    (["--set", "optimizer.lr"], "is not KEY=VALUE"),
    (["--set", "optimizer.betas=[0.9, 1.5]"], "optimizer.betas must be two numbers"),
    (["--set", "optimizer.eps=0"], "optimizer.eps must be a number above 0"),
    (["--set", "schedule.decay=cosin"], "Did you mean 'cosine'"),
    (["--set", "data=data=0.7,other=0"], "is not DIR=WEIGHT with a positive weight"),
    (["--data", "data=0.7,data2=-1"], "is not DIR=WEIGHT with a positive weight"),
    (["--eval-every", "2", "--data", "plain"], "needs held-out samples"),
    (["--eval-every", "2", "--plan", "zbv.json"], "cannot run under pp_schedule 'zbv'"),
    (["--profile", "3:2"], "is not START:END"),
    (["--profile", "2:99"], "ends after the run's last step"),
])
def test_bad_overrides_are_refused_before_anything_is_written(project, capsys, monkeypatch, args, expected):
    (project / "zbv.json").write_text(json.dumps({"pp": 2, "pp_schedule": "zbv", "vpp": 2, "micro_batch": 1,
                                                  "global_batch": 2, "precision": "fp32"}))
    (project / "p.txt").write_text("text without a held-out split\n" * 100)
    prepare_dataset([project / "p.txt"], project / "plain")
    monkeypatch.chdir(project)
    user_error(["train", "--config", str(project / "run.toml"), *args], capsys, "To fix:", expected)
    assert not (project / "run").exists()


def test_the_plan_can_be_a_table_of_the_file(project, capsys):
    text = RUN_TOML.replace('plan = "plan.json"\n', "")
    (project / "inline.toml").write_text(text + '[plan]\ndp = 2\nmicro_batch = 1\nglobal_batch = 2\nprecision = "fp32"\n')
    command = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    params = train_params(command.make_context("bastion train", ["--config", str(project / "inline.toml")]))
    run = resolve_run(params, world_size=params.pop("nproc"))
    assert run.plan.dp == 2 and run.config["plan"]["global_batch"] == 2 and run.world_size == 2
    (project / "bad.toml").write_text(text + "[plan]\ndpp = 2\n")
    user_error(["train", "--config", str(project / "bad.toml")], capsys, "To fix:", "dpp")


def test_required_settings_name_the_flag_and_the_key(tmp_path, capsys):
    user_error(["train", "--model", "tiny"], capsys, "To fix:", "needs --plan, --data, --steps, --run-dir", "in a --config file")


def test_launch_takes_the_same_file(project, capsys, monkeypatch):
    monkeypatch.chdir(project)
    with pytest.raises(SystemExit) as exc:
        main(["launch", "--on", "slurm", "--config", "run.toml", "--set", "optimizer.lr=0.004"])
    assert exc.value.code in (0, None), capsys.readouterr()
    train = json.loads((project / "run" / RUN_CONFIG_FILE).read_text())["train"]
    assert train["lr"] == 0.004 and train["betas"] == [0.8, 0.9] and train["eval_every"] == 4
    assert train["data"] == str(project / "data")


@pytest.mark.parametrize("value", ["0", "1e30", "[]", "true"])
def test_a_path_setting_that_is_no_string_is_refused_by_train_and_launch(project, capsys, monkeypatch, value):
    # `bastion launch` took run_dir = 0 as given and ended in a TypeError traceback (Path(0))
    (project / "bad.toml").write_text(RUN_TOML.replace('run_dir = "run"', f"run_dir = {value}"))
    monkeypatch.chdir(project)
    for command in (["train"], ["launch", "--on", "slurm", "--dry-run"]):
        user_error([*command, "--config", str(project / "bad.toml")], capsys, "run_dir must be a path (a string)")
    assert sorted(p.name for p in project.iterdir()) == ["bad.toml", "data", "plan.json", "run.toml", "t.txt"]


def test_set_takes_a_path_as_written(project, capsys, monkeypatch):
    monkeypatch.chdir(project)
    assert resolved(["--config", str(project / "run.toml"), "--set", "run_dir=0"])["run_dir"] == "0"


def test_launch_takes_max_restarts_from_the_file_unless_a_flag_overrides_it(project, capsys, monkeypatch):
    monkeypatch.chdir(project)
    (project / "run.toml").write_text(RUN_TOML.replace('seq_len = 64', 'seq_len = 64\nmax_restarts = 3'))

    def torchrun_restarts(*flags: str) -> str:
        with pytest.raises(SystemExit) as exc:
            main(["launch", "--on", "local", "--config", "run.toml", "--dry-run", "--json", *flags])
        out = capsys.readouterr().out
        assert exc.value.code in (0, None), out
        return " ".join(json.loads(out)["command"])

    assert "--max-restarts=3" in torchrun_restarts()
    assert "--max-restarts=1" in torchrun_restarts("--max-restarts", "1")


def test_the_shipped_example_parses_and_checks():
    from bastion.commands.train_file import check_optimizer_settings, load_config_file
    from bastion.specs.plan import ParallelPlan

    example = Path(__file__).parents[2] / "examples" / "train" / "run.toml"
    values = load_config_file(example)
    assert values["data"] == f"{example.parent / 'data/web'}=0.7,{example.parent / 'data/docs'}=0.3"
    assert ParallelPlan.from_dict(values["plan"]).num_gpus == values["nproc"]
    assert check_optimizer_settings(values)["lr_decay"] == "cosine"
