"""The CLI's surface: every command is listed by `bastion --help`, whose import stays torch-free."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers.cli import run

COMMANDS = ("models", "hardware", "estimate", "validate", "plan", "train", "launch", "status", "logs", "cancel",
            "report", "cost", "simulate", "demo", "data", "export")


def test_help_lists_every_command_without_importing_torch() -> None:
    code = ("import sys\nfrom bastion.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as exc:\n    code = exc.code\n"
            "print('TORCH', 'torch' in sys.modules, code)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    listed = {line.split()[0] for line in proc.stdout.split("Commands:")[1].splitlines() if line.strip()}
    assert set(COMMANDS) <= listed
    assert proc.stdout.strip().endswith("TORCH False 0")
    # the root's own options: version, typer's shell completion, -h beside --help
    options = proc.stdout.split("Options:")[1].split("Commands:")[0]
    assert [line.split()[0].rstrip(",") for line in options.splitlines() if line.strip().startswith("-")] \
        == ["--version", "--install-completion", "--show-completion", "-h"]


def test_a_resolved_training_run_does_not_import_torch_in_the_front_process(tmp_path: Path) -> None:
    """`bastion train` / `launch` check and resolve a run in a process that only starts others: torch (about 2 CPU
    seconds to import) is for the workers and torchrun's agent, not for it."""
    from bastion.runtime.data import prepare_dataset

    prepare_dataset([Path(__file__)], tmp_path / "data")
    (tmp_path / "plan.json").write_text('{"dp": 2, "micro_batch": 1, "global_batch": 2}')
    argv = ["launch", "--on", "local", "--device", "cpu", "--model", "tiny", "--plan", str(tmp_path / "plan.json"),
            "--data", str(tmp_path / "data"), "--run-dir", str(tmp_path / "run"), "--steps", "3", "--dry-run"]
    code = (f"import sys\nfrom bastion.cli import main\ntry:\n    main({argv!r})\n"
            "except SystemExit as exc:\n    code = exc.code\nprint('TORCH', 'torch' in sys.modules, code)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "bastion _worker" in proc.stdout   # the run was resolved into its worker command
    assert proc.stdout.strip().endswith("TORCH False 0"), proc.stdout[-2000:] + proc.stderr[-2000:]


def test_every_command_has_help(capsys) -> None:
    for name in COMMANDS:  # in this process: the torch-free import is the test above's
        code, out, err = run([name, "--help"], capsys)
        assert code == 0, (name, err)
        assert "Usage: " in out


def test_error_texts_print_as_written_not_as_markup(capsys) -> None:
    from bastion.cli import report_error
    from bastion.errors import ConfigError

    report_error(ConfigError("a cluster file needs [accelerator] and optionally a [network] table.",
                             fix="add [network] with scale_out_bw_gbs = 50.", hint="see --gpus [64]"))
    err = capsys.readouterr().err
    assert "optionally a [network] table" in err and "add [network] with" in err and "--gpus [64]" in err


def test_simulate_and_report_mistakes_are_guidance(tmp_path, capsys) -> None:
    import pytest

    from bastion.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--synthetic", "3", "-p", "fifoo", "--cluster",
              str(Path(__file__).parents[2] / "examples" / "sim" / "cluster.toml")])
    assert exc.value.code == 2 and "Did you mean 'fifo'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["report", str(tmp_path), "--html", str(tmp_path)])
    assert exc.value.code == 2 and f"--html {tmp_path} is a directory" in capsys.readouterr().err


def test_shared_options_are_one_declaration() -> None:
    # commands/options.py declares each shared option once: every command that takes it shows the same flags
    # and help (a command that redeclared --model its own way would show it differently)
    import typer.main

    from bastion.cli import app

    group = typer.main.get_command(app)
    shared = [("--model", ("estimate", "plan", "cost")), ("--cluster", ("estimate", "plan", "cost")),
              ("--software", ("estimate", "plan", "cost")), ("--seq-len", ("estimate", "plan", "cost", "train", "launch")),
              ("--global-batch", ("estimate", "plan", "cost")), ("--tokens", ("estimate", "cost")),
              ("--json", ("models", "hardware", "software", "estimate", "validate", "plan", "report", "cost",
                          "simulate", "demo")),
              # one training run's settings: `train` and `launch` take them alike (or from --config)
              *((flag, ("train", "launch")) for flag in ("--model", "--plan", "--data", "--steps", "--config",
                                                         "--set", "--max-restarts"))]
    for flag, commands in shared:
        seen = {(tuple(p.opts), p.help) for name in commands for p in group.commands[name].params if flag in p.opts}
        assert len(seen) == 1, (flag, seen)
