"""The planner's search: enumerate → prune → rank.

1. enumerate (space.py): every plan for every GPU count; plans that break a static rule are counted by reason
   and never reach the predictor.
2. prune (bounds.py): a memory lower bound — the exact model-state bytes of the fullest pipeline stage — is
   computed once per (degrees, schedule, precision, ZeRO stage) group; when it already exceeds device memory,
   every plan of the group is out of memory whatever its micro-batch, recompute or sequence parallelism.
3. rank: the predictor evaluates the survivors; plans that fit are sorted by the objective.

Pruning never changes the answer (tests compare against `prune=False`), only how many plans the predictor sees.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from bastion.errors import ConfigError, PlanError
from bastion.planner.bounds import StateBytesFn, StateLowerBound
from bastion.planner.objectives import Objective, get_objective
from bastion.planner.parallel import outcome_of, predict_all
from bastion.planner.space import Enumeration, Leaf, SearchSpace, enumerate_space
from bastion.specs.hardware import Cluster
from bastion.specs.model import ModelSpec
from bastion.specs.plan import ParallelPlan

OUT_OF_MEMORY = "out of memory"

EstimateFn = Callable[[ModelSpec, Cluster, ParallelPlan, int], Any]
TimeBoundFn = Callable[[ModelSpec, Cluster, ParallelPlan, int], float]
MemoryBoundFn = Callable[[ModelSpec, Cluster, ParallelPlan, int], float]

#: the census reason of plans the step-time bound settles under the default (throughput) objective
BOUNDED_OUT = get_objective("throughput").bounded_reason
#: plans predicted in the first round under the time bound; each later round doubles
FIRST_CHUNK = 1024


@dataclass(frozen=True)
class PlanRequest:
    """One planning question: which plan trains `model` fastest on `cluster` at this batch and length."""

    model: ModelSpec
    #: the kind of cluster; resized to each entry of `gpu_counts`
    cluster: Cluster
    #: sequences per optimizer step
    global_batch: int
    #: tokens per sequence
    seq_len: int
    #: device counts to search (default: the cluster's own size)
    gpu_counts: tuple[int, ...] = ()
    #: how many plans to return, best first
    top_k: int = 5
    #: `throughput`, `mfu` or `memory` (see objectives.py)
    objective: str = "throughput"
    #: which values each plan field may take
    space: SearchSpace = field(default_factory=SearchSpace)
    #: skip groups whose memory lower bound exceeds device memory (off only to check that it changes nothing)
    prune: bool = True
    #: processes that run predictions: 0 = one per available CPU when there are many plans, 1 = this one only
    workers: int = 0

    def __post_init__(self) -> None:
        if self.global_batch < 1:
            raise ConfigError(f"--global-batch must be >= 1, got {self.global_batch}.",
                              fix="give the number of sequences per optimizer step, e.g. --global-batch 1024.")
        if self.seq_len < 1:
            raise ConfigError(f"--seq-len must be >= 1, got {self.seq_len}.", fix="e.g. --seq-len 4096.")
        if self.top_k < 1:
            raise ConfigError(f"--top must be >= 1, got {self.top_k}.", fix="e.g. --top 5.")
        if any(n < 1 for n in self.counts):
            raise ConfigError("GPU counts must be >= 1.", fix="e.g. --gpus 64 or --gpus 64..512.")
        get_objective(self.objective)

    @property
    def counts(self) -> tuple[int, ...]:
        return self.gpu_counts or (self.cluster.num_gpus,)


@dataclass(frozen=True)
class RankedPlan:
    """One evaluated plan that fits, with the predictor's figures."""

    plan: ParallelPlan
    num_gpus: int
    step_time_s: float
    tokens_per_s: float
    mfu: float
    #: bytes per device on the fullest pipeline stage
    memory_bytes: float
    #: the predictor's Estimate, for breakdowns
    estimate: Any
    #: position in enumeration order: the last tie-breaker, so that ranking is deterministic
    order: int

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / 2**30

    def time_breakdown(self) -> dict[str, float]:
        return _numbers(self.estimate.to_dict().get("time", {}))

    def memory_breakdown(self) -> dict[str, float]:
        return _numbers(self.estimate.to_dict().get("memory", {}))

    def to_dict(self) -> dict[str, Any]:
        """The `--json` entry for this plan."""
        return {"plan": self.plan.to_dict(), "step_time_s": self.step_time_s,
                "tokens_per_s": self.tokens_per_s, "mfu": self.mfu, "memory_gib": self.memory_gib,
                "breakdown": {"time_s": self.time_breakdown(), "memory_gib": {
                    k: v / 2**30 for k, v in self.memory_breakdown().items()}}}


