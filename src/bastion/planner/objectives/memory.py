"""`memory`: least memory per device among the plans that fit. Its floor is the predictor's memory floor (model
states + the layer inputs every recompute mode keeps), which also settles out-of-memory plans unpredicted."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bastion.planner.objectives.base import Floors, Objective

if TYPE_CHECKING:
    from bastion.planner.search import RankedPlan
    from bastion.planner.space import Leaf
    from bastion.specs.hardware import Cluster


class Memory(Objective):
    name = "memory"
    description = "least memory per device among the plans that fit (most headroom)"
    bounded_reason = "more memory than the plans shown (model-state bound)"

    def key(self, plan: RankedPlan) -> tuple:
        return (plan.memory_bytes, -plan.tokens_per_s, plan.order)

    def value(self, plan: RankedPlan) -> float:
        return plan.memory_bytes

    def can_bound(self, floors: Floors) -> bool:
        return True  # the model-state bytes alone are a floor

    def memory_floor(self, floors: Floors, cluster: Cluster, leaf: Leaf, zero: int, state_bytes: float) -> float:
        # the fuller floor costs a call per stage; under the other objectives the step-time floor settles more for
        # less work, so only this one asks for it
        if floors.memory_bound is None:
            return state_bytes
        return max(state_bytes, floors.memory(cluster, leaf, zero))

    def floor(self, floors: Floors, cluster: Cluster, leaf: Leaf, memory: dict[int, float]) -> float:
        return min(memory.values())
