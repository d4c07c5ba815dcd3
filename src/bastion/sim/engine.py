"""The discrete-event loop: submit, start, failure and finish events on a heap; no time stepping.

At each event time the loop applies every event due then (finishes first, so their nodes are free), then asks
the policy to start jobs. Jobs are gang-scheduled on whole nodes of one pool and hold them until they finish,
failures included (see failures.py). Times are hours from the start of the simulation.
"""

from __future__ import annotations

import bisect
import heapq
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from bastion.cost.onprem import OnPremAssumptions, gpu_power_kw
from bastion.cost.tco import DEFAULT_RESTART_S
from bastion.errors import ConfigError, did_you_mean
from bastion.sim.failures import SampledRun, job_rng, sample_run
from bastion.sim.inputs import Inventory, Job
from bastion.sim.perf import Option, Resolved
from bastion.sim.policies import PLACEMENTS, POLICIES
from bastion.stats import percentile

#: a job that cannot start on free nodes now never gets a start time closer than this (hours)
_NOT_NOW = 1e-6


@dataclass(frozen=True)
class SimConfig:
    """How to run one simulation."""

    #: fifo, backfill or fair
    policy: str = "backfill"
    #: fastest or first-fit
    placement: str = "fastest"
    #: seed of the failure streams (one per job id)
    seed: int = 0
    #: sample failures and checkpoint stalls; off = every job runs exactly its compute time
    failures: bool = True
    #: hours a restart after a failure costs (reschedule, re-initialise, reload)
    restart_hours: float = DEFAULT_RESTART_S / 3600.0
    #: `fair` forgets past usage with this half-life, hours (Slurm's PriorityDecayHalfLife, 7 days by default);
    #: inf = usage counts forever
    fair_half_life_hours: float = 168.0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"Unknown policy '{self.policy}'.{did_you_mean(self.policy, POLICIES)}",
                              fix=f"use one of: {', '.join(POLICIES)}.")
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"Unknown placement '{self.placement}'.{did_you_mean(self.placement, PLACEMENTS)}",
                              fix=f"use one of: {', '.join(PLACEMENTS)}.")
        if self.restart_hours < 0:
            raise ConfigError(f"restart time must be >= 0, got {self.restart_hours}.")
        if not self.fair_half_life_hours > 0:
            raise ConfigError(f"the fair-share half-life must be > 0 hours, got {self.fair_half_life_hours}.",
                              fix="give hours (Slurm's default is 168, a week), or inf to never forget usage.")


@dataclass(eq=False)  # identity: the queue's list operations must not compare every field
class Queued:
    """A schedulable job in the simulation."""

    index: int
    job: Job
    options: tuple[Option, ...]
    #: static queue order: priority, then submit time, then input order
    key: tuple[int, float, int] = (0, 0.0, 0)
    #: pool -> estimated run hours there (the scheduler's figure, cached)
    estimates: dict[str, float] = field(default_factory=dict)
    started: bool = False
    pool: str | None = None
    option: Option | None = None
    start: float | None = None
    end: float | None = None
    estimate_hours: float | None = None
    run: SampledRun | None = None


@dataclass(frozen=True)
class Placement:
    option: Option
    start: float
    estimate_hours: float

    @property
    def finish(self) -> float:
        return self.start + self.estimate_hours


@dataclass
class _PoolState:
    nodes: int
    gpus_per_node: int
    free: int
    #: job index -> (nodes, estimated end)
    running: dict[int, tuple[int, float]] = field(default_factory=dict)
    #: cached (sorted estimated ends, cumulative nodes freed by then); None when stale
    profile: tuple[list[float], list[int]] | None = None