@dataclass
class SearchResult:
    request: PlanRequest
    #: plans in the space, each either feasible or counted in `rejected`
    evaluated: int
    #: plans the predictor was asked about (the rest were settled by static rules or the memory bound)
    predicted: int
    feasible: int
    #: reason -> number of plans
    rejected: Counter[str]
    #: reason -> the fix text of one plan rejected for it
    fixes: dict[str, str]
    #: the best plans, best first (at most top_k)
    plans: list[RankedPlan]
    seconds: float
    #: the second-best plan (kept even when top_k = 1, to explain the winner)
    runner_up: RankedPlan | None = None
    #: the best plan whose parallel degrees (dp, tp, pp, cp, ep) differ from the winner's
    alternative: RankedPlan | None = None
    #: per GPU count: the enumeration (for advice when nothing fits)
    enumerations: list[Enumeration] = field(default_factory=list)
    #: smallest predicted per-device memory seen among plans that did not fit, and its plan
    leanest_oom: tuple[float, ParallelPlan] | None = None


def _numbers(d: Any) -> dict[str, float]:
    """The flat numeric entries of a breakdown dict (nested per-stage lists are left out)."""
    if not isinstance(d, dict):
        return {}
    return {k: float(v) for k, v in d.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def default_estimate() -> EstimateFn:
    """The predictor's `estimate`, imported on first use (the planner module loads without it)."""
    from bastion.predict import estimate

    def call(model: ModelSpec, cluster: Cluster, plan: ParallelPlan, seq_len: int) -> Any:
        # one rank per pipeline role is enough for every figure the planner shows (no per-rank memory list)
        return estimate(model, cluster, plan, seq_len, detail=False)

    return call


def default_time_bound() -> TimeBoundFn:
    """The predictor's step-time lower bound (valid for a plan and all its ZeRO stages and recompute modes)."""
    from bastion.predict.estimate import step_time_lower_bound

    return step_time_lower_bound


def default_memory_bound() -> MemoryBoundFn:
    """The predictor's memory lower bound (valid for a plan and all its recompute modes)."""
    from bastion.predict.estimate import memory_lower_bound

    return memory_lower_bound


def search(request: PlanRequest, estimate: EstimateFn | None = None,
           state_bytes: StateBytesFn | None = None, time_bound: TimeBoundFn | None = None,
           memory_bound: MemoryBoundFn | None = None) -> SearchResult:
    """Evaluate every plan in the request's space and return the best `top_k`.

    `estimate` and `state_bytes` default to the predictor's `estimate` and `memory.model_state_bytes`; tests
    pass others to check the search itself against brute force. `time_bound` (a step time no plan of a leaf
    can beat) and `memory_bound` (bytes no recompute mode of a plan goes below) default to the predictor's when
    `estimate` does; without them only the model-state bound prunes.
    """
    started = time.perf_counter()
    if estimate is None:
        estimate, time_bound = default_estimate(), time_bound or default_time_bound()
        memory_bound = memory_bound or default_memory_bound()
    objective = get_objective(request.objective)
    model, seq_len, batch = request.model, request.seq_len, request.global_batch
    # learned position tables are sized by the sequence length: the bounds must see the model the predictor
    # costs (estimate resizes it the same way)
    model = model.with_seq_len(seq_len)
    space = request.space
    recomputes = space.allowed("recompute", space.recompute)
    # best-first with a bound on the objective: the step-time floor (throughput, MFU) or the model-state floor
    by_bound = request.prune and (time_bound is not None or objective.name == "memory")
    flops_per_step = _model_flops_per_step(model, seq_len, batch) if by_bound and objective.name == "mfu" else 0.0

    rejected: Counter[str] = Counter()
    fixes: dict[str, str] = {}
    enumerations: list[Enumeration] = []
    evaluated = 0
    # 1-2. enumerate every GPU count and drop the groups the memory bound settles. What survives is kept per
    # leaf: (floor, index of its first plan, cluster, leaf, ZeRO stages); its plans are the ZeRO stages × recompute
    # modes, and a ParallelPlan is built only for a plan that is predicted
    groups: list[tuple[float, int, Cluster, Leaf, tuple[int, ...]]] = []
    floor_oom: list[tuple[float, Cluster, Leaf, int]] = []  # out of memory by the memory floor only
    total_jobs = 0
    for count in request.counts:
        cluster = _resize(request.cluster, count)
        enum = enumerate_space(model, cluster, batch, seq_len, space)
        enumerations.append(enum)
        evaluated += enum.total
        rejected.update(enum.rejected)
        fixes.update({r: f for r, f in enum.fixes.items() if r not in fixes})
        bound = StateLowerBound(model, cluster, state_bytes) if request.prune else None
        capacity = cluster.accelerator.hbm_bytes
        for leaf in enum.leaves:
            states = {z: bound.state_bytes(leaf, batch, z) if bound is not None else 0.0 for z in leaf.zero_stages}
            if bound is not None and memory_bound is not None and objective.name == "memory":
                # the predictor's fuller floor (states + the layer inputs every recompute mode keeps); under the
                # other objectives the step-time bound settles more for less work
                for z, state in states.items():
                    if state <= capacity:
                        states[z] = max(state, memory_bound(model, cluster, leaf.plan(batch, z), seq_len))
                        if states[z] > capacity:  # kept: if nothing fits, the leanest of these is reported
                            floor_oom.append((states[z], cluster, leaf, z))
            zeros = tuple(z for z, state in states.items() if state <= capacity)
            rejected[OUT_OF_MEMORY] += (len(leaf.zero_stages) - len(zeros)) * len(recomputes)
            if not zeros:
                continue
            floor = 0.0
            if by_bound and objective.name == "memory":
                floor = min(states[z] for z in zeros)
            elif by_bound:
                floor = time_bound(model, cluster, leaf.plan(batch), seq_len)
                if objective.name == "mfu":  # the highest MFU the floor allows, as a value where smaller is better
                    peak = cluster.accelerator.peak_tflops(leaf.precision) * 1e12 * cluster.num_gpus
                    floor = -flops_per_step / (floor * peak) * (1 + 1e-9)
            groups.append((floor, total_jobs, cluster, leaf, zeros))
            total_jobs += len(zeros) * len(recomputes)

    # 3. predict the survivors (in worker processes when there are many), then rank. Under the time bound,
    # plans are predicted in order of their floor, and once the top K (and the best plan with other degrees,
    # which the report explains) are known, every plan whose floor is slower than all of them is settled
    # unpredicted: it cannot enter the answer.
    if by_bound:
        groups.sort(key=lambda g: (g[0], g[1]))
    keep = max(request.top_k, 2)
    ranked: list[RankedPlan] = []
    leanest: tuple[float, ParallelPlan] | None = None
    done, chunk, predicted = 0, FIRST_CHUNK if by_bound else math.inf, 0
    threshold = math.inf
    while done < len(groups) and groups[done][0] <= threshold:
        indices: list[int] = []
        batch_jobs: list[tuple[Cluster, ParallelPlan]] = []
        while done < len(groups) and groups[done][0] <= threshold and len(batch_jobs) < chunk:
            _, first, cluster, leaf, zeros = groups[done]
            for k, (zero, recompute) in enumerate(itertools.product(zeros, recomputes)):
                indices.append(first + k)
                batch_jobs.append((cluster, leaf.plan(batch, zero, recompute)))
            done += 1
        outcomes = predict_all(estimate, model, seq_len, batch_jobs, request.workers)
        predicted += len(batch_jobs)
        for index, (cluster, plan), outcome in zip(indices, batch_jobs, outcomes, strict=True):
            if isinstance(outcome, PlanError):
                rejected[outcome.reason] += 1
                fixes.setdefault(outcome.reason, outcome.fix or outcome.problem)
                continue
            fits, step, tokens_per_s, mfu, total = outcome
            if not fits:
                rejected[OUT_OF_MEMORY] += 1
                if leanest is None or total < leanest[0]:
                    leanest = (total, plan)
                continue
            ranked.append(RankedPlan(plan=plan, num_gpus=cluster.num_gpus, step_time_s=step,
                                     tokens_per_s=tokens_per_s, mfu=mfu, memory_bytes=total, estimate=None,
                                     order=index))
        chunk *= 2
        if by_bound:
            threshold = _threshold(ranked, objective, keep)
    if done < len(groups):
        rejected[objective.bounded_reason] += total_jobs - predicted
    if not ranked and floor_oom:
        # nothing fits: find the leanest plan for the advice among those the memory floor settled (already counted
        # out of memory), best floor first, until no floor can beat the leanest found
        for floor, cluster, leaf, zero in sorted(floor_oom, key=lambda f: f[0]):
            if leanest is not None and floor >= leanest[0]:
                break
            for recompute in recomputes:
                plan = leaf.plan(batch, zero, recompute)
                outcome = outcome_of(estimate, model, cluster, plan, seq_len)
                if not isinstance(outcome, PlanError) and (leanest is None or outcome[4] < leanest[0]):
                    leanest = (outcome[4], plan)
    ranked.sort(key=objective.key)
    # the few plans shown get their full Estimate (breakdowns) from one more, exact, prediction
    kept = [_with_estimate(p, estimate, model, request.cluster, seq_len) for p in ranked[:keep]]
    alternative = None
    if ranked:
        other = next((p for p in ranked if _degrees(p.plan) != _degrees(ranked[0].plan)), None)
        alternative = other and _with_estimate(other, estimate, model, request.cluster, seq_len)
    return SearchResult(request=request, evaluated=evaluated, predicted=predicted, feasible=len(ranked),
                        rejected=rejected, fixes=fixes, plans=kept[:request.top_k],
                        runner_up=kept[1] if len(kept) > 1 else None, alternative=alternative,
                        seconds=time.perf_counter() - started, enumerations=enumerations, leanest_oom=leanest)


def _threshold(ranked: list[RankedPlan], objective: Objective, keep: int) -> float:
    """The worst objective value among the plans the answer needs: the K best, and the best with other degrees
    than the winner. A plan whose floor is worse than this can be neither (also if the winner changes later: the
    old winner or the old alternative then has other degrees than the new one and is better still)."""
    if len(ranked) < keep:
        return math.inf
    ranked.sort(key=objective.key)
    winner = _degrees(ranked[0].plan)
    other = next((p for p in ranked if _degrees(p.plan) != winner), None)
    if other is None:
        return math.inf
    return max(objective.value(ranked[keep - 1]), objective.value(other))


def _model_flops_per_step(model: ModelSpec, seq_len: int, global_batch: int) -> float:
    from bastion.predict.flops import model_flops_per_token

    return model_flops_per_token(model, seq_len) * global_batch * seq_len


def _degrees(plan: ParallelPlan) -> tuple[int, int, int, int, int]:
    return plan.dp, plan.tp, plan.pp, plan.cp, plan.ep


def _with_estimate(p: RankedPlan, estimate: EstimateFn, model: ModelSpec, base: Cluster, seq_len: int) -> RankedPlan:
    est = estimate(model, _resize(base, p.num_gpus), p.plan, seq_len)
    return replace(p, estimate=est)


def _resize(cluster: Cluster, count: int) -> Cluster:
    return cluster if count == cluster.num_gpus else cluster.with_gpus(count)
