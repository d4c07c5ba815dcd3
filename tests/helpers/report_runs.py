"""Hand-written run directories for the report's tests, through the runtime's own torch-free writers."""

from __future__ import annotations

import json
from pathlib import Path

from bastion.rundir.metrics import append_record, log_event
from bastion.specs.model import load_model
from bastion.specs.plan import ParallelPlan

PLAN = ParallelPlan(dp=2, micro_batch=2, global_batch=4, precision="fp32")
TOKENS_PER_STEP = 4 * 64


def step(run_dir: Path, number: int, end: float, seconds: float, loss: float = 5.0) -> None:
    """A step record as train.py writes it (MetricsWriter: one JSON object per line)."""
    append_record(run_dir, {"step": number, "loss": loss, "grad_norm": 1.0, "lr": 1e-3, "step_time_s": seconds,
                            "time": end, "tokens_per_s": TOKENS_PER_STEP / seconds, "mfu": 0.01 / seconds,
                            "mem_gib": 0.25, "sample_ids": [4 * (number - 1), 4 * number]})


def new_run(tmp_path: Path, name: str = "run") -> Path:
    run_dir = tmp_path / name
    run_dir.mkdir()
    PLAN.save(run_dir / "plan.json")
    (run_dir / "model.json").write_text(json.dumps(load_model("tiny", 64).to_dict()))
    return run_dir


def write_failing_run(tmp_path: Path) -> Path:
    """run_start at t=100; steps 1-3; a kill; a restart from the step-2 checkpoint; steps 3-4; a NaN rollback
    to step 2; steps 3-5. Every step takes 1 s."""
    run = new_run(tmp_path)
    log_event(run, "run_start", time=100.0, world_size=2, plan=PLAN.to_dict())
    step(run, 1, 101.0, 1.0, loss=5.5)
    step(run, 2, 102.0, 1.0, loss=5.4)
    log_event(run, "checkpoint", time=102.2, step=2, stall_s=0.2, mode="sync")
    step(run, 3, 103.2, 1.0, loss=5.3)
    log_event(run, "fault", time=103.3, fault="kill", spec="kill:rank=1,step=4", rank=1, step=4)
    log_event(run, "restart", time=110.0, attempt=1, resumed_from_step=2, world_size=2)
    step(run, 3, 111.0, 1.0, loss=5.3)
    step(run, 4, 112.0, 1.0, loss=5.2)
    log_event(run, "fault", time=112.1, fault="nan", spec="nan:rank=0,step=5", rank=0, step=5)
    log_event(run, "rollback", time=112.5, step=5, reason="gradient norm is nan", resumed_from_step=2,
              skipped_sample_ids=[16, 20], checkpoint=True)
    step(run, 3, 113.5, 1.0, loss=5.3)
    step(run, 4, 114.5, 1.0, loss=5.1)
    step(run, 5, 115.5, 1.0, loss=5.15)
    return run
