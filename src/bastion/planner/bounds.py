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
from bastion.specs.plan import ParallelPlan, parse_layout

StateBytesFn = Callable[[ModelSpec, ParallelPlan, int], dict[str, float]]


class StateLowerBound:
    """Model-state bytes of the fullest pipeline stage, cached per group of plans that share them."""

    def __init__(self, model: ModelSpec, cluster: Cluster, state_bytes: StateBytesFn | None = None) -> None:
        self.model = model
        self.cluster = cluster
        self._state_bytes = state_bytes
        self._cache: dict[tuple, tuple[float, ...]] = {}
        # default: the predictor's own figure (the same bytes as the contract's `model_state_bytes`), cached by
        # what it depends on, so no plan object is built; any other state_bytes function (tests) is asked about
        # every rank of a plan
        self._fullest = _predictor_fullest_stage() if state_bytes is None else None

    def state_bytes(self, leaf: Leaf, global_batch: int, zero_stage: int) -> float:
        return self.states(leaf, global_batch, (zero_stage,))[0]

    def states(self, leaf: Leaf, global_batch: int, zero_stages: tuple[int, ...]) -> tuple[float, ...]:
        """`state_bytes` at each of `zero_stages`, cached by the leaf fields they depend on (leaves that differ
        only in micro-batch or sequence parallelism share them)."""
        key = (leaf.dp, leaf.tp, leaf.pp, leaf.cp, leaf.ep, leaf.etp, leaf.pipeline_layout, leaf.pp_schedule,
               leaf.vpp, leaf.precision, zero_stages)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = tuple(self._uncached(leaf, global_batch, zero) for zero in zero_stages)
        return cached

    def _uncached(self, leaf: Leaf, global_batch: int, zero_stage: int) -> float:
        if self._state_bytes is None:
            return self._fullest(self.model, leaf.tp, leaf.dp * leaf.cp, zero_stage, leaf.precision,
                                 leaf.pp_schedule, leaf.pp, leaf.vpp, leaf.ep, leaf.etp,
                                 parse_layout(leaf.pipeline_layout))
        plan = leaf.plan(global_batch, zero_stage)
        return max(_state_total(self._state_bytes(self.model, plan, stage)) for stage in range(leaf.pp))


def _state_total(parts: dict[str, float]) -> float:
    return float(parts["params"]) + float(parts["grads"]) + float(parts["optimizer"])


def _predictor_fullest_stage() -> Callable[..., int]:
    from bastion.predict.memory import fullest_stage_states

    return fullest_stage_states
