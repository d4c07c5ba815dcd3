"""The planner's search: enumerate → prune → rank.

1. enumerate (space.py): every plan for every GPU count; plans that break a static rule are counted by reason
   and never reach the predictor.
2. prune (bounds.py): a memory lower bound — the exact model-state bytes of the fullest pipeline stage — is
   computed once per (degrees, schedule, precision, ZeRO stage) group; when it already exceeds device memory,
   every plan of the group is out of memory whatever its micro-batch, recompute or sequence parallelism.
3. rank: the predictor evaluates the survivors; plans that fit are sorted by the objective (objectives/), whose
   floor also orders the groups best first and settles those that cannot enter the answer. A cheaper quick floor
   (m × the micro-batch's work over the pipeline ranks / pp, plus the bubble) orders them first; the exact floor
   is computed only for groups the quick one cannot place or settle (_FloorOrder).

Pruning never changes the answer (tests compare against `prune=False`), only how many plans the predictor sees.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from operator import itemgetter
from typing import Any, NamedTuple

from bastion.errors import ConfigError, PlanError
from bastion.planner.bounds import StateBytesFn, StateLowerBound
from bastion.planner.objectives import DEFAULT_OBJECTIVE, Floors, Objective, get_objective
from bastion.planner.parallel import FitFn, Outcome, PredictionPool, map_in_workers, outcome_of
from bastion.planner.space import (
    Enumeration,
    Leaf,
    MemoryChoice,
    SearchSpace,
    enumerate_space,
    memory_choices,
)
from bastion.specs.hardware import Cluster
from bastion.specs.model import ModelSpec
from bastion.specs.plan import ParallelPlan

OUT_OF_MEMORY = "out of memory"

EstimateFn = Callable[[ModelSpec, Cluster, ParallelPlan, int], Any]
TimeBoundFn = Callable[[ModelSpec, Cluster, ParallelPlan, int], float]
MemoryBoundFn = Callable[[ModelSpec, Cluster, ParallelPlan, int], float]
#: -> a predict.estimate.StepFloor: the step and its terms no ZeRO stage or recompute mode of a plan goes below
StepFloorFn = Callable[[ModelSpec, Cluster, ParallelPlan, int], Any]
#: -> seconds of one micro-batch over all pipeline ranks (predict.estimate.micro_batch_work)
MicroBatchWorkFn = Callable[[ModelSpec, Cluster, ParallelPlan, int], float]

#: the census reason of plans the step-time bound settles under the default objective
BOUNDED_OUT = get_objective(DEFAULT_OBJECTIVE).bounded_reason
#: plans predicted in the first round under the time bound; each later round doubles
FIRST_CHUNK = 1024
#: groups whose exact floor is computed at once when the quick floors leave the order open; each later batch doubles
FIRST_FLOORS = 256


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
    #: a name in `bastion.planner.objectives.OBJECTIVES` (time-p90, time-median, throughput, mfu, memory, ...)
    objective: str = DEFAULT_OBJECTIVE
    #: which values each plan field may take
    space: SearchSpace = field(default_factory=SearchSpace)
    #: skip groups whose memory lower bound exceeds device memory (off only to check that it changes nothing)
    prune: bool = True
    #: processes that run predictions: 0 = one per available CPU when there are many plans, 1 = this one only
    workers: int = 0
    #: whether the software is known (predict/intervals.py's stratum): the plans' p10-p90 intervals depend on it
    software_known: bool = True

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
    #: the p10-p90 interval of the step time (predict/intervals.py: wider where the plan's step rests on terms
    #: the published runs validate least)
    p10_s: float
    p90_s: float
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
        experts = getattr(self.estimate, "experts", None)
        return {"plan": self.plan.to_dict(), "step_time_s": self.step_time_s, "predicted_p10_s": self.p10_s,
                "predicted_p90_s": self.p90_s, "tokens_per_s": self.tokens_per_s, "mfu": self.mfu,
                "memory_gib": self.memory_gib,
                "breakdown": {"time_s": self.time_breakdown(), "memory_gib": {
                    k: v / 2**30 for k, v in self.memory_breakdown().items()}},
                # MoE: where the experts sit (the ep group's tp and dp × cp ranks, folded over tp ranks or not,
                # in a node or across nodes, experts per rank, etp) and the all-to-all's share of the step
                **({"experts": experts} if experts else {})}


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


def default_estimate(options: Any = None) -> EstimateFn:
    """The predictor's `estimate` with `options` (a PredictOptions; None = bastion's runtime), imported on first
    use (the planner module loads without it)."""
    from bastion.predict import estimate

    def call(model: ModelSpec, cluster: Cluster, plan: ParallelPlan, seq_len: int) -> Any:
        # one rank per pipeline role is enough for every figure the planner shows (no per-rank memory list)
        return estimate(model, cluster, plan, seq_len, options=options, detail=False)

    return call


def default_memory_fit(options: Any = None) -> FitFn:
    """The predictor's memory_fit: its estimate's fits and memory total without the step time (a plan that does
    not fit is then not timed)."""
    from bastion.predict.estimate import memory_fit

    return partial(memory_fit, options=options)


def default_time_bound(options: Any = None) -> TimeBoundFn:
    """The predictor's step-time lower bound (valid for a plan and all its ZeRO stages and recompute modes)."""
    from bastion.predict.estimate import step_time_lower_bound

    return partial(step_time_lower_bound, options=options)


