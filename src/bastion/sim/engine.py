"""The discrete-event loop: submit, start, failure and finish events on a heap; no time stepping.

At each event time the loop applies every event due then (finishes first, so their nodes are free), then asks
the policy to start jobs. The policy (policies/, by name from POLICIES) sees the cluster through state.py and
hears of each job's admission, start and finish through its hooks (policies/base.py). A job runs in one pool
(gangs on whole nodes, smaller jobs on GPUs of one node: state.py) and holds its GPUs until it finishes,
failures included (see failures.py); a recorded job runs its recorded duration scaled to the pool, cut at its
time limit. Times are hours from the start of the simulation.
"""

from __future__ import annotations

import heapq
from dataclasses import asdict, dataclass
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


_FINISH, _FAILURE, _SUBMIT = 0, 1, 2


def simulate(resolved: list[Resolved], inventory: Inventory, config: SimConfig) -> SimResult:
    """Run the workload under one policy and placement; deterministic for a given seed."""
    policy = POLICIES.named(config.policy)(inventory, config)
    heap: list[tuple[float, int, int, int]] = []
    counter = 0
    jobs: list[Queued] = []
    unschedulable = []
    for r in resolved:
        r = policy.admit(r)
        if not r.options:
            unschedulable.append(r)
            continue
        queued = Queued(index=len(jobs), job=r.job, options=r.options,
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
        recording = queued.job.recorded
        if recording is not None:  # the recording already holds its failures; a time limit ends it
            if recording.time_limit_hours is not None:
                compute = min(compute, recording.time_limit_hours)
            run = SampledRun(compute, compute, 0.0, 0.0, ())
        elif config.failures:
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
        policy.on_start(state, queued, now)

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
                policy.on_finish(state, queued)
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
        recording = q.job.recorded
        per_node = inventory.pool(q.option.pool).gpus_per_node
        state = "completed" if recording is None else recording.final_state
        if (recording is not None and recording.time_limit_hours is not None
                and q.option.compute_hours(0.0) > recording.time_limit_hours):
            state = "timeout"
        results.append(JobResult(
            id=q.job.id, tenant=q.job.tenant, model=q.job.model, pool=q.option.pool, gpus=q.option.gpus,
            nodes=q.option.nodes, plan=q.option.perf.plan, submit_h=q.job.submit_hours, start_h=q.start,
            end_h=q.end, wait_h=q.start - q.job.submit_hours, run_h=q.end - q.start,
            compute_h=q.run.compute_hours, estimate_h=q.estimate_hours or 0.0, failures=q.run.failures,
            lost_h=q.run.lost_hours, held_gpus=Demand.of(q.option.gpus, per_node).held(per_node),
            user="" if recording is None else recording.user, final_state=state,
            recorded_wait_h=None if recording is None or recording.recorded_start_hours is None
            else recording.recorded_start_hours - q.job.submit_hours))
    first = min((r.submit_h for r in results), default=0.0)
    makespan = max((r.end_h for r in results), default=0.0) - first
    pools, busy_total, energy = [], 0.0, 0.0
    for pool in inventory.pools:
        mine = [r for r in results if r.pool == pool.name]
        busy = sum(r.held_gpus * r.run_h for r in mine)
        busy_total += busy
        energy += busy * gpu_power_kw(pool.cluster.accelerator) * pue
        pools.append(PoolResult(pool.name, pool.accelerator, pool.gpus, len(mine), busy,
                                busy / (pool.gpus * makespan) if makespan > 0 else 0.0))
    useful = sum(r.gpus * r.compute_h for r in results)
    lost = sum(r.held_gpus * r.lost_h for r in results)
    capacity = inventory.gpus * makespan
    waits = [r.wait_h for r in results]
    tenants = []
    for t in inventory.tenants:
        mine = [r for r in results if r.tenant == t.name]
        tw = [r.wait_h for r in mine]
        gpu_hours = sum(r.held_gpus * r.run_h for r in mine)
        tenants.append(TenantResult(
            name=t.name, quota_gpus=t.quota_gpus, jobs=len(mine), gpu_hours=gpu_hours,
            quota_gpu_hours=t.quota_gpus * makespan, mean_wait_h=_mean(tw), p90_wait_h=percentile(tw, 90),
            share_of_quota=gpu_hours / (t.quota_gpus * makespan) if t.quota_gpus and makespan > 0 else 0.0))
    last = max((r.submit_h for r in results), default=0.0)
    window = (first, last) if last > first else (first, first + makespan)
    window_capacity = inventory.gpus * (window[1] - window[0])
    held_in = sum(r.held_gpus * overlap_hours(r.start_h, r.end_h, window) for r in results)
    used_in = sum(r.gpus * overlap_hours(r.start_h, r.end_h, window) for r in results)
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
        used_gpu_hours=sum(r.gpus * r.run_h for r in results),
        mean_jct_h=_mean([r.end_h - r.submit_h for r in results]),
        mean_bounded_slowdown=_mean([bounded_slowdown(r.wait_h, r.run_h) for r in results]),
        p50_wait_h=percentile(waits, 50), p99_wait_h=percentile(waits, 99),
        jain_fairness=jain([t.share_of_quota for t in tenants if t.quota_gpus and t.jobs]),
        recorded_mean_wait_h=_mean(recorded) if recorded else None,
        recorded_p50_wait_h=percentile(recorded, 50) if recorded else None,
        recorded_p90_wait_h=percentile(recorded, 90) if recorded else None)
    notes = [f"energy: busy GPU-hours × each accelerator's wall power per GPU (1.34 × TDP, as `bastion cost`) "
             f"× PUE {pue:g}; idle GPUs are not counted"]
    if config.failures and any(q.job.recorded is None for q in jobs):
        notes.append(f"failures: Poisson at each job's MTBF (Llama 3's per-GPU rate × GPUs); Daly checkpoints; "
                     f"restart {config.restart_hours * 60:.0f} min; jobs keep their nodes")
    if any(q.job.recorded is not None for q in jobs):
        notes.append("recorded jobs: the recorded duration scaled by each pool's speed (planner, else bf16 peak), "
                     "cut at the time limit, which is also what the scheduler plans with; no failures sampled")
    unsched = [{"id": r.job.id, "tenant": r.job.tenant, "reasons": r.excluded} for r in unschedulable]
    return SimResult(policy=config.policy, placement=config.placement, seed=config.seed,
                     failures_sampled=config.failures, cluster=cluster, pools=pools, tenants=tenants, jobs=results,
                     unschedulable=unsched, events=events, notes=notes)