class ClusterState:
    """What a policy sees and does: the queue, free nodes, estimated ends, tenant usage; `start`."""

    def __init__(self, inventory: Inventory, config: SimConfig, running: dict[int, Queued], on_start) -> None:
        self.inventory = inventory
        self.config = config
        self.pools = {p.name: _PoolState(p.nodes, p.gpus_per_node, p.nodes) for p in inventory.pools}
        self.pool_order = {p.name: i for i, p in enumerate(inventory.pools)}
        #: submitted, unstarted jobs in static queue order (`Queued.key`)
        self.waiting: list[Queued] = []
        self.running_gpus = {t.name: 0 for t in inventory.tenants}
        #: finished jobs' GPU-hours per tenant, decayed to `usage_as_of` (config.fair_half_life_hours)
        self.done_gpu_hours = {t.name: 0.0 for t in inventory.tenants}
        self.usage_as_of = {t.name: 0.0 for t in inventory.tenants}
        #: started, unfinished jobs by index (the engine keeps it)
        self.running = running
        self._on_start = on_start

    # ---- estimates ---------------------------------------------------------------------------
    def estimate(self, option: Option, job: Job) -> float:
        hours = option.compute_hours(job.tokens)
        return hours / option.perf.expected_goodput if self.config.failures else hours

    def estimate_of(self, queued: Queued, option: Option) -> float:
        hours = queued.estimates.get(option.pool)
        if hours is None:
            hours = queued.estimates[option.pool] = self.estimate(option, queued.job)
        return hours

    def _profile(self, pool: str, now: float) -> tuple[list[float], list[int]]:
        state = self.pools[pool]
        if state.profile is None:
            ends = sorted((max(end, now), nodes) for nodes, end in state.running.values())
            times, cumulative, total = [], [], 0
            for end, nodes in ends:
                total += nodes
                times.append(end)
                cumulative.append(total)
            state.profile = (times, cumulative)
        return state.profile

    def earliest_start(self, pool: str, nodes: int, now: float) -> float:
        state = self.pools[pool]
        if state.free >= nodes:
            return now
        times, cumulative = self._profile(pool, now)
        i = bisect.bisect_left(cumulative, nodes - state.free)
        return max(times[i], now + _NOT_NOW)

    def free_at(self, pool: str, when: float, now: float) -> int:
        """Nodes free at `when` if running jobs end as estimated."""
        times, cumulative = self._profile(pool, now)
        i = bisect.bisect_right(times, when)
        return self.pools[pool].free + (cumulative[i - 1] if i else 0)

    def can_start_now(self, queued: Queued) -> bool:
        return any(o.nodes <= self.pools[o.pool].free for o in queued.options)

    def rank(self, queued: Queued, now: float) -> list[Placement]:
        """The job's pools, best first, under the configured placement."""
        places = [Placement(o, self.earliest_start(o.pool, o.nodes, now), self.estimate_of(queued, o))
                  for o in queued.options]
        if self.config.placement == "fastest":
            places.sort(key=lambda p: (p.finish, p.start, self.pool_order[p.option.pool]))
        else:
            places.sort(key=lambda p: (p.start > now, p.start, self.pool_order[p.option.pool]))
        return places

    # ---- queue order and tenants -------------------------------------------------------------
    def gpus_of(self, queued: Queued) -> int:
        """GPUs a running job holds: whole nodes."""
        assert queued.option is not None
        return queued.option.nodes * self.pools[queued.option.pool].gpus_per_node

    def submit(self, queued: Queued) -> None:
        bisect.insort(self.waiting, queued, key=_queue_key)

    def ordered(self, fair: bool = False, now: float = 0.0) -> list[Queued]:
        """The queue: priority, submit time, input order; with `fair`, tenants by usage / quota first."""
        if not fair:
            return list(self.waiting)
        half_life = self.config.fair_half_life_hours
        usage = {t.name: self.done_gpu_hours[t.name] * decay(now - self.usage_as_of[t.name], half_life)
                 for t in self.inventory.tenants}
        for q in self.running.values():
            assert q.start is not None
            usage[q.job.tenant] += decayed_gpu_hours(self.gpus_of(q), q.start, now, now, half_life)
        share = {t.name: usage[t.name] / t.quota_gpus for t in self.inventory.tenants}
        # stable sort of the static order: equal shares keep priority, submit time, input order
        return sorted(self.waiting, key=lambda q: share[q.job.tenant])

    def within_quota(self, queued: Queued, place: Placement) -> bool:
        tenant = self.inventory.tenant(queued.job.tenant)
        gpus = place.option.nodes * self.pools[place.option.pool].gpus_per_node
        return self.running_gpus[tenant.name] + gpus <= tenant.quota_gpus

    # ---- actions -----------------------------------------------------------------------------
    def start(self, queued: Queued, option: Option, now: float) -> None:
        state = self.pools[option.pool]
        if option.nodes > state.free:
            raise AssertionError(f"policy started {queued.job.id} on {option.nodes} nodes of {option.pool}, "
                                 f"{state.free} free")
        state.free -= option.nodes
        queued.started, queued.pool, queued.option, queued.start = True, option.pool, option, now
        queued.estimate_hours = self.estimate_of(queued, option)
        state.running[queued.index] = (option.nodes, now + queued.estimate_hours)
        state.profile = None
        self.running_gpus[queued.job.tenant] += self.gpus_of(queued)
        i = bisect.bisect_left(self.waiting, queued.key, key=_queue_key)
        assert self.waiting[i] is queued
        del self.waiting[i]
        self._on_start(queued, now)

    def finish(self, queued: Queued) -> None:
        assert queued.option is not None and queued.start is not None and queued.end is not None
        state = self.pools[queued.option.pool]
        state.free += queued.option.nodes
        del state.running[queued.index]
        state.profile = None
        gpus = self.gpus_of(queued)
        self.running_gpus[queued.job.tenant] -= gpus
        tenant, half_life = queued.job.tenant, self.config.fair_half_life_hours
        self.done_gpu_hours[tenant] = (self.done_gpu_hours[tenant] * decay(queued.end - self.usage_as_of[tenant],
                                                                             half_life)
                                       + decayed_gpu_hours(gpus, queued.start, queued.end, queued.end, half_life))
        self.usage_as_of[tenant] = queued.end