def default_step_floor(options: Any = None) -> StepFloorFn:
    """The predictor's step-time lower bound with its terms' (valid as `default_time_bound`)."""
    from bastion.predict.estimate import step_floor

    return partial(step_floor, options=options)


def default_micro_batch_work(options: Any = None) -> MicroBatchWorkFn:
    """The predictor's micro-batch work over all pipeline ranks (its quick step floor's ingredient)."""
    from bastion.predict.estimate import micro_batch_work

    return partial(micro_batch_work, options=options)


def default_memory_bound(options: Any = None) -> MemoryBoundFn:
    """The predictor's memory lower bound (valid for a plan and all its recompute modes)."""
    from bastion.predict.estimate import memory_lower_bound

    return partial(memory_lower_bound, options=options)


def search(request: PlanRequest, estimate: EstimateFn | None = None,
           state_bytes: StateBytesFn | None = None, time_bound: TimeBoundFn | None = None,
           memory_bound: MemoryBoundFn | None = None, options: Any = None) -> SearchResult:
    """Evaluate every plan in the request's space and return the best `top_k`.

    `estimate` and `state_bytes` default to the predictor's `estimate` and `memory.model_state_bytes`; tests
    pass others to check the search itself against brute force. `time_bound` (a step time no plan of a leaf
    can beat) and `memory_bound` (bytes no recompute mode of a plan goes below) default to the predictor's when
    `estimate` does; without them only the model-state bound prunes. `options` (a PredictOptions: the software
    the plan will run on) goes to the predictor's functions; None = bastion's runtime.
    """
    started = time.perf_counter()
    step_floor = work = fit = None
    if estimate is None:
        # the terms' floors and the quick floor come with the predictor's own step bound only (a time_bound given
        # is all that is known)
        step_floor = None if time_bound else default_step_floor(options)
        work = None if time_bound else default_micro_batch_work(options)
        fit = default_memory_fit(options)
        estimate, time_bound = default_estimate(options), time_bound or default_time_bound(options)
        memory_bound = memory_bound or default_memory_bound(options)
    objective = get_objective(request.objective)
    # learned position tables are sized by the sequence length: the bounds must see the model the predictor
    # costs (estimate resizes it the same way)
    model = request.model.with_seq_len(request.seq_len)
    floors = Floors(model, request.global_batch, request.seq_len, time_bound, memory_bound, request.software_known,
                    step_floor, work)
    by_bound = request.prune and objective.can_bound(floors)
    with _cyclic_gc_paused():
        space = _bound_groups(request, model, objective, by_bound, state_bytes, floors)
        found = _predict_best_first(request, model, objective, by_bound, space, estimate, fit)
    leanest = found.leanest
    if not found.ranked and space.floor_oom:
        leanest = _leanest_settled(request, model, space, estimate, leanest, fit)
    ranked = sorted(found.ranked, key=objective.key)
    # the few plans shown get their full Estimate (breakdowns) from one more, exact, prediction
    keep = max(request.top_k, 2)
    kept = [_with_estimate(p, estimate, model, request.cluster, request.seq_len) for p in ranked[:keep]]
    alternative = None
    if ranked:
        other = next((p for p in ranked if _degrees(p.plan) != _degrees(ranked[0].plan)), None)
        alternative = other and _with_estimate(other, estimate, model, request.cluster, request.seq_len)
    return SearchResult(request=request, evaluated=space.evaluated, predicted=found.predicted,
                        feasible=len(ranked), rejected=space.rejected, fixes=space.fixes,
                        plans=kept[:request.top_k], runner_up=kept[1] if len(kept) > 1 else None,
                        alternative=alternative, seconds=time.perf_counter() - started,
                        enumerations=space.enumerations, leanest_oom=leanest)


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector: the search holds hundreds of thousands of small tuples (leaves,
    groups) that form no reference cycles, and every collection would traverse them all again (a tenth of
    deepseek-v3 × 2,048's planning time). Reference counting frees them as before; a cycle made meanwhile is
    collected after the search."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Group(NamedTuple):
    """The plans of one leaf that the memory bound leaves: its ZeRO stages × its recompute / offload choices."""

    #: a floor of the objective for every plan of the group: its quick floor, or its floor where the objective
    #: has no quick one (_BoundedSpace.exact_floor None); 0 when the search is not best-first
    floor: float
    #: enumeration index of its first plan (the deterministic tie-breaker)
    first: int
    cluster: Cluster
    leaf: Leaf
    zeros: tuple[int, ...]
    choices: tuple[MemoryChoice, ...]
    #: ZeRO stage -> its memory floor (what Objective.floor reads)
    memory: dict[int, float]


@dataclass
class _BoundedSpace:
    """Phases 1-2: the space enumerated for every GPU count, what the bounds settled, and what is left."""

    #: sorted by (floor, first)
    groups: list[_Group]
    #: plans in the groups
    jobs: int
    #: the objective's floor of a group, when the groups' `floor` is only its quick floor
    exact_floor: Callable[[_Group], float] | None = None
    evaluated: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    fixes: dict[str, str] = field(default_factory=dict)
    enumerations: list[Enumeration] = field(default_factory=list)
    #: (floor, cluster, leaf, zero, choices) of groups only the predictor's memory floor put out of memory
    floor_oom: list[tuple[float, Cluster, Leaf, int, tuple[MemoryChoice, ...]]] = field(default_factory=list)

    def count(self, reason: str, plans: int, fix: str | None = None) -> None:
        self.rejected[reason] += plans
        if fix:
            self.fixes.setdefault(reason, fix)


@dataclass
class _Predicted:
    ranked: list[RankedPlan]
    #: (bytes, plan) of the leanest predicted plan that did not fit
    leanest: tuple[float, ParallelPlan] | None
    predicted: int
    #: groups whose exact floor was computed (the rest were ordered or settled by their quick floor)
    refined: int = 0


def _bound_groups(request: PlanRequest, model: ModelSpec, objective: Objective, by_bound: bool,
                  state_bytes: StateBytesFn | None, floors: Floors) -> _BoundedSpace:
    """1-2. Enumerate every GPU count and drop the groups the memory bounds settle; give each survivor the
    objective's quick floor (its floor where it has none), sorted best first. A ParallelPlan is built only for a
    plan that is predicted (and one per work_key for the quick floors)."""
    batch, seq_len = request.global_batch, request.seq_len
    space = _BoundedSpace(groups=[], jobs=0)
    quick = by_bound
    for count in request.counts:
        cluster = _resize(request.cluster, count)
        enum = enumerate_space(model, cluster, batch, seq_len, request.space)
        space.enumerations.append(enum)
        space.evaluated += enum.total
        for reason, plans in enum.rejected.items():
            space.count(reason, plans, enum.fixes.get(reason))
        bound = StateLowerBound(model, cluster, state_bytes) if request.prune else None
        capacity = cluster.accelerator.hbm_bytes
        # (pp, vpp) -> memory_choices (the only arguments of it that vary here)
        choices_of: dict[tuple[int, int], tuple[MemoryChoice, ...]] = {}
        out_of_memory = 0
        for leaf in enum.leaves:
            choices = choices_of.get((leaf.pp, leaf.vpp))
            if choices is None:
                choices = choices_of[leaf.pp, leaf.vpp] = memory_choices(request.space, model, cluster, leaf.pp,
                                                                         leaf.vpp)
            zeros = leaf.zero_stages
            # ZeRO stage -> its memory floor, for the stages the bounds leave
            memory: dict[int, float] = {}
            if bound is None:
                memory = dict.fromkeys(zeros, 0.0)
            else:
                for z, state in zip(zeros, bound.states(leaf, batch, zeros), strict=True):
                    if state > capacity:
                        continue
                    least = objective.memory_floor(floors, cluster, leaf, z, state)
                    if least > capacity:  # kept: if nothing fits, the leanest of these is reported
                        space.floor_oom.append((least, cluster, leaf, z, choices))
                    else:
                        memory[z] = least
            out_of_memory += (len(zeros) - len(memory)) * len(choices)
            if memory:
                floor = objective.quick_floor(floors, cluster, leaf, memory) if by_bound else 0.0
                quick = quick and floor is not None
                space.groups.append(_Group(floor or 0.0, space.jobs, cluster, leaf, tuple(memory), choices, memory))
                space.jobs += len(memory) * len(choices)
        if enum.leaves:
            space.count(OUT_OF_MEMORY, out_of_memory)

    def floor_of(group: _Group) -> float:
        return objective.floor(floors, group.cluster, group.leaf, group.memory)

    if by_bound and not quick:
        # no quick floor: every group's floor, independent of the others' (on many groups, worker processes
        # share them out)
        exact = map_in_workers(floor_of, space.groups, request.workers)
        space.groups = [group._replace(floor=floor) for group, floor in zip(space.groups, exact, strict=True)]
    if by_bound:
        # by floor, then first: the sort is stable and the groups are in enumeration order (first ascending)
        space.groups.sort(key=itemgetter(0))
    space.exact_floor = floor_of if quick else None
    return space


class _FloorOrder:
    """The groups best floor first (then in enumeration order), with each group's exact floor computed only when
    the order needs it.

    The groups come sorted by floors at most their exact ones (the objective's quick floors). The next group is
    the least exact floor computed so far once it is below the quick floor of every group not yet refined: their
    exact floors are at least that, so none of them comes earlier. Groups are refined in the quick order, in
    batches that double (in worker processes when a batch is large: map_in_workers); a group whose quick floor is
    above the threshold asked is never refined, nor are those after it."""

    def __init__(self, groups: list[_Group], exact: Callable[[_Group], float] | None, workers: int) -> None:
        self.groups = groups
        self._exact = exact
        self._workers = workers
        #: the first group not refined
        self._next = 0
        #: (exact floor, first, index) of the groups refined and not yet taken
        self._heap: list[tuple[float, int, int]] = []
        self._batch = FIRST_FLOORS
        #: exact floors computed (tests check the quick floors spare most)
        self.refined = 0

    def left(self) -> bool:
        """Whether a group was not taken."""
        return self._next < len(self.groups) or bool(self._heap)

    def take(self, threshold: float) -> int | None:
        """The index of the next group in order of (exact floor, first), if that floor is at most `threshold`."""
        groups, heap = self.groups, self._heap
        while True:
            more = self._next < len(groups)
            if heap and (not more or heap[0][0] < groups[self._next].floor):
                return heapq.heappop(heap)[2] if heap[0][0] <= threshold else None
            if not more or groups[self._next].floor > threshold:
                return None
            self._refine()

    def _refine(self) -> None:
        lo = self._next
        if self._exact is None:  # the floors are exact
            hi = len(self.groups)
            floors = [group.floor for group in self.groups[lo:]]
        else:
            hi = min(len(self.groups), lo + self._batch)
            floors = map_in_workers(self._exact, self.groups[lo:hi], self._workers)
            self.refined += hi - lo
            self._batch *= 2
        self._heap.extend((floor, self.groups[i].first, i) for i, floor in zip(range(lo, hi), floors, strict=True))
        heapq.heapify(self._heap)
        self._next = hi


def _predict_best_first(request: PlanRequest, model: ModelSpec, objective: Objective, by_bound: bool,
                        space: _BoundedSpace, estimate: EstimateFn, fit: FitFn | None = None) -> _Predicted:
    """3. Predict the survivors (in worker processes when there are many). Under a bound, groups are predicted
    in order of their floor, in rounds that double, and once the top K (and the best plan with other degrees,
    which the report explains) are known, every plan whose floor is worse than all of them is settled
    unpredicted: it cannot enter the answer."""
    batch = request.global_batch

    def jobs_of(group: _Group) -> list[tuple[Cluster, ParallelPlan]]:
        return [(group.cluster, group.leaf.plan(batch, zero, choice))
                for zero, choice in itertools.product(group.zeros, group.choices)]

    keep = max(request.top_k, 2)
    found = _Predicted(ranked=[], leanest=None, predicted=0)
    groups = space.groups
    order = _FloorOrder(groups, space.exact_floor, request.workers)
    chunk, threshold = FIRST_CHUNK if by_bound else math.inf, math.inf
    with PredictionPool(estimate, model, request.seq_len, groups, jobs_of, request.workers, fit) as pool:
        while True:
            taken: list[int] = []
            jobs = 0
            while jobs < chunk and (index := order.take(threshold)) is not None:
                taken.append(index)
                jobs += len(groups[index].zeros) * len(groups[index].choices)
            if not taken:
                break
            outcomes = iter(pool.predict(taken, jobs))
            found.predicted += jobs
            for group in (groups[i] for i in taken):
                for k, (cluster, plan) in enumerate(jobs_of(group)):
                    _record(found, space, group.first + k, cluster, plan, next(outcomes), request.software_known)
            chunk *= 2
            if by_bound:
                threshold = _threshold(found.ranked, objective, keep)
    found.refined = order.refined
    if order.left():
        space.count(objective.bounded_reason, space.jobs - found.predicted)
    return found


def _record(found: _Predicted, space: _BoundedSpace, order: int, cluster: Cluster, plan: ParallelPlan,
            outcome: Outcome, software_known: bool) -> None:
    from bastion.predict.intervals import bounds, shares_width, stratum_q

    if isinstance(outcome, PlanError):
        space.count(outcome.reason, 1, outcome.fix or outcome.problem)
        return
    fits, step, tokens_per_s, mfu, total, shares = outcome
    if not fits:
        space.count(OUT_OF_MEMORY, 1)
        if found.leanest is None or total < found.leanest[0]:
            found.leanest = (total, plan)
        return
    p10, p90 = bounds(step, stratum_q(software_known) * shares_width(shares, software_known))
    found.ranked.append(RankedPlan(plan=plan, num_gpus=cluster.num_gpus, step_time_s=step,
                                   tokens_per_s=tokens_per_s, mfu=mfu, memory_bytes=total, estimate=None,
                                   p10_s=p10, p90_s=p90, order=order))


def _leanest_settled(request: PlanRequest, model: ModelSpec, space: _BoundedSpace, estimate: EstimateFn,
                     leanest: tuple[float, ParallelPlan] | None, fit: FitFn | None = None
                     ) -> tuple[float, ParallelPlan] | None:
    """Nothing fits: the leanest plan for the advice, also among those the memory floor settled (already counted
    out of memory), best floor first, until no floor can beat the leanest found."""
    for floor, cluster, leaf, zero, choices in sorted(space.floor_oom, key=lambda f: f[0]):
        if leanest is not None and floor >= leanest[0]:
            break
        for choice in choices:
            plan = leaf.plan(request.global_batch, zero, choice)
            outcome = outcome_of(estimate, model, cluster, plan, request.seq_len, fit)
            if not isinstance(outcome, PlanError) and (leanest is None or outcome[4] < leanest[0]):
                leanest = (outcome[4], plan)
    return leanest


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


def _degrees(plan: ParallelPlan) -> tuple[int, int, int, int, int, int]:
    return plan.dp, plan.tp, plan.pp, plan.cp, plan.ep, plan.etp


def _with_estimate(p: RankedPlan, estimate: EstimateFn, model: ModelSpec, base: Cluster, seq_len: int) -> RankedPlan:
    est = estimate(model, _resize(base, p.num_gpus), p.plan, seq_len)
    return replace(p, estimate=est)


def _resize(cluster: Cluster, count: int) -> Cluster:
    return cluster if count == cluster.num_gpus else cluster.with_gpus(count)
