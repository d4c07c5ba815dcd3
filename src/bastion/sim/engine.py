"""The discrete-event loop: submit, start, failure, node failure, repair and finish events on a heap; no time
stepping.

At each event time the loop applies every event due then (finishes and repairs first, so their nodes are free),
then asks the policy to start jobs. The policy (policies/, by name from POLICIES) sees the cluster through
state.py and hears of each job's admission, start and finish through its hooks (policies/base.py). A job runs in
one pool (gangs on whole nodes, smaller jobs on GPUs of one node: state.py) and holds its GPUs until it
finishes, its own sampled failures included (see failures.py); a recorded job runs its recorded duration scaled
to the pool, cut at its time limit, and ends as the trace recorded (failed and cancelled jobs at their recorded
end). Each run starts with the inventory's launch latency.

A run is interrupted when a policy preempts it (`ClusterState.preempt`), resizes it (`ClusterState.resize`: it
keeps all its work) or a node under it fails (the
inventory's [node_failures]: a Poisson process per pool, seeded by the seed and the pool's name; the node is out
for the repair time): the job keeps the work its checkpoints saved (`ClusterState.since_checkpoint`), loses the
rest, and waits again in its old queue place; the policy hears of the stop through on_finish (`end` = the stop).
Times are hours from the start of the simulation.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import asdict, dataclass, field
from typing import Any

from bastion.cost.onprem import OnPremAssumptions, gpu_power_kw
from bastion.cost.tco import DEFAULT_RESTART_S
from bastion.errors import ConfigError, did_you_mean
from bastion.sim.failures import SampledRun, job_rng, sample_run
from bastion.sim.inputs import Inventory
from bastion.sim.metrics import bounded_slowdown, jain, overlap_hours
from bastion.sim.perf import Resolved
from bastion.sim.policies import POLICIES
from bastion.sim.state import PLACEMENTS, ClusterState, Demand, Queued
from bastion.stats import percentile


@dataclass(frozen=True)
class SimConfig:
    """How to run one simulation."""

    #: a name in `bastion.sim.policies.POLICIES` (fifo, backfill, fair, ...)
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
    #: one queue per tenant (a head blocked in one stalls only its own), else one queue for all (as before)
    per_queue: bool = False

    def __post_init__(self) -> None:
        POLICIES.named(self.policy)
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"Unknown placement '{self.placement}'.{did_you_mean(self.placement, PLACEMENTS)}",
                              fix=f"use one of: {', '.join(PLACEMENTS)}.")
        if self.restart_hours < 0:
            raise ConfigError(f"restart time must be >= 0, got {self.restart_hours}.")
        if not self.fair_half_life_hours > 0:
            raise ConfigError(f"the fair-share half-life must be > 0 hours, got {self.fair_half_life_hours}.",
                              fix="give hours (Slurm's default is 168, a week), or inf to never forget usage.")


def node_failure_stream(seed: int, pool: str) -> random.Random:
    """The random stream of one pool's node failures: the same for every policy under one seed."""
    return random.Random(f"{seed}/nodes/{pool}")


#: event kinds, in the order they apply at one instant
_FINISH, _REPAIR, _NODE_FAILURE, _FAILURE, _SUBMIT = 0, 1, 2, 3, 4


