"""`bastion` as a user runs it: a real subprocess, and the records its run directory holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def bastion(*args: str, timeout: float = 800, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m bastion ARGS` with one thread per worker (runs are bitwise reproducible only at a fixed thread
    count) and no BASTION_DEBUG (errors print as a user sees them); wide columns so tables do not wrap. This
    checkout's package comes first on PYTHONPATH, whatever `cwd` is."""
    import bastion as package

    source = str(Path(package.__file__).parents[1])
    env = {k: v for k, v in os.environ.items() if k != "BASTION_DEBUG"}
    env.update(OMP_NUM_THREADS="1", COLUMNS="200",
               PYTHONPATH=os.pathsep.join([source, *filter(None, [os.environ.get("PYTHONPATH")])]))
    return subprocess.run([sys.executable, "-m", "bastion", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def records(run_dir: Path) -> list[dict]:
    """Every line of RUN_DIR/metrics.jsonl: step records and events."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def step_records(run_dir: Path) -> list[dict]:
    return [r for r in records(run_dir) if "event" not in r]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`bastion ARGV` in this process (typer's app through cli.main): (exit code, stdout, stderr)."""
    from bastion.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def user_error(argv: list[str], capsys: pytest.CaptureFixture[str], *expected: str) -> str:
    """A user mistake: exit 2, "error:" and a "To fix:" line on stderr, no traceback, nothing on stdout; every
    `expected` text in the message. Returns the message on one line."""
    code, out, err = run(argv, capsys)
    assert code == 2, (argv, code, out, err)
    assert out == "", out
    assert err.startswith("error: ") and "\nTo fix: " in err and "Traceback" not in err, err
    flat = " ".join(err.split())
    for text in expected:
        assert text in flat, (text, err)
    return flat
