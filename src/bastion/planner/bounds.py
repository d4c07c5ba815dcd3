"""Provable memory lower bound used to prune the search.

A plan's predicted memory on its fullest stage is at least the parameters + gradients + optimizer state that
stage holds (activations, logits, buffers and allocator overhead only add to it). Those model-state bytes
depend on the degrees, the schedule's layer placement, the precision and the ZeRO stage — not on the
micro-batch, recompute or sequence parallelism — so one bound settles every plan of that group at once.
"""

from __future__ import annotations

from collections.abc import Callable

from bastion.planner.space import Leaf
from bastion.specs.hardware import Cluster
from bastion.specs.model import ModelSpec
from bastion.specs.plan import ParallelPlan

StateBytesFn = Callable[[ModelSpec, ParallelPlan, int], dict[str, float]]


def _default_state_bytes() -> StateBytesFn:
    """The predictor's model-state bytes of a stage's rank 0 (the largest shard). `stage_states` is the same
    figure as the contract's `model_state_bytes`, cached by what it depends on — and it is the cache the
    predictor's own memory estimate reads, so bounding first also warms the predictions that follow."""
    from bastion.predict import memory

    if not hasattr(memory, "stage_states"):
        return memory.model_state_bytes

    def cached(model: ModelSpec, plan: ParallelPlan, stage: int) -> dict[str, float]:
        params, grads, optimizer = memory.stage_states(model, plan, stage)
        return {"params": params, "grads": grads, "optimizer": optimizer}

    return cached


class StateLowerBound:
    """Model-state bytes of the fullest pipeline stage, cached per group of plans that share them."""

    def __init__(self, model: ModelSpec, cluster: Cluster, state_bytes: StateBytesFn | None = None) -> None:
        self.model = model
        self.cluster = cluster
        self._state_bytes = state_bytes or _default_state_bytes()
        self._cache: dict[tuple, float] = {}
        # the predictor's model states depend on a rank only through its role (first, middle, last): one rank
        # per role is enough; any other state_bytes function is asked about every rank
        self._stages = _representative_stages(model) if state_bytes is None else _every_stage

    def state_bytes(self, leaf: Leaf, global_batch: int, zero_stage: int) -> float:
        key = (leaf.dp, leaf.tp, leaf.pp, leaf.cp, leaf.ep, leaf.pp_schedule, leaf.vpp, leaf.precision, zero_stage)
        cached = self._cache.get(key)
        if cached is None:
            plan = leaf.plan(global_batch, zero_stage)
            cached = max(_state_total(self._state_bytes(self.model, plan, stage)) for stage in self._stages(plan))
            self._cache[key] = cached
        return cached


def _state_total(parts: dict[str, float]) -> float:
    return float(parts["params"]) + float(parts["grads"]) + float(parts["optimizer"])


def _every_stage(plan: ParallelPlan) -> range:
    return range(plan.pp)


def _representative_stages(model: ModelSpec) -> Callable[[ParallelPlan], tuple[int, ...]]:
    from bastion.predict.schedule import representative_stages

    def stages(plan: ParallelPlan) -> tuple[int, ...]:
        return representative_stages(model.num_layers, plan.pp_schedule, plan.pp, plan.vpp)

    return stages
