"""`bastion` as a user runs it: a real subprocess, and the records its run directory holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def bastion(*args: str, timeout: float = 800, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m bastion ARGS` with one thread per worker (runs are bitwise reproducible only at a fixed thread
    count) and no BASTION_DEBUG (errors print as a user sees them); wide columns so tables do not wrap."""
    env = {k: v for k, v in os.environ.items() if k != "BASTION_DEBUG"}
    env.update(OMP_NUM_THREADS="1", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "bastion", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def records(run_dir: Path) -> list[dict]:
    """Every line of RUN_DIR/metrics.jsonl: step records and events."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def step_records(run_dir: Path) -> list[dict]:
    return [r for r in records(run_dir) if "event" not in r]