def decay(hours: float, half_life: float) -> float:
    """What one GPU-hour of usage weighs `hours` later."""
    return 1.0 if math.isinf(half_life) else 2.0 ** (-hours / half_life)


def decayed_gpu_hours(gpus: int, start: float, end: float, now: float, half_life: float) -> float:
    """GPU-hours of `gpus` GPUs busy from `start` to `end`, each hour weighed by its age at `now`."""
    if math.isinf(half_life):
        return gpus * (end - start)
    rate = math.log(2.0) / half_life
    return gpus / rate * (math.exp(-rate * (now - end)) - math.exp(-rate * (now - start)))


def _queue_key(queued: Queued) -> tuple[int, float, int]:
    return queued.key


_FINISH, _FAILURE, _SUBMIT = 0, 1, 2


def _within_quota_only(r: Resolved, inventory: Inventory) -> tuple[Resolved, tuple[Option, ...]]:
    tenant = inventory.tenant(r.job.tenant)
    if tenant.borrow:
        return r, r.options
    kept, excluded = [], dict(r.excluded)
    for o in r.options:
        gpus = o.nodes * inventory.pool(o.pool).gpus_per_node
        if gpus <= tenant.quota_gpus:
            kept.append(o)
        else:
            excluded[o.pool] = (f"needs {gpus} GPUs, above tenant '{tenant.name}''s quota of {tenant.quota_gpus}, "
                                f"and the tenant may not borrow (policy fair)")
    return Resolved(r.job, tuple(kept), excluded), tuple(kept)