def simulate(resolved: list[Resolved], inventory: Inventory, config: SimConfig) -> SimResult:
    """Run the workload under one policy and placement; deterministic for a given seed."""
    policy = POLICIES.named(config.policy)(inventory, config)
    #: (time, kind, counter, job index or pool index, the job's epoch or the node)
    heap: list[tuple[float, int, int, int, int]] = []
    counter = 0
    jobs: list[Queued] = []
    unschedulable = []

    def push(at: float, kind: int, subject: int, detail: int = 0) -> None:
        nonlocal counter
        heapq.heappush(heap, (at, kind, counter, subject, detail))
        counter += 1

    for r in resolved:
        r = policy.admit(r)
        if not r.options:
            unschedulable.append(r)
            continue
        queued = Queued(index=len(jobs), job=r.job, options=r.options, sizes=r.sizes,
                        key=(0 if r.job.service else 1, -r.job.priority, r.job.submit_hours, len(jobs)))
        jobs.append(queued)
        push(r.job.submit_hours, _SUBMIT, queued.index)
    running: dict[int, Queued] = {}
    unfinished = len(jobs)
    launch = inventory.launch_hours

    def on_start(queued: Queued, now: float) -> None:
        option = queued.option
        assert option is not None
        compute = option.compute_hours(queued.job.tokens)
        if queued.done:
            compute *= 1.0 - queued.done
        recording = queued.job.recorded
        if recording is not None:  # the recording already holds its failures; a time limit ends it
            if recording.time_limit_hours is not None:
                compute = min(compute, max(0.0, recording.time_limit_hours - launch))
            run = SampledRun(compute, compute, 0.0, 0.0, ())
        elif config.failures:
            perf = option.perf
            stream = queued.job.id if not queued.segments else f"{queued.job.id}/run{len(queued.segments)}"
            run = sample_run(compute, perf.checkpoint_interval_s / 3600.0, perf.checkpoint_stall_s / 3600.0,
                             perf.mtbf_hours, config.restart_hours, job_rng(config.seed, stream))
        else:
            run = SampledRun(compute, compute, 0.0, 0.0, ())
        queued.run, queued.end = run, now + launch + run.wall_hours if launch else now + run.wall_hours
        running[queued.index] = queued
        events["start"] += 1
        for at in run.failure_at:
            push(now + launch + at, _FAILURE, queued.index, queued.epoch)
        push(queued.end, _FINISH, queued.index, queued.epoch)
        policy.on_start(state, queued, now)

    def on_interrupt(queued: Queued, now: float, cause: str) -> None:
        assert queued.option is not None and queued.start is not None
        if cause == "resize":  # an elastic job checkpoints to resize: it keeps all its work
            saved, lost_hours = state.progress(queued, now), 0.0
        else:
            saved, lost_hours = state.since_checkpoint(queued, now)
        held = state.gpus_of(queued)
        queued.end = now
        state.finish(queued)
        del running[queued.index]
        policy.on_finish(state, queued)
        if now > queued.start or cause != "resize":  # a job resized as it starts had no run to keep
            queued.segments.append((queued.option.pool, queued.start, now, held, queued.option.gpus))
        queued.interrupted_lost_gpu_hours += held * lost_hours
        total = queued.option.compute_hours(queued.job.tokens)
        if total > 0:
            queued.done = min(1.0, queued.done + saved / total)
        queued.saved_gpu_hours += queued.option.gpus * saved
        queued.epoch += 1  # the stopped run's finish and failures will not happen
        state.requeue(queued)
        events[cause] = events.get(cause, 0) + 1

    state = ClusterState(inventory, config, running, on_start, on_interrupt)
    failing = inventory.node_failures if config.failures else None
    node_rngs = [node_failure_stream(config.seed, pool.name) for pool in inventory.pools]

    def next_node_failure(pool_index: int, now: float) -> None:
        assert failing is not None
        pool = inventory.pools[pool_index]
        push(now + node_rngs[pool_index].expovariate(pool.nodes / failing.mtbf_hours(pool)), _NODE_FAILURE,
             pool_index)

    if failing is not None and jobs:
        for pool_index in range(len(inventory.pools)):
            next_node_failure(pool_index, 0.0)
    events = {"submit": 0, "start": 0, "failure": 0, "finish": 0}
    if failing is not None:
        events |= {"node_failure": 0, "repair": 0}
    while heap:
        now = heap[0][0]
        while heap and heap[0][0] == now:
            _, kind, _, subject, detail = heapq.heappop(heap)
            if kind in (_NODE_FAILURE, _REPAIR):
                assert failing is not None
                pool = inventory.pools[subject]
                nodes = state.pools[pool.name]
                if kind == _REPAIR:
                    nodes.bring_up(detail)
                    events["repair"] += 1
                    continue
                if not unfinished:
                    continue  # every job has ended: the cluster's later failures change nothing
                next_node_failure(subject, now)
                node = node_rngs[subject].randrange(pool.nodes)
                if node in nodes.down:
                    continue  # a failed node fails no further
                for index in nodes.jobs_on(node):
                    on_interrupt(jobs[index], now, "node_failure_stop")
                nodes.take_down(node, now + failing.repair_hours)
                push(now + failing.repair_hours, _REPAIR, subject, node)
                events["node_failure"] += 1
                continue
            queued = jobs[subject]
            if kind != _SUBMIT and detail != queued.epoch:
                continue  # an event of a run that was interrupted
            if kind == _SUBMIT:
                state.submit(queued)
                events["submit"] += 1
            elif kind == _FINISH:
                state.finish(queued)
                del running[queued.index]
                policy.on_finish(state, queued)
                events["finish"] += 1
                unfinished -= 1
            else:
                events["failure"] += 1
        policy.schedule(state, now)
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
    gpus: float
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
    #: GPUs the allocation held (a gang: its nodes' every GPU)
    held_gpus: float = 0.0
    user: str = ""
    #: completed; a recorded job's recorded failed / cancelled, or timeout when its time limit cut it
    final_state: str = "completed"
    #: the wait the trace recorded (None: not recorded)
    recorded_wait_h: float | None = None
    #: runs stopped by preemption, a node failure or a resize (then start_h is the first run's start, run_h the hours
    #: of every run, wait_h every hour not running between submit and end, and `runs` lists them)
    interruptions: int = 0
    #: GPU-hours the interrupted runs held without saving (work since their last checkpoint, launch)
    interrupted_lost_gpu_hours: float = 0.0
    #: every run when interrupted: (pool, start, end, GPUs held, GPUs used); empty otherwise (one run)
    runs: tuple[tuple[str, float, float, float, float], ...] = ()
    #: training, fine-tuning or inference (a service)
    kind: str = "training"
    #: an inference service with a wait objective: whether its wait met it (None: no objective)
    slo_met: bool | None = None

    def held_runs(self) -> tuple[tuple[str, float, float, float, float], ...]:
        """(pool, start, end, GPUs held, GPUs used) of each run."""
        return self.runs or ((self.pool, self.start_h, self.end_h, self.held_gpus, self.gpus),)


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
    #: GPU-hours used over quota GPU-hours (0 without a quota)
    share_of_quota: float = 0.0


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
    #: hours from the first to the last submission (metrics.py: the in-window figures)
    window_h: float = 0.0
    #: GPU-hours held / used inside the window over the cluster's GPU-hours then
    window_utilisation: float = 0.0
    window_used_utilisation: float = 0.0
    #: GPU-hours the jobs asked for (≤ busy_gpu_hours, which counts what allocation held)
    used_gpu_hours: float = 0.0
    mean_jct_h: float = 0.0
    mean_bounded_slowdown: float = 0.0
    p50_wait_h: float = 0.0
    p99_wait_h: float = 0.0
    jain_fairness: float = 1.0
    #: the trace's own waits, for jobs that recorded one (None: none did)
    recorded_mean_wait_h: float | None = None
    recorded_p50_wait_h: float | None = None
    recorded_p90_wait_h: float | None = None
    #: runs stopped by preemption or node failures, and the GPU-hours they lost (part of lost_gpu_hours)
    interruptions: int = 0
    interrupted_lost_gpu_hours: float = 0.0
    #: inference services, counted apart: the job figures above (waits, JCT, slowdown) leave them out
    services: ServiceResult | None = None
    #: per kind of job (training, fine-tuning) when the workload mixes kinds: jobs, mean and p90 wait, mean JCT
    kinds: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class ServiceResult:
    """The inference services of a run: steady GPU reservations, first in the queue, never preempted."""

    services: int
    gpu_hours: float
    mean_wait_h: float
    max_wait_h: float
    #: services with a wait objective, and those that met it
    with_slo: int
    slo_met: int


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


