"""How fast a job runs on a pool: the planner's best plan, priced by `bastion.cost.run_cost`, cached.

For each (model, accelerator, software, GPUs, global batch, seq len) the planner searches once (top_k=1) with
the pool's software stack; `run_cost` turns
the plan into tokens/s, the job's MTBF (the default published failure rate scaled by GPU count), the async
checkpoint stall and Daly's interval. The job's token budget then only scales compute time, so the cache key
leaves it out and a 1,000-job workload drawn from a few dozen shapes costs a few dozen searches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from bastion.errors import BastionError
from bastion.sim.inputs import Inventory, Job, Pool
from bastion.specs import ModelSpec, load_model
from bastion.specs.hardware import load_accelerator


@dataclass(frozen=True)
class Perf:
    """The predicted figures of one job shape on one pool at one GPU count."""

    gpus: int
    step_time_s: float
    tokens_per_s: float
    #: checkpoint save stall (seconds per checkpoint)
    checkpoint_stall_s: float
    #: Daly's compute time between checkpoints, seconds
    checkpoint_interval_s: float
    #: the job's mean time between failures, hours
    mtbf_hours: float
    #: first-order expected goodput (checkpoint + failure losses), used for the scheduler's run-time estimate
    expected_goodput: float
    #: one-line plan summary
    plan: str


#: (model, pool, gpus, global_batch, seq_len) -> Perf, or None when no plan fits
PerfFn = Callable[[ModelSpec, Pool, int, int, int], "Perf | None"]


@dataclass(frozen=True)
class Option:
    """A pool a job can run in, at the GPU count it would use there."""

    pool: str
    #: GPUs the job uses there (a recorded job's may be a fraction of one)
    gpus: float
    nodes: int
    perf: Perf
    #: a recorded job's run hours on this pool (its recorded duration scaled by the pools' speeds)
    hours: float | None = None

    def compute_hours(self, tokens: float) -> float:
        if self.hours is not None:
            return self.hours
        return tokens / self.perf.tokens_per_s / 3600.0


@dataclass(frozen=True)
class Resolved:
    """A job with the pools it can use (in inventory order) and why the others are excluded."""

    job: Job
    options: tuple[Option, ...]
    #: pool name -> reason it cannot run there
    excluded: dict[str, str]
    #: an elastic job's sizes per pool, smallest first (the first is its option there): the throughput curve
    sizes: dict[str, tuple[Option, ...]] = field(default_factory=dict)


def plan_summary(plan) -> str:
    text = f"dp{plan.dp} tp{plan.tp} pp{plan.pp}"
    if plan.cp > 1:
        text += f" cp{plan.cp}"
    if plan.ep > 1:
        text += f" ep{plan.ep}"
    return text + f" zero{plan.zero_stage} mb{plan.micro_batch}"


class PlannerPerf:
    """The real step-time model: planner search + run_cost on the pool's software, cached per (model,
    accelerator, software, GPUs, batch, seq)."""

    def __init__(self, workers: int = 1) -> None:
        # one process: a job shape's search is small (≤ ~1 s), and on a shared 2-core machine the search's
        # process pool cost more wall time than it saved (1,000-job bench: 10 s serial vs 20 s pooled)
        self.workers = workers
        self.cache: dict[tuple[str, str, str, int, int, int], Perf | None] = {}
        self.searches = 0

    def __call__(self, model: ModelSpec, pool: Pool, gpus: int, global_batch: int, seq_len: int) -> Perf | None:
        key = (model.name, pool.accelerator, pool.software, gpus, global_batch, seq_len)
        if key not in self.cache:
            self.cache[key] = self._predict(model, pool, gpus, global_batch, seq_len)
        return self.cache[key]

    def _predict(self, model: ModelSpec, pool: Pool, gpus: int, global_batch: int, seq_len: int) -> Perf | None:
        from bastion.cost import run_cost
        from bastion.planner.search import PlanRequest, search
        from bastion.predict.software import software_stack

        self.searches += 1
        cluster = pool.cluster.with_gpus(gpus)
        options = software_stack(pool.software).options
        result = search(PlanRequest(model=model, cluster=cluster, global_batch=global_batch, seq_len=seq_len,
                                    top_k=1, workers=self.workers), options=options)
        if not result.plans:
            return None
        plan = result.plans[0].plan
        try:
            cost = run_cost(model, cluster, plan, tokens=1e9, seq_len=seq_len, options=options)
        except BastionError:  # a job so large that failures leave no progress: it cannot run there
            return None
        return Perf(gpus=gpus, step_time_s=cost.step_time_s, tokens_per_s=cost.tokens_per_s,
                    checkpoint_stall_s=cost.checkpoint_stall_s, checkpoint_interval_s=cost.checkpoint_interval_s,
                    mtbf_hours=cost.mtbf_hours, expected_goodput=cost.expected_goodput, plan=plan_summary(plan))


def candidate_gpus(pool: Pool) -> list[int]:
    """GPU counts bastion tries when a job leaves `gpus` out: 1, 2, 4, ... whole nodes, up to the pool."""
    counts, nodes = [], 1
    while nodes <= pool.nodes:
        counts.append(nodes * pool.gpus_per_node)
        nodes *= 2
    return counts


def resolve(jobs: tuple[Job, ...] | list[Job], inventory: Inventory, perf: PerfFn,
            progress: Callable[[int, int], None] | None = None) -> list[Resolved]:
    """Each job's options per pool: the GPU count it uses there and the predicted figures."""
    models: dict[tuple[str, int | None], ModelSpec] = {}
    tenant_pools = {t.name: t.pools for t in inventory.tenants}
    speeds = RecordedSpeeds(perf)
    resolved = []
    for i, job in enumerate(jobs):
        allowed = set(job.pools or (p.name for p in inventory.pools)) & set(
            tenant_pools.get(job.tenant) or (p.name for p in inventory.pools))
        if job.recorded is not None:
            resolved.append(_resolve_recorded(job, inventory, allowed, speeds))
            if progress:
                progress(i + 1, len(jobs))
            continue
        key = (job.model, job.seq_len)
        if key not in models:
            try:
                models[key] = load_model(job.model, seq_len=job.seq_len)
            except BastionError as exc:
                raise type(exc)(f"Job '{job.id}': {exc.problem}", fix=exc.fix, hint=exc.hint) from exc
        model = models[key]
        options, excluded, sizes = [], {}, {}
        for pool in inventory.pools:
            if pool.name not in allowed:
                excluded[pool.name] = _not_allowed(job, pool)
                continue
            if job.min_gpus is not None and job.max_gpus is not None:
                curve = [Option(pool.name, gpus, -(-gpus // pool.gpus_per_node), found)
                         for gpus in elastic_sizes(job.min_gpus, job.max_gpus, pool.gpus)
                         if (found := perf(model, pool, gpus, job.global_batch, model.seq_len)) is not None]
                if not curve:
                    excluded[pool.name] = (f"no plan of {model.name} fits on {job.min_gpus}..{job.max_gpus} of "
                                           f"{pool.gpus} {pool.accelerator}")
                    continue
                options.append(curve[0])
                sizes[pool.name] = tuple(curve)
                continue
            if job.gpus is not None:
                nodes = -(-job.gpus // pool.gpus_per_node)
                if nodes > pool.nodes:
                    excluded[pool.name] = f"needs {job.gpus} GPUs, the pool has {pool.gpus}"
                    continue
                found = perf(model, pool, job.gpus, job.global_batch, model.seq_len)
                if found is None:
                    excluded[pool.name] = f"no plan of {model.name} fits on {job.gpus} {pool.accelerator}"
                    continue
                options.append(Option(pool.name, job.gpus, nodes, found))
                continue
            for gpus in candidate_gpus(pool):
                found = perf(model, pool, gpus, job.global_batch, model.seq_len)
                if found is not None:
                    options.append(Option(pool.name, gpus, gpus // pool.gpus_per_node, found))
                    break
            else:
                excluded[pool.name] = f"no plan of {model.name} fits on up to {pool.gpus} {pool.accelerator}"
        resolved.append(Resolved(job, tuple(options), excluded, sizes))
        if progress:
            progress(i + 1, len(jobs))
    return resolved


def elastic_sizes(min_gpus: int, max_gpus: int, pool_gpus: int) -> list[int]:
    """The GPU counts an elastic job may run at: min_gpus doubled up to max_gpus, and max_gpus, within the pool."""
    sizes, gpus = [], min_gpus
    while gpus < max_gpus:
        sizes.append(gpus)
        gpus *= 2
    sizes.append(max_gpus)
    return [gpus for gpus in sizes if gpus <= pool_gpus]


class RecordedSpeeds:
    """How much faster a pool runs a recorded job than the accelerator it was recorded on.

    With the job's model known (a preset or file, and its global batch), the planner's predicted tokens/s on the
    pool over that on the recorded accelerator, at the job's GPU count (whole GPUs); otherwise, and when either
    has no plan, the ratio of the two accelerators' dense bf16 peaks from the catalog. No recorded accelerator:
    the recorded duration holds on every pool."""

    def __init__(self, perf: PerfFn) -> None:
        self.perf = perf
        self.reference_pools: dict[tuple[str, int], Pool] = {}
        self.models: dict[tuple[str, int | None], ModelSpec | None] = {}

    def ratio(self, job: Job, pool: Pool) -> tuple[float, str]:
        """(speed of `pool` over the recorded accelerator, the rule that gave it)."""
        from bastion.sim.inputs import make_pool

        recording = job.recorded
        assert recording is not None
        if recording.accelerator is None or recording.accelerator == pool.accelerator:
            return 1.0, "as recorded"
        model = self._model(job)
        if model is not None:
            gpus = max(1, math.ceil(recording.gpus))
            per_node = pool.gpus_per_node
            key = (recording.accelerator, gpus)
            if key not in self.reference_pools:
                self.reference_pools[key] = make_pool("reference", recording.accelerator, -(-gpus // per_node))
            seq_len = job.seq_len or model.seq_len
            here = self.perf(model, pool, gpus, job.global_batch, seq_len) if gpus <= pool.gpus else None
            there = self.perf(model, self.reference_pools[key], gpus, job.global_batch, seq_len)
            if here is not None and there is not None:
                return here.tokens_per_s / there.tokens_per_s, "planner"
        ours = pool.cluster.accelerator.peak_tflops("bf16")
        theirs = load_accelerator(recording.accelerator).peak_tflops("bf16")
        return ours / theirs, "bf16 peak"

    def _model(self, job: Job) -> ModelSpec | None:
        if not job.model or job.global_batch <= 0:
            return None
        key = (job.model, job.seq_len)
        if key not in self.models:
            try:
                self.models[key] = load_model(job.model, seq_len=job.seq_len)
            except BastionError as exc:
                raise type(exc)(f"Job '{job.id}': {exc.problem}", fix=exc.fix, hint=exc.hint) from exc
        return self.models[key]


def _not_allowed(job: Job, pool: Pool) -> str:
    if job.pools and pool.name not in job.pools:
        return "not in the job's allowed pools"
    return f"not a pool of queue '{job.tenant}'"


def _resolve_recorded(job: Job, inventory: Inventory, allowed: set[str], speeds: RecordedSpeeds) -> Resolved:
    recording = job.recorded
    assert recording is not None
    options, excluded = [], {}
    for pool in inventory.pools:
        if pool.name not in allowed:
            excluded[pool.name] = _not_allowed(job, pool)
            continue
        nodes = max(1, math.ceil(recording.gpus / pool.gpus_per_node - 1e-9))
        if nodes > pool.nodes:
            excluded[pool.name] = f"needs {recording.gpus:g} GPUs, the pool has {pool.gpus}"
            continue
        ratio, rule = speeds.ratio(job, pool)
        perf = Perf(gpus=max(1, math.ceil(recording.gpus)), step_time_s=0.0, tokens_per_s=0.0,
                    checkpoint_stall_s=0.0, checkpoint_interval_s=math.inf, mtbf_hours=math.inf,
                    expected_goodput=1.0, plan=f"recorded ×{1 / ratio:.2f} ({rule})")
        options.append(Option(pool.name, recording.gpus, nodes, perf, hours=recording.duration_hours / ratio))
    return Resolved(job, tuple(options), excluded)