def simulate(resolved: list[Resolved], inventory: Inventory, config: SimConfig) -> SimResult:
    """Run the workload under one policy and placement; deterministic for a given seed."""
    policy = POLICIES[config.policy]()
    heap: list[tuple[float, int, int, int]] = []
    counter = 0
    jobs: list[Queued] = []
    unschedulable = []
    for r in resolved:
        options = r.options
        if config.policy == "fair":  # a non-borrowing tenant never runs a job larger than its quota
            r, options = _within_quota_only(r, inventory)
        if not options:
            unschedulable.append(r)
            continue
        queued = Queued(index=len(jobs), job=r.job, options=options,
                        key=(-r.job.priority, r.job.submit_hours, len(jobs)))
        jobs.append(queued)
        heapq.heappush(heap, (r.job.submit_hours, _SUBMIT, counter, queued.index))
        counter += 1
    running: dict[int, Queued] = {}

    def on_start(queued: Queued, now: float) -> None:
        nonlocal counter
        option = queued.option
        assert option is not None
        compute = option.compute_hours(queued.job.tokens)
        if config.failures:
            perf = option.perf
            run = sample_run(compute, perf.checkpoint_interval_s / 3600.0, perf.checkpoint_stall_s / 3600.0,
                             perf.mtbf_hours, config.restart_hours, job_rng(config.seed, queued.job.id))
        else:
            run = SampledRun(compute, compute, 0.0, 0.0, ())
        queued.run, queued.end = run, now + run.wall_hours
        running[queued.index] = queued
        for at in run.failure_at:
            heapq.heappush(heap, (now + at, _FAILURE, counter, queued.index))
            counter += 1
        heapq.heappush(heap, (queued.end, _FINISH, counter, queued.index))
        counter += 1

    state = ClusterState(inventory, config, running, on_start)
    events = {"submit": 0, "start": 0, "failure": 0, "finish": 0}
    while heap:
        now = heap[0][0]
        while heap and heap[0][0] == now:
            _, kind, _, index = heapq.heappop(heap)
            queued = jobs[index]
            if kind == _SUBMIT:
                state.submit(queued)
                events["submit"] += 1
            elif kind == _FINISH:
                state.finish(queued)
                del running[queued.index]
                events["finish"] += 1
            else:
                events["failure"] += 1
        before = len(running)
        policy.schedule(state, now)
        events["start"] += len(running) - before
        if not heap and state.waiting:  # nothing will ever free up: a policy bug, not a user error
            raise AssertionError(f"{len(state.waiting)} jobs left waiting with an idle cluster")
    return summarise(jobs, unschedulable, inventory, config, events)


# ---- results -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class JobResult:
    id: str
    tenant: str
    model: str
    pool: str
    gpus: int
    nodes: int
    plan: str
    submit_h: float
    start_h: float
    end_h: float
    wait_h: float
    run_h: float
    compute_h: float
    estimate_h: float
    failures: int
    lost_h: float


@dataclass(frozen=True)
class TenantResult:
    name: str
    quota_gpus: int
    jobs: int
    gpu_hours: float
    #: quota GPUs × makespan: the GPU-hours the tenant was guaranteed
    quota_gpu_hours: float
    mean_wait_h: float
    p90_wait_h: float


@dataclass(frozen=True)
class PoolResult:
    name: str
    accelerator: str
    gpus: int
    jobs: int
    busy_gpu_hours: float
    utilisation: float


@dataclass(frozen=True)
class ClusterResult:
    jobs: int
    unschedulable: int
    makespan_h: float
    capacity_gpu_hours: float
    busy_gpu_hours: float
    useful_gpu_hours: float
    lost_gpu_hours: float
    utilisation: float
    goodput: float
    failures: int
    mean_wait_h: float
    p90_wait_h: float
    energy_kwh: float


