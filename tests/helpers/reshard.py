"""Runs that change plan (and world size) in one run directory, against an uninterrupted single process."""

from __future__ import annotations

import json
from pathlib import Path

from helpers.cli import bastion

#: the `tiny` runs of the resharding and shrinking tests: 10 steps of 8 samples, fp32, checkpoint every 2 steps
STEPS = 10
GLOBAL_BATCH = 8
BASE = {"micro_batch": 2, "global_batch": GLOBAL_BATCH, "precision": "fp32"}


def train(run_dir: Path, data: Path, plan: dict, nproc: int, *extra: str, steps: int = STEPS,
          model: str = "tiny") -> None:
    plan_file = run_dir.parent / f"plan-{run_dir.name}-{len(list(run_dir.parent.glob('plan-*')))}.json"
    plan_file.write_text(json.dumps({**BASE, **plan}))
    result = bastion("train", "--model", model, "--plan", str(plan_file), "--data", str(data), "--steps",
                     str(steps), "--run-dir", str(run_dir), "--nproc", str(nproc), "--no-progress",
                     "--checkpoint-every", "2", "--sync-checkpoint", "--resume", *extra, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


def single_process_run(run_dir: Path, data: Path, steps: int = STEPS, model: str = "tiny") -> Path:
    """An uninterrupted single-process run of `steps` steps (checkpointed every 2 steps, like the others)."""
    run_dir.mkdir(parents=True)
    train(run_dir, data, {}, 1, steps=steps, model=model)
    return run_dir


def switched_run(run_dir: Path, data: Path, segments: list, steps: int = STEPS, model: str = "tiny") -> Path:
    """A run of `segments` (plan, processes, stop after step) in turn in the same run directory, each resuming
    where the last stopped (--resume: a new plan is another run's unless told to continue, rundir/occupant.py)."""
    run_dir.mkdir(parents=True)
    for plan, nproc, stop in segments:
        train(run_dir, data, plan, nproc, *(["--stop-after-step", str(stop)] if stop else []), steps=steps,
              model=model)
    return run_dir

