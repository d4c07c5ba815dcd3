"""`goodput`: most tokens per second after what failures cost — the predicted tokens/s × the expected goodput of
the best recovery policy for the plan (reliability/policies.py: requeue, shrink, hot spares, replica drop).

Per plan: the job MTBF is the published per-GPU rate (reliability/data) scaled to its GPUs; the checkpoint stall
is bounded by its predicted bytes per device copied to host at cost/tco.py's rate (the search hands an objective
the total, not the model state alone: an upper bound, so the stall is never flattered); nodes are its GPUs over
NODE_GPUS; restart, requeue wait and repair take the policies' stated defaults; its data-parallel degree is the
replica groups replica drop can lose. More GPUs step
faster but fail more often, and a plan with dp ≥ 2 can drop a replica instead of stopping: this objective weighs
both. Goodput is at most 1, so the step-time floor of `throughput` bounds it too.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING

from bastion.planner.objectives.base import Floors, Objective

if TYPE_CHECKING:
    from bastion.planner.search import RankedPlan
    from bastion.planner.space import Leaf
    from bastion.reliability.policies import PolicyGoodput
    from bastion.specs.hardware import Cluster


#: GPUs per node the shrink and spares policies count nodes by (the search does not hand objectives the cluster;
#: 8 is the common server)
NODE_GPUS = 8


@lru_cache(maxsize=4096)
def plan_policies(num_gpus: int, dp: int, step_s: float, device_bytes: float) -> tuple[PolicyGoodput, ...]:
    """Every recovery policy's expected goodput for a plan of this shape (default failure figures)."""
    from bastion.cost.tco import async_checkpoint_stall_s
    from bastion.reliability import default_failure_model
    from bastion.reliability.policies import PolicyInputs, policy_goodputs

    mtbf_s = default_failure_model().mtbf_hours(num_gpus) * 3600.0
    return tuple(policy_goodputs(PolicyInputs(mtbf_s=mtbf_s, nodes=max(1, math.ceil(num_gpus / NODE_GPUS)),
                                              step_s=step_s,
                                              checkpoint_stall_s=async_checkpoint_stall_s(device_bytes),
                                              replicas=dp)))


def policies_of(plan: RankedPlan) -> tuple[PolicyGoodput, ...]:
    """What `plan --objective goodput` shows side by side for a plan, the recommended one included."""
    return plan_policies(plan.num_gpus, plan.plan.dp, plan.step_time_s, float(plan.memory_bytes))


def plan_goodput(num_gpus: int, dp: int, step_s: float, device_bytes: float) -> float:
    """Expected goodput of the best recovery policy for a plan of this shape (default failure figures)."""
    from bastion.reliability.policies import recommend

    return recommend(list(plan_policies(num_gpus, dp, step_s, device_bytes))).goodput


def goodput_of(plan: RankedPlan) -> float:
    return plan_goodput(plan.num_gpus, plan.plan.dp, plan.step_time_s, float(plan.memory_bytes))


class Goodput(Objective):
    name = "goodput"
    description = ("most tokens per second after expected failure losses (tokens/s × the best recovery policy's "
                   "goodput; MTBF from the published rate × GPUs)")
    bounded_reason = "fewer goodput-adjusted tokens/s than the plans shown (step-time bound)"

    def key(self, plan: RankedPlan) -> tuple:
        return (self.value(plan), plan.num_gpus, plan.memory_bytes, plan.order)

    def value(self, plan: RankedPlan) -> float:
        return -plan.tokens_per_s * goodput_of(plan)

    def floor(self, floors: Floors, cluster: Cluster, leaf: Leaf, memory: dict[int, float]) -> float:
        return self.floor_at_step(floors, cluster, leaf, floors.step_time(cluster, leaf))

    def floor_at_step(self, floors: Floors, cluster: Cluster, leaf: Leaf, step: float) -> float:
        # goodput <= 1: no plan of the group does better than its fastest possible step
        return -floors.global_batch * floors.seq_len / step * (1 + 1e-9)