@dataclass(frozen=True)
class SimResult:
    policy: str
    placement: str
    seed: int
    failures_sampled: bool
    cluster: ClusterResult
    pools: list[PoolResult]
    tenants: list[TenantResult]
    jobs: list[JobResult]
    #: jobs no pool can run: id and per-pool reason
    unschedulable: list[dict[str, Any]]
    events: dict[str, int]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def summarise(jobs: list[Queued], unschedulable: list[Resolved], inventory: Inventory, config: SimConfig,
              events: dict[str, int]) -> SimResult:
    pue = OnPremAssumptions().pue
    results = []
    for q in jobs:
        assert q.option is not None and q.run is not None and q.start is not None and q.end is not None
        results.append(JobResult(
            id=q.job.id, tenant=q.job.tenant, model=q.job.model, pool=q.option.pool, gpus=q.option.gpus,
            nodes=q.option.nodes, plan=q.option.perf.plan, submit_h=q.job.submit_hours, start_h=q.start,
            end_h=q.end, wait_h=q.start - q.job.submit_hours, run_h=q.end - q.start,
            compute_h=q.run.compute_hours, estimate_h=q.estimate_hours or 0.0, failures=q.run.failures,
            lost_h=q.run.lost_hours))
    first = min((r.submit_h for r in results), default=0.0)
    makespan = max((r.end_h for r in results), default=0.0) - first
    pools, busy_total, energy = [], 0.0, 0.0
    for pool in inventory.pools:
        mine = [r for r in results if r.pool == pool.name]
        busy = sum(r.nodes * pool.gpus_per_node * r.run_h for r in mine)
        busy_total += busy
        energy += busy * gpu_power_kw(pool.cluster.accelerator) * pue
        pools.append(PoolResult(pool.name, pool.accelerator, pool.gpus, len(mine), busy,
                                busy / (pool.gpus * makespan) if makespan > 0 else 0.0))
    useful = sum(r.gpus * r.compute_h for r in results)
    lost = sum(r.nodes * inventory.pool(r.pool).gpus_per_node * r.lost_h for r in results)
    capacity = inventory.gpus * makespan
    waits = [r.wait_h for r in results]
    tenants = []
    for t in inventory.tenants:
        mine = [r for r in results if r.tenant == t.name]
        tw = [r.wait_h for r in mine]
        tenants.append(TenantResult(
            name=t.name, quota_gpus=t.quota_gpus, jobs=len(mine),
            gpu_hours=sum(r.nodes * inventory.pool(r.pool).gpus_per_node * r.run_h for r in mine),
            quota_gpu_hours=t.quota_gpus * makespan, mean_wait_h=_mean(tw), p90_wait_h=percentile(tw, 90)))
    cluster = ClusterResult(
        jobs=len(results), unschedulable=len(unschedulable), makespan_h=makespan, capacity_gpu_hours=capacity,
        busy_gpu_hours=busy_total, useful_gpu_hours=useful, lost_gpu_hours=lost,
        utilisation=busy_total / capacity if capacity > 0 else 0.0,
        goodput=useful / busy_total if busy_total > 0 else 0.0, failures=sum(r.failures for r in results),
        mean_wait_h=_mean(waits), p90_wait_h=percentile(waits, 90), energy_kwh=energy)
    notes = [f"energy: busy GPU-hours × each accelerator's wall power per GPU (1.34 × TDP, as `bastion cost`) "
             f"× PUE {pue:g}; idle GPUs are not counted"]
    if config.failures:
        notes.append(f"failures: Poisson at each job's MTBF (Llama 3's per-GPU rate × GPUs); Daly checkpoints; "
                     f"restart {config.restart_hours * 60:.0f} min; jobs keep their nodes")
    unsched = [{"id": r.job.id, "tenant": r.job.tenant, "reasons": r.excluded} for r in unschedulable]
    return SimResult(policy=config.policy, placement=config.placement, seed=config.seed,
                     failures_sampled=config.failures, cluster=cluster, pools=pools, tenants=tenants, jobs=results,
                     unschedulable=unsched, events=events, notes=notes)
