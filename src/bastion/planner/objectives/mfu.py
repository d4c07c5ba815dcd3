"""`mfu`: highest model FLOPs utilisation. It differs from throughput when several GPU counts are searched; the
step-time floor bounds it (the highest MFU that step time allows)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bastion.planner.objectives.base import Floors, Objective

if TYPE_CHECKING:
    from bastion.planner.search import RankedPlan
    from bastion.planner.space import Leaf
    from bastion.specs.hardware import Cluster


class Mfu(Objective):
    name = "mfu"
    description = ("highest model FLOPs utilisation (most work per GPU; differs from throughput when several GPU "
                   "counts are searched)")
    bounded_reason = "lower MFU than the plans shown (step-time bound)"

    def key(self, plan: RankedPlan) -> tuple:
        return (-plan.mfu, -plan.tokens_per_s, plan.memory_bytes, plan.order)

    def value(self, plan: RankedPlan) -> float:
        return -plan.mfu

    def floor(self, floors: Floors, cluster: Cluster, leaf: Leaf, memory: dict[int, float]) -> float:
        return self.floor_at_step(floors, cluster, leaf, floors.step_time(cluster, leaf))

    def floor_at_step(self, floors: Floors, cluster: Cluster, leaf: Leaf, step: float) -> float:
        peak = cluster.accelerator.peak_tflops(leaf.precision) * 1e12 * cluster.num_gpus
        return -floors.flops_per_step / (step * peak) * (1 + 1e-9)
