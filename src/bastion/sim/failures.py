"""One job's run with sampled failures: checkpoints every Daly interval, exponential failures, restarts in place.

The job keeps its nodes through a failure (the scheduler does not requeue it): a failure costs the compute since
the last completed checkpoint, any part of an unfinished checkpoint stall, and the restart time, then the job
resumes from that checkpoint. Failures arrive as a Poisson process at the job's rate (1 / MTBF for its GPU count,
memoryless, so the clock restarts after each restart). The run is sampled from a random stream seeded by the
simulation seed and the job id alone, so every policy sees the same failure luck for the same job.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class SampledRun:
    """Where one job's wall time went, in hours; `failure_at` are hours after the job's start."""

    wall_hours: float
    compute_hours: float
    checkpoint_hours: float
    lost_hours: float
    failure_at: tuple[float, ...]

    @property
    def failures(self) -> int:
        return len(self.failure_at)


def job_rng(seed: int, job_id: str) -> random.Random:
    """The job's own random stream (str seeds hash with SHA-512: stable across processes and PYTHONHASHSEED)."""
    return random.Random(f"{seed}/{job_id}")


def sample_run(compute_hours: float, interval_hours: float, stall_hours: float, mtbf_hours: float,
               restart_hours: float, rng: random.Random) -> SampledRun:
    """Sample one run of `compute_hours` of work, checkpointing after every `interval_hours` of compute."""
    if compute_hours <= 0:
        return SampledRun(0.0, 0.0, 0.0, 0.0, ())
    if interval_hours <= 0 or mtbf_hours <= 0:
        raise ValueError("checkpoint interval and MTBF must be positive")
    cycle = interval_hours + stall_hours
    done = 0.0  # compute saved by completed checkpoints
    wall = lost = 0.0
    failures: list[float] = []
    while True:
        remaining = compute_hours - done
        full_cycles = max(0, math.ceil(remaining / interval_hours - 1e-12) - 1)  # the last segment needs no save
        to_finish = full_cycles * cycle + (remaining - full_cycles * interval_hours)
        to_failure = rng.expovariate(1.0 / mtbf_hours)
        if to_failure >= to_finish:
            wall += to_finish
            break
        saved = min(full_cycles, int(to_failure // cycle))
        done += saved * interval_hours
        failures.append(wall + to_failure)
        lost += to_failure - saved * cycle + restart_hours
        wall += to_failure + restart_hours
    checkpoints = wall - compute_hours - lost
    return SampledRun(wall_hours=wall, compute_hours=compute_hours, checkpoint_hours=max(0.0, checkpoints),
                      lost_hours=lost, failure_at=tuple(failures))
