"""What an objective is: what "best" means (a sort key over evaluated plans) and the floor that lets the search
settle plans unpredicted (a value no plan of a group can beat).

The search (search.py) asks an objective three things:
  key(plan), value(plan)   the sort key (smallest first; it ends with the plan's own fields, so that ties break
                           the same way on every run) and the figure it sorts by first, smaller is better
  memory_floor(...)        per ZeRO stage of a group that the model-state bound leaves: bytes no plan of it goes
                           below (default: that bound); above device memory settles the stage as out of memory
  floor(...)               per group: the best `value` any plan of it can reach; groups are predicted best floor
                           first, and those whose floor is worse than every plan the answer needs are settled
  quick_floor(...)         per group, optional: a value no better than `floor`'s, much cheaper; the search
                           orders the groups by it and computes `floor` only for those it cannot settle
A floor must never be better than a plan's real value (tests compare every objective's pruned search with the
exhaustive one). `Floors` hands an objective the predictor's lower bounds for the request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from bastion.planner.search import MemoryBoundFn, MicroBatchWorkFn, RankedPlan, StepFloorFn, TimeBoundFn
    from bastion.planner.space import Leaf
    from bastion.specs.hardware import Cluster
    from bastion.specs.model import ModelSpec


@dataclass(frozen=True)
class Floors:
    """The request's model and shape and the predictor's lower bounds (None where the caller gave none)."""

    model: ModelSpec
    global_batch: int
    seq_len: int
    #: step time no ZeRO stage or recompute mode of a plan goes below
    time_bound: TimeBoundFn | None
    #: bytes per device no recompute mode of a plan goes below
    memory_bound: MemoryBoundFn | None
    #: whether the software is known (the stratum of the plans' intervals, predict/intervals.py)
    software_known: bool = True
    #: the step and the step-time terms no ZeRO stage or recompute mode of a plan goes below (the predictor's
    #: `step_floor`; None: only `time_bound`'s step is known)
    step_floor: StepFloorFn | None = None
    #: the predictor's `micro_batch_work` (None: no quick step floor)
    micro_batch_work: MicroBatchWorkFn | None = None
    #: (cluster, a leaf's work_key) -> its micro_batch_work
    _work: dict[tuple, float] = field(default_factory=dict, compare=False, repr=False)

    def step_time(self, cluster: Cluster, leaf: Leaf) -> float:
        """Seconds no plan of `leaf` (any ZeRO stage, any recompute mode) steps in less than."""
        return self.step_terms(cluster, leaf)[0]

    def step_terms(self, cluster: Cluster, leaf: Leaf) -> tuple[float, Mapping[str, float]]:
        """`step_time` and the seconds of each step-time term (estimate.TimeBreakdown names) no plan of `leaf`
        goes below (empty when only the step is bounded)."""
        plan = leaf.plan(self.global_batch)
        if self.step_floor is not None:
            floor = self.step_floor(self.model, cluster, plan, self.seq_len)
            return floor.step, floor.terms
        assert self.time_bound is not None
        return self.time_bound(self.model, cluster, plan, self.seq_len), {}

    def quick_step_time(self, cluster: Cluster, leaf: Leaf) -> float | None:
        """Seconds at most `step_time`'s, for much less work (None without `micro_batch_work`): the predictor's
        `quick_step_floor`, from the leaf's micro-batch work, computed once per `work_key` (tests compare it with
        the uncached figure)."""
        if self.micro_batch_work is None:
            return None
        work_key, quick_step_floor = self._quick_step
        key = (cluster, work_key(leaf))
        work = self._work.get(key)
        if work is None:
            work = self._work[key] = self.micro_batch_work(self.model, cluster, leaf.plan(self.global_batch),
                                                           self.seq_len)
        # micro-batches per step: ParallelPlan.grad_accumulation
        microbatches = self.global_batch // (leaf.micro_batch * leaf.dp)
        return quick_step_floor(cluster, work, leaf.pp_schedule, leaf.pp, leaf.vpp, microbatches)

    @cached_property
    def _quick_step(self) -> tuple[Callable[[Leaf], tuple], Callable[..., float]]:
        """The predictor's (work_key, quick_step_floor), imported once (quick_step_time runs per leaf)."""
        from bastion.predict.estimate import quick_step_floor, work_key

        return work_key, quick_step_floor

    def memory(self, cluster: Cluster, leaf: Leaf, zero: int) -> float:
        """Bytes per device no plan of `leaf` at ZeRO stage `zero` (any recompute mode) uses less than."""
        assert self.memory_bound is not None
        return self.memory_bound(self.model, cluster, leaf.plan(self.global_batch, zero), self.seq_len)

    @cached_property
    def flops_per_step(self) -> float:
        """Model FLOPs of one optimizer step (the numerator of MFU)."""
        from bastion.predict.flops import model_flops_per_token

        return model_flops_per_token(self.model, self.seq_len) * self.global_batch * self.seq_len


class Objective:
    """What "best" means. Subclass it in one file under planner/objectives/ and register an instance in
    objectives/__init__.py."""

    #: the name `bastion plan --objective` takes
    name: ClassVar[str]
    #: one line for `--help` and the report header
    description: ClassVar[str]
    #: census reason for plans the floor proves cannot enter the answer
    bounded_reason: ClassVar[str]

    def key(self, plan: RankedPlan) -> tuple:
        """Sort key of an evaluated plan; the smallest key wins."""
        raise NotImplementedError

    def value(self, plan: RankedPlan) -> float:
        """The figure `key` sorts by first, as a number where smaller is better (what `floor` bounds)."""
        raise NotImplementedError

    def can_bound(self, floors: Floors) -> bool:
        """Whether `floor` can be computed with these bounds; False = every plan that fits is predicted."""
        return floors.time_bound is not None

    def memory_floor(self, floors: Floors, cluster: Cluster, leaf: Leaf, zero: int, state_bytes: float) -> float:
        """Bytes per device no plan of `leaf` at ZeRO stage `zero` goes below, given its model-state bytes."""
        return state_bytes

    def floor(self, floors: Floors, cluster: Cluster, leaf: Leaf, memory: dict[int, float]) -> float:
        """The best `value` any plan of `leaf` can reach at the ZeRO stages kept (`memory`: stage -> its
        `memory_floor`)."""
        raise NotImplementedError

    def floor_at_step(self, floors: Floors, cluster: Cluster, leaf: Leaf, step: float) -> float | None:
        """The best `value` a plan of `leaf` whose step lasts at least `step` seconds can reach (None: this
        objective's floor does not follow the step time)."""
        return None

    def quick_floor(self, floors: Floors, cluster: Cluster, leaf: Leaf, memory: dict[int, float]) -> float | None:
        """A value at most `floor`'s for the same group, much cheaper to compute; None: none (every group's
        `floor` is computed). Default: `floor_at_step` at the predictor's quick step floor, which is at most the
        step floor `floor` starts from."""
        quick = floors.quick_step_time(cluster, leaf)
        return None if quick is None else self.floor_at_step(floors, cluster, leaf, quick)
