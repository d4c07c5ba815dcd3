"""Deciding what to do after something went wrong, and accounting for what it cost. Pure Python.

- `NanGuard`: a step whose global gradient norm is NaN/Inf, or k× above the recent median, is "bad": the
  trainer rolls back to the last good checkpoint, replays up to the offending batch and skips it.
- `choose_interval`: `--checkpoint-every auto` = Daly's optimum for the measured save stall and the MTBF.
- `account`: restarts, lost steps, recovery time, checkpoint stall and goodput from metrics.jsonl.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Any

from bastion.reliability import GoodputBreakdown, daly_interval, default_failure_model


# ---- NaN / spike guard -------------------------------------------------------------------------------
@dataclass(frozen=True)
class NanGuardConfig:
    """When a step's update is refused."""

    #: gradient norm above factor × median of recent norms is a spike (0 = only NaN/Inf count)
    spike_factor: float = 20.0
    #: recent good norms kept for the median
    window: int = 20
    #: good steps needed before spikes are judged (early training norms move a lot)
    min_history: int = 10


class NanGuard:
    def __init__(self, config: NanGuardConfig | None = None) -> None:
        self.config = config or NanGuardConfig()
        self._norms: deque[float] = deque(maxlen=self.config.window)

    def check(self, grad_norm: float) -> str | None:
        """None for a good step (remembered), else why it is bad."""
        if not math.isfinite(grad_norm):
            return f"gradient norm is {grad_norm}"
        cfg = self.config
        if cfg.spike_factor > 0 and len(self._norms) >= cfg.min_history:
            median = statistics.median(self._norms)
            if grad_norm > cfg.spike_factor * median:
                return f"gradient norm {grad_norm:.3g} is {grad_norm / median:.0f}× the recent median {median:.3g}"
        self._norms.append(grad_norm)
        return None


# ---- automatic checkpoint interval -------------------------------------------------------------------
@dataclass(frozen=True)
class IntervalChoice:
    every_steps: int
    interval_s: float
    stall_s: float
    mtbf_s: float
    step_s: float
    mtbf_source: str

    def explain(self) -> str:
        return (f"checkpoint every {self.every_steps} steps: Daly's optimum for a {self.stall_s:.3g} s save stall "
                f"and an MTBF of {self.mtbf_s / 3600:.4g} h ({self.mtbf_source}) is {self.interval_s:.4g} s of "
                f"compute between saves, at {self.step_s:.3g} s per step")


def choose_interval(stall_s: float, step_s: float, num_devices: int,
                    mtbf_hours: float | None = None) -> IntervalChoice:
    """Young/Daly interval in steps for the measured stall and step time."""
    if mtbf_hours is not None:
        mtbf_s, source = mtbf_hours * 3600.0, "--mtbf-hours"
    else:
        model = default_failure_model()
        mtbf_s = model.mtbf_hours(num_devices) * 3600.0
        source = (f"{model.gpu_hours_per_failure:,.0f} device-hours per failure observed in {model.name}, "
                  f"over {num_devices} devices")
    interval = daly_interval(max(stall_s, 1e-6), mtbf_s)
    every = max(1, round(interval / max(step_s, 1e-9)))
    return IntervalChoice(every, interval, stall_s, mtbf_s, step_s, source)


# ---- accounting --------------------------------------------------------------------------------------
def account(records: list[dict[str, Any]], end_time: float) -> dict[str, Any]:
    """restarts, lost_steps, recovery_s, checkpoint_stall_s, goodput (+ the breakdown) from metrics records.

    A step record superseded by a later record of the same step (recomputed after a restart or a rollback) is
    lost work. Recovery runs from the last sign of progress before a restart (a step or a save; so detecting a
    hang counts) or from a rollback, to the start of the first step completed afterwards. Wall time runs from
    the last `run_start` event (records before it belong to an earlier run in the same directory).
    """
    last_start = max((i for i, r in enumerate(records) if r.get("event") == "run_start"), default=0)
    records = records[last_start:]  # an earlier, unrelated run in the same directory does not count
    starts = [r["time"] for r in records if r.get("event") == "run_start"]
    steps = [r for r in records if "event" not in r and "step" in r]
    if not starts and steps:
        starts = [steps[0]["time"] - steps[0].get("step_time_s", 0.0)]
    wall = end_time - (min(starts) if starts else end_time)
    last_by_step: dict[int, int] = {}
    for index, record in enumerate(records):
        if "event" not in record and "step" in record:
            last_by_step[record["step"]] = index
    productive = lost = 0.0
    lost_steps = 0
    for index, record in enumerate(records):
        if "event" in record or "step" not in record:
            continue
        if last_by_step[record["step"]] == index:
            productive += record.get("step_time_s", 0.0)
        else:
            lost += record.get("step_time_s", 0.0)
            lost_steps += 1
    stall = sum(r.get("stall_s", 0.0) for r in records if r.get("event") in ("checkpoint", "checkpoint_wait"))
    # an optimizer step that waited for an async save's copy counted that wait in its step time
    productive = max(0.0, productive - sum(r.get("stall_s", 0.0) for r in records
                                           if r.get("event") == "checkpoint_wait"))
    recovery, recoveries = 0.0, []
    failure_time = None
    for record in records:
        kind = record.get("event")
        if kind in ("restart", "rollback") and failure_time is None:
            # the failure began after the last sign of progress (a step or a save), not when it was noticed:
            # a hang's detection time is part of its cost
            progress = [r["time"] for r in records if r["time"] < record["time"]
                        and (r.get("event") is None or r.get("event") in ("checkpoint", "run_start"))]
            failure_time = max(progress) if progress and kind == "restart" else record["time"]
        elif kind is None and "step" in record and failure_time is not None:
            gap = record["time"] - record.get("step_time_s", 0.0) - failure_time
            recoveries.append(max(0.0, gap))
            failure_time = None
    recovery = sum(recoveries)
    breakdown = GoodputBreakdown(wall_s=wall, productive_s=productive, lost_s=lost,
                                 checkpoint_stall_s=stall, recovery_s=recovery)
    # each launch (a --resume, a Slurm requeue) counts its torchrun attempts from 0 again: count the events too
    restart_events = [r for r in records if r.get("event") == "restart"]
    restarts = max([r.get("attempt", 0) for r in restart_events] + [len(restart_events)])
    return {"restarts": restarts,
            "rollbacks": sum(1 for r in records if r.get("event") == "rollback"),
            "faults_injected": sum(1 for r in records if r.get("event") == "fault"),
            "lost_steps": lost_steps, "recovery_s": round(recovery, 3),
            "checkpoint_stall_s": round(stall, 3), "goodput": round(breakdown.goodput, 4),
            "time_breakdown_s": {k: round(v, 3) for k, v in breakdown.to_dict().items()}}
