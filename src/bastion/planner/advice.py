"""When no plan fits: what would. Every suggestion here is computed — a changed request is searched and the
plan the predictor says fits is named — never a canned list.

The probes look for *a* plan that fits (the leanest candidates first, a bounded number of predictions each);
they are advice, so a probe that finds nothing simply makes no suggestion.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from bastion.errors import ConfigError, InfeasiblePlan
from bastion.planner.bounds import StateBytesFn, StateLowerBound
from bastion.planner.explain import describe
from bastion.planner.search import OUT_OF_MEMORY, EstimateFn, SearchResult, _resize, default_estimate
from bastion.planner.space import SearchSpace, enumerate_space
from bastion.specs.hardware import Cluster, accelerator_names, load_accelerator
from bastion.specs.model import ModelSpec
from bastion.specs.plan import ParallelPlan

#: predictions one probe may spend looking for a plan that fits
PROBE_BUDGET = 300
#: how far `more GPUs` looks: up to this factor above the largest count searched
MAX_GPU_FACTOR = 64
#: shortest sequence the `shorter sequence` probe tries
MIN_SEQ_LEN = 256
_LEANEST_RECOMPUTE = ("full", "selective", "none")


def probe_fit(model: ModelSpec, cluster: Cluster, global_batch: int, seq_len: int, space: SearchSpace,
              estimate: EstimateFn, state_bytes: StateBytesFn | None = None,
              budget: int = PROBE_BUDGET) -> tuple[ParallelPlan, Any] | None:
    """A plan that fits, trying the leanest candidates first (smallest model state, smallest micro-batch,
    highest ZeRO stage, most recompute); None if none of the first `budget` fits."""
    enum = enumerate_space(model, cluster, global_batch, seq_len, space)
    if not enum.leaves:
        return None
    bound = StateLowerBound(model, cluster, state_bytes)
    capacity = cluster.accelerator.hbm_bytes
    recomputes = [r for r in _LEANEST_RECOMPUTE if r in space.allowed("recompute", space.recompute)]
    if not recomputes:
        return None
    candidates = []
    for order, leaf in enumerate(enum.leaves):
        for zero in sorted(leaf.zero_stages, reverse=True):
            lower = bound.state_bytes(leaf, global_batch, zero)
            if lower <= capacity:
                candidates.append((leaf.micro_batch, lower, order, leaf, zero))
    candidates.sort(key=lambda c: c[:3])
    for _, _, _, leaf, zero in candidates[:budget]:
        plan = leaf.plan(global_batch, zero, recomputes[0])
        est = estimate(model, cluster, plan, seq_len)
        if est.fits:
            return plan, est
    return None


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


def nothing_fits(result: SearchResult, estimate: EstimateFn | None = None,
                 state_bytes: StateBytesFn | None = None) -> InfeasiblePlan:
    """The error to raise when the search found no feasible plan, with computed ways out."""
    estimate = estimate or default_estimate()
    req = result.request
    model, batch, seq = req.model, req.global_batch, req.seq_len
    counts = req.counts
    where = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}..{counts[-1]}"
    acc = req.cluster.accelerator
    census = ", ".join(f"{n:,} {r}" for r, n in result.rejected.most_common() if n)
    if not census:
        pinned = " ".join(f"--fix {k}={v}" for k, v in sorted(req.space.pins.items()))
        census = (f"none — no plan was left to evaluate ({pinned} excludes every plan)" if pinned
                  else "none — no plan was left to evaluate")
    any_valid = any(e.leaves for e in result.enumerations)
    suggestions: list[str] = []

    def probe(cluster: Cluster, b: int = batch, s: int = seq, space: SearchSpace = req.space):
        return probe_fit(model, cluster, b, s, space, estimate, state_bytes)

    if any_valid and result.leanest_oom is not None:
        lean_bytes, lean_plan = result.leanest_oom
        problem = (f"No plan for {model.name} fits in {acc.hbm_gib:g} GiB on {acc.name} × {where} at global batch "
                   f"{batch}, seq_len {seq}: the leanest plan evaluated ({describe(lean_plan)}) needs "
                   f"{_gib(lean_bytes)} per device. Rejected: {census}.")
        if lean_plan.micro_batch == 1:
            suggestions.append("a smaller micro-batch cannot help: micro_batch 1 was already tried")
    elif any_valid:
        problem = (f"No plan for {model.name} fits on {acc.name} × {where}: even the model state (parameters, "
                   f"gradients, optimizer) of every plan exceeds {acc.hbm_gib:g} GiB per device. Rejected: {census}.")
    else:
        problem = (f"No valid plan for {model.name} on {acc.name} × {where} at global batch {batch}, seq_len {seq}. "
                   f"Rejected: {census}.")
        for reason, _ in result.rejected.most_common(3):
            if reason != OUT_OF_MEMORY and reason in result.fixes:
                suggestions.append(f"{reason}: {result.fixes[reason]}")

    largest = max(counts)
    base = _resize(req.cluster, largest)
    # 1. relax each --fix pin
    for name in sorted(req.space.pins):
        pins = {k: v for k, v in req.space.pins.items() if k != name}
        found = probe(base, space=replace(req.space, pins=pins))
        if found:
            suggestions.append(f"drop --fix {name}={req.space.pins[name]}: {describe(found[0])} fits "
                               f"({_gib(found[1].memory.total)})")
    # 2. more GPUs of the same kind
    factor = 2
    while factor <= MAX_GPU_FACTOR:
        try:
            bigger = _resize(req.cluster, largest * factor)
        except ConfigError:  # not a whole number of nodes: skip that size
            factor *= 2
            continue
        found = probe(bigger)
        if found:
            suggestions.append(f"use {largest * factor} GPUs (--gpus {largest * factor}): {describe(found[0])} "
                               f"fits ({_gib(found[1].memory.total)} per device)")
            break
        factor *= 2
    # 3. a global batch the degrees can divide (only when divisibility, not memory, is what fails)
    if not any_valid:
        for candidate in _nearby_batches(batch, largest):
            found = probe(base, b=candidate)
            if found:
                suggestions.append(f"use --global-batch {candidate}: {describe(found[0])} is valid and fits")
                break
    # 4. shorter sequences
    shorter = seq // 2
    while shorter >= MIN_SEQ_LEN and any_valid:
        found = probe(base, s=shorter)
        if found:
            suggestions.append(f"train at --seq-len {shorter}: {describe(found[0])} fits "
                               f"({_gib(found[1].memory.total)})")
            break
        shorter //= 2
    # 5. accelerators with more memory, same count
    for name in accelerator_names():
        other = load_accelerator(name)
        if other.hbm_gib <= acc.hbm_gib or other.vendor != acc.vendor:
            continue
        found = probe(Cluster(name=f"{name}:{largest}", accelerator=other, num_nodes=base.num_nodes,
                              gpus_per_node=base.gpus_per_node, network=base.network))
        if found:
            suggestions.append(f"a {other.hbm_gib:g} GiB accelerator ({name}): {describe(found[0])} fits "
                               f"({_gib(found[1].memory.total)})")
    if not suggestions:
        suggestions.append(f"no nearby change found a plan that fits (tried up to {largest * MAX_GPU_FACTOR} GPUs, "
                           f"seq_len down to {MIN_SEQ_LEN}, larger-memory accelerators); use a smaller model")
    return InfeasiblePlan(problem, fix="\n  - " + "\n  - ".join(suggestions),
                          hint="bastion plan ... --json   # the full census; BASTION_DEBUG=1 for details",
                          reason=OUT_OF_MEMORY if any_valid else "no valid plan")


def _nearby_batches(batch: int, num_gpus: int) -> list[int]:
    """Global batches above `batch` divisible by growing powers of two up to the GPU count."""
    out: list[int] = []
    step = 2
    while step <= num_gpus:
        candidate = -(-batch // step) * step
        if candidate != batch and candidate not in out:
            out.append(candidate)
        step *= 2
    return sorted(out)[:6]

