"""runtime/calibrate.py's pipeline and optimizer probes: the pipeline schedule's per micro-batch extra from paired
rounds (`pipeline_extra`), and the optimizer's per-tensor figure from steps taking turns (`optimizer_seconds`):
what each keeps and what it leaves out."""

from __future__ import annotations

import time

import pytest

from bastion.runtime.calibrate import OPTIMIZER_ROUNDS, optimizer_seconds, pipeline_extra


def _rounds(fixed: list[float], stage_s: float, extra_s: float, short: int = 2, long: int = 6
            ) -> list[tuple[float, float, float]]:
    """Rounds of (long step, short step, stage alone per micro-batch) with a per-step fixed cost that changes
    from round to round (a schedule's start and drain under whatever load the round ran)."""
    return [(f + long * (stage_s + extra_s), f + short * (stage_s + extra_s), stage_s) for f in fixed]


def test_what_a_step_costs_once_cancels_and_the_schedules_extra_per_micro_batch_remains() -> None:
    rounds = _rounds([0.004, 0.009, 0.002, 0.015, 0.006], stage_s=0.0017, extra_s=0.0004)
    assert pipeline_extra(rounds, 4) == pytest.approx(0.0004)


def test_a_round_a_busy_host_disturbed_does_not_set_the_figure() -> None:
    rounds = _rounds([0.004] * 6, stage_s=0.0017, extra_s=0.0004)
    long, short, alone = rounds[2]
    rounds[2] = (long + 0.060, short, alone)  # 15 ms per micro-batch more in one round: a descheduled peer
    assert pipeline_extra(rounds, 4) == pytest.approx(0.0004)


def test_a_schedule_that_looks_cheaper_than_its_stage_is_no_negative_cost() -> None:
    assert pipeline_extra(_rounds([0.004] * 3, stage_s=0.0017, extra_s=-0.0002), 4) == 0.0


def _spin(seconds: float) -> None:
    """Use `seconds` of this thread's CPU time."""
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass


class _Step:
    """An optimizer step using `seconds` of CPU, the first `slow_first` calls `first_s` (AdamW creating its
    state), and after them `disturbance_s` more but on every `quiet_every`-th call (a host whose other load
    evicts the caches during most steps)."""

    def __init__(self, seconds: float, first_s: float, slow_first: int, quiet_every: int,
                 disturbance_s: float) -> None:
        self.seconds, self.first_s, self.slow_first = seconds, first_s, slow_first
        self.quiet_every, self.disturbance_s = quiet_every, disturbance_s
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.calls <= self.slow_first:
            _spin(self.first_s)
            return
        quiet = self.calls % self.quiet_every == 0
        _spin(self.seconds + (0.0 if quiet else self.disturbance_s))


def test_the_optimizer_figure_is_per_tensor_past_the_warm_up_and_the_disturbed_steps() -> None:
    plain = _Step(0.002, first_s=0.030, slow_first=2, quiet_every=3, disturbance_s=0.010)
    dtensor = _Step(0.004, first_s=0.030, slow_first=2, quiet_every=3, disturbance_s=0.010)
    repeats: dict[str, list[float]] = {}
    per_tensor = optimizer_seconds({"plain": (plain, 4), "dtensor": (dtensor, 8)}, 0.0, repeats)
    # each step's own cost over its tensors: the warm-up's 30 ms and the 10 ms disturbances (two steps in three,
    # the median among them) are left out
    assert per_tensor["plain"] == pytest.approx(0.002 / 4, rel=0.2)
    assert per_tensor["dtensor"] == pytest.approx(0.004 / 8, rel=0.2)
    # every round's step is kept for the profile's noise band, the disturbed ones too, the warm-up not
    assert sorted(repeats) == ["optimizer dtensor x8 tensors", "optimizer plain x4 tensors"]
    kept = repeats["optimizer plain x4 tensors"]
    assert len(kept) == OPTIMIZER_ROUNDS and plain.calls == OPTIMIZER_ROUNDS + 2
    assert 0.012 <= max(kept) < 0.030
