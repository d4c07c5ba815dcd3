"""`time-p90` (the default): the shortest step at the upper end of its p10-p90 interval. The interval widens with
the share of the predicted step that rests on the terms the published runs validate least (predict/intervals.py:
context parallelism at chunks shorter than any published run's, bubbles of schedules or depths none ran, ...), so
a plan that looks fast only through those terms pays for the uncertainty instead of winning on it. Its floor:
the least p90 of a step at least the step-time floor whose terms are at least their floors (intervals.least_p90:
the bubble, pipeline transfers and all-to-all every plan of a group pays widen it); with the step's floor alone,
that floor × exp(q) (every interval is at least the stratum's narrowest, width factor 1). Its quick floor: the
quick step floor × exp(q), by the same argument."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from bastion.planner.objectives.base import Floors, Objective

if TYPE_CHECKING:
    from collections.abc import Callable

    from bastion.planner.search import RankedPlan
    from bastion.planner.space import Leaf
    from bastion.specs.hardware import Cluster


class TimeP90(Objective):
    name = "time-p90"
    description = ("shortest step at the upper end (p90) of its predicted interval: plans whose prediction rests "
                   "on the least-validated terms pay for that uncertainty")
    bounded_reason = "slower at p90 than the plans shown (step-time bound)"

    def key(self, plan: RankedPlan) -> tuple:
        # fewer devices, then less memory, break exact ties
        return (plan.p90_s, plan.num_gpus, plan.memory_bytes, plan.order)

    def value(self, plan: RankedPlan) -> float:
        return plan.p90_s

    def floor(self, floors: Floors, cluster: Cluster, leaf: Leaf, memory: dict[int, float]) -> float:
        from bastion.predict.intervals import least_p90

        step, terms = floors.step_terms(cluster, leaf)
        return least_p90(step, terms, leaf.pp_schedule, leaf.pp, leaf.cp, floors.seq_len, floors.model,
                         floors.software_known) * (1 - 1e-9)

    def floor_at_step(self, floors: Floors, cluster: Cluster, leaf: Leaf, step: float) -> float:
        return _narrowest_p90()(step, floors.software_known) * (1 - 1e-9)


@cache
def _narrowest_p90() -> Callable[[float, bool], float]:
    """intervals.narrowest_p90, imported once (the quick floor asks for it per plan group)."""
    from bastion.predict.intervals import narrowest_p90

    return narrowest_p90
