"""Equivalence of every plan family with one process: runs tests/dist/test_equivalence.py and records each
plan's max loss and parameter difference in benchmarks/results/equivalence.json (the figures the README quotes).

The test itself records nothing (the suite must not rewrite tracked files); this script asks it to, through
BASTION_RESULTS_DIR.

    .venv/bin/python benchmarks/bench_equivalence.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"


def main() -> int:
    env = {**os.environ, "BASTION_RESULTS_DIR": str(RESULTS_DIR)}
    test = ROOT / "tests" / "dist" / "test_equivalence.py"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", str(test)], cwd=ROOT, env=env)
    print(f"recorded in {RESULTS_DIR / 'equivalence.json'}" if done.returncode == 0 else "equivalence failed")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
