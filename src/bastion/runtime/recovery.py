"""Deciding what to do after something went wrong. Pure Python (what it cost: rundir/accounting.py).

- `NanGuard`: a step whose global gradient norm is NaN/Inf, or k× above the recent median, is "bad": the
  trainer rolls back to the last good checkpoint, replays up to the offending batch and skips it (under
  --fault-tolerance torchft the replica groups share the verdict and skip it without a rollback:
  runtime/resilience.py).
- `choose_interval`: `--checkpoint-every auto` = Daly's optimum for the measured save stall and the MTBF.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass

from bastion.reliability import daly_interval, default_failure_model


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
        reason = self.judge(grad_norm)
        if reason is None:
            self.remember(grad_norm)
        return reason

    def judge(self, grad_norm: float) -> str | None:
        """Why a step of this norm is bad (None: good), remembering nothing: the verdict may still be overruled
        (another torchft replica group found the step bad)."""
        if not math.isfinite(grad_norm):
            return f"gradient norm is {grad_norm}"
        cfg = self.config
        if cfg.spike_factor > 0 and len(self._norms) >= cfg.min_history:
            median = statistics.median(self._norms)
            if grad_norm > cfg.spike_factor * median:
                return f"gradient norm {grad_norm:.3g} is {grad_norm / median:.0f}× the recent median {median:.3g}"
        return None

    def remember(self, grad_norm: float) -> None:
        """`grad_norm` was a good step's: part of the recent history spikes are judged against."""
        self._norms.append(grad_norm)


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