def _services(served: list[JobResult]) -> ServiceResult:
    waits = [r.wait_h for r in served]
    objectives = [r.slo_met for r in served if r.slo_met is not None]
    return ServiceResult(services=len(served), gpu_hours=sum(held * (end - start) for r in served
                                                             for _, start, end, held, _ in r.held_runs()),
                         mean_wait_h=_mean(waits), max_wait_h=max(waits), with_slo=len(objectives),
                         slo_met=sum(objectives))


def _kinds(trained: list[JobResult]) -> dict[str, dict[str, float]]:
    """Figures per kind of job, when there is more than one kind."""
    kinds = sorted({r.kind for r in trained})
    if len(kinds) < 2:
        return {}
    figures = {}
    for kind in kinds:
        waits = [r.wait_h for r in trained if r.kind == kind]
        figures[kind] = {"jobs": len(waits), "mean_wait_h": _mean(waits), "p90_wait_h": percentile(waits, 90),
                         "mean_jct_h": _mean([r.end_h - r.submit_h for r in trained if r.kind == kind])}
    return figures


def summarise(jobs: list[Queued], unschedulable: list[Resolved], inventory: Inventory, config: SimConfig,
              events: dict[str, int]) -> SimResult:
    pue = OnPremAssumptions().pue
    results = []
    for q in jobs:
        assert q.option is not None and q.run is not None and q.start is not None and q.end is not None
        recording = q.job.recorded
        per_node = inventory.pool(q.option.pool).gpus_per_node
        state = "completed" if recording is None else recording.final_state
        if (recording is not None and recording.time_limit_hours is not None
                and q.option.compute_hours(0.0) > recording.time_limit_hours):
            state = "timeout"
        held = Demand.of(q.option.gpus, per_node).held(per_node)
        runs = (*q.segments, (q.option.pool, q.start, q.end, held, q.option.gpus)) if q.segments else ()
        first = q.start if q.first_start is None else q.first_start
        compute = q.run.compute_hours
        if q.sizes:  # an elastic job's runs differ in size: its saved work in GPU-hours, over the last run's GPUs
            compute += q.saved_gpu_hours / q.option.gpus
        elif q.done:  # the interrupted runs' saved work counts as done on the last run's pool
            compute += q.done * q.option.compute_hours(q.job.tokens)
        run_h = sum(end - start for _, start, end, _, _ in runs) if runs else q.end - q.start
        results.append(JobResult(
            id=q.job.id, tenant=q.job.tenant, model=q.job.model, pool=q.option.pool, gpus=q.option.gpus,
            nodes=q.option.nodes, plan=q.option.perf.plan, submit_h=q.job.submit_hours, start_h=first,
            end_h=q.end, wait_h=q.end - q.job.submit_hours - run_h if runs else first - q.job.submit_hours,
            run_h=run_h,
            compute_h=compute, estimate_h=q.estimate_hours or 0.0, failures=q.run.failures,
            lost_h=q.run.lost_hours, held_gpus=held,
            user="" if recording is None else recording.user, final_state=state,
            recorded_wait_h=None if recording is None or recording.recorded_start_hours is None
            else recording.recorded_start_hours - q.job.submit_hours,
            interruptions=len(q.segments), interrupted_lost_gpu_hours=q.interrupted_lost_gpu_hours, runs=runs,
            kind=q.job.kind, slo_met=None if q.job.slo_wait_hours is None
            else first - q.job.submit_hours <= q.job.slo_wait_hours + 1e-9))
    first = min((r.submit_h for r in results), default=0.0)
    makespan = max((r.end_h for r in results), default=0.0) - first
    pools, busy_total, energy = [], 0.0, 0.0
    for pool in inventory.pools:
        mine = [r for r in results if r.pool == pool.name]
        busy = sum(held * (end - start) for r in results for name, start, end, held, _ in r.held_runs()
                   if name == pool.name)
        busy_total += busy
        energy += busy * gpu_power_kw(pool.cluster.accelerator) * pue
        pools.append(PoolResult(pool.name, pool.accelerator, pool.gpus, len(mine), busy,
                                busy / (pool.gpus * makespan) if makespan > 0 else 0.0))
    useful = sum(r.gpus * r.compute_h for r in results)
    lost = sum(r.held_gpus * r.lost_h + r.interrupted_lost_gpu_hours for r in results)
    capacity = inventory.gpus * makespan
    served = [r for r in results if r.kind == "inference"]
    trained = [r for r in results if r.kind != "inference"] if served else results
    waits = [r.wait_h for r in trained]
    tenants = []
    for t in inventory.tenants:
        mine = [r for r in results if r.tenant == t.name]
        tw = [r.wait_h for r in mine]
        gpu_hours = sum(held * (end - start) for r in mine for _, start, end, held, _ in r.held_runs())
        tenants.append(TenantResult(
            name=t.name, quota_gpus=t.quota_gpus, jobs=len(mine), gpu_hours=gpu_hours,
            quota_gpu_hours=t.quota_gpus * makespan, mean_wait_h=_mean(tw), p90_wait_h=percentile(tw, 90),
            share_of_quota=gpu_hours / (t.quota_gpus * makespan) if t.quota_gpus and makespan > 0 else 0.0))
    last = max((r.submit_h for r in results), default=0.0)
    window = (first, last) if last > first else (first, first + makespan)
    window_capacity = inventory.gpus * (window[1] - window[0])
    held_in = sum(held * overlap_hours(start, end, window) for r in results
                  for _, start, end, held, _ in r.held_runs())
    used_in = sum(used * overlap_hours(start, end, window) for r in results
                  for _, start, end, _, used in r.held_runs())
    recorded = [r.recorded_wait_h for r in results if r.recorded_wait_h is not None]
    cluster = ClusterResult(
        jobs=len(results), unschedulable=len(unschedulable), makespan_h=makespan, capacity_gpu_hours=capacity,
        busy_gpu_hours=busy_total, useful_gpu_hours=useful, lost_gpu_hours=lost,
        utilisation=busy_total / capacity if capacity > 0 else 0.0,
        goodput=useful / busy_total if busy_total > 0 else 0.0, failures=sum(r.failures for r in results),
        mean_wait_h=_mean(waits), p90_wait_h=percentile(waits, 90), energy_kwh=energy,
        window_h=window[1] - window[0],
        window_utilisation=held_in / window_capacity if window_capacity > 0 else 0.0,
        window_used_utilisation=used_in / window_capacity if window_capacity > 0 else 0.0,
        used_gpu_hours=sum(used * (end - start) for r in results for _, start, end, _, used in r.held_runs()),
        mean_jct_h=_mean([r.end_h - r.submit_h for r in trained]),
        mean_bounded_slowdown=_mean([bounded_slowdown(r.wait_h, r.run_h) for r in trained]),
        p50_wait_h=percentile(waits, 50), p99_wait_h=percentile(waits, 99),
        jain_fairness=jain([t.share_of_quota for t in tenants if t.quota_gpus and t.jobs]),
        recorded_mean_wait_h=_mean(recorded) if recorded else None,
        recorded_p50_wait_h=percentile(recorded, 50) if recorded else None,
        recorded_p90_wait_h=percentile(recorded, 90) if recorded else None,
        interruptions=sum(r.interruptions for r in results),
        interrupted_lost_gpu_hours=sum(r.interrupted_lost_gpu_hours for r in results),
        services=_services(served) if served else None, kinds=_kinds(trained))
    notes = [f"energy: busy GPU-hours × each accelerator's wall power per GPU (1.34 × TDP, as `bastion cost`) "
             f"× PUE {pue:g}; idle GPUs are not counted"]
    if config.failures and any(q.job.recorded is None for q in jobs):
        notes.append(f"failures: Poisson at each job's MTBF (Llama 3's per-GPU rate × GPUs); Daly checkpoints; "
                     f"restart {config.restart_hours * 60:.0f} min; jobs keep their nodes")
    if any(q.job.recorded is not None for q in jobs):
        notes.append("recorded jobs: the recorded duration scaled by each pool's speed (planner, else bf16 peak), "
                     "cut at the time limit, which is also what the scheduler plans with; no job failures sampled")
    if config.failures and inventory.node_failures is not None:
        failing = inventory.node_failures
        mtbf = ", ".join(f"{p.name} {failing.mtbf_hours(p):,.0f} h" for p in inventory.pools)
        notes.append(f"node failures: each node's MTBF {mtbf}, repair {failing.repair_hours:g} h; a failed node's "
                     f"jobs lose their work since their last checkpoint and wait again")
    if inventory.launch_hours:
        notes.append(f"launch latency: {inventory.launch_hours * 3600:g} s at the start of every run")
    unsched = [{"id": r.job.id, "tenant": r.job.tenant, "reasons": r.excluded} for r in unschedulable]
    return SimResult(policy=config.policy, placement=config.placement, seed=config.seed,
                     failures_sampled=config.failures, cluster=cluster, pools=pools, tenants=tenants, jobs=results,
                     unschedulable=unsched, events=events, notes=notes)
