"""`throughput`: most tokens per second. Every plan of a request moves the same tokens per step, so tokens/s ranks
like the step time, and the predictor's step-time floor bounds it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bastion.planner.objectives.base import Floors, Objective

if TYPE_CHECKING:
    from bastion.planner.search import RankedPlan
    from bastion.planner.space import Leaf
    from bastion.specs.hardware import Cluster


class Throughput(Objective):
    name = "throughput"
    description = "most tokens per second (fastest optimizer step for a fixed GPU count)"
    bounded_reason = "slower than the plans shown (step-time bound)"

    def key(self, plan: RankedPlan) -> tuple:
        # fewer devices, then less memory, break exact ties in tokens/s
        return (-plan.tokens_per_s, plan.num_gpus, plan.memory_bytes, plan.order)

    def value(self, plan: RankedPlan) -> float:
        return plan.step_time_s

    def floor(self, floors: Floors, cluster: Cluster, leaf: Leaf, memory: dict[int, float]) -> float:
        return floors.step_time(cluster, leaf)

    def floor_at_step(self, floors: Floors, cluster: Cluster, leaf: Leaf, step: float) -> float:
        return step


class TimeMedian(Throughput):
    """The ranking before intervals: by the point (median) prediction alone, as `throughput`."""

    name = "time-median"
    description = "shortest predicted (median) step, its interval ignored: `throughput`'s ranking"
