"""The cluster as a policy sees it: the queue, each pool's free nodes and running jobs, tenant usage; `start`.

The engine (engine.py) owns the clock and the events and calls `submit` and `finish`; a policy (policies/)
reads the state and calls `start`. Placement ranks the pools a job can use:
  fastest    by predicted finish (earliest free time of enough nodes + the job's estimated run there)
  first-fit  pools with enough free nodes now, in inventory order; then the others by earliest start
Inside a pool, a job wider than a node takes whole idle nodes (a gang); any other takes GPUs, or a share of one,
on one node (PoolState). Estimated run times, not the sampled ones, drive every decision: the scheduler cannot
know when a job will fail, and plans a recorded job with its user's time limit when it has one.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bastion.sim.engine import SimConfig
    from bastion.sim.failures import SampledRun
    from bastion.sim.inputs import Inventory, Job
    from bastion.sim.perf import Option

PLACEMENTS = ("fastest", "first-fit")

#: a job that cannot start on free nodes now never gets a start time closer than this (hours)
_NOT_NOW = 1e-6


@dataclass(eq=False)  # identity: the queue's list operations must not compare every field
class Queued:
    """A schedulable job in the simulation."""

    index: int
    job: Job
    options: tuple[Option, ...]
    #: static queue order: inference services first, then priority, submit time, input order
    key: tuple[int, int, float, int] = (1, 0, 0.0, 0)
    #: an elastic job's sizes per pool, smallest first (`Resolved.sizes`)
    sizes: dict[str, tuple[Option, ...]] = field(default_factory=dict)
    #: pool -> estimated run hours there (the scheduler's figure, cached)
    estimates: dict[str, float] = field(default_factory=dict)
    started: bool = False
    pool: str | None = None
    option: Option | None = None
    start: float | None = None
    end: float | None = None
    estimate_hours: float | None = None
    run: SampledRun | None = None
    #: when the job first started (`start` is its current run's start)
    first_start: float | None = None
    #: fraction of the job's work its checkpoints saved before the current run (interrupted runs)
    done: float = 0.0
    #: earlier, interrupted runs: (pool, start, end, GPUs held, GPUs used)
    segments: list[tuple[str, float, float, float, float]] = field(default_factory=list)
    #: GPU-hours its interrupted runs held without saving (work since the last checkpoint, launch)
    interrupted_lost_gpu_hours: float = 0.0
    #: bumped at each interruption: the engine drops the events of the runs before
    epoch: int = 0
    #: an elastic job's saved work of its earlier runs, in GPU-hours at the sizes it ran (its runs differ in size)
    saved_gpu_hours: float = 0.0


@dataclass(frozen=True)
class Placement:
    option: Option
    start: float
    estimate_hours: float

    @property
    def finish(self) -> float:
        return self.start + self.estimate_hours


#: one GPU's capacity in shares: a fractional job takes whole hundredths of one GPU
SHARES = 100


@dataclass(frozen=True, order=True)
class Demand:
    """What a job takes in a pool: `nodes` whole nodes (a gang wider than one node), else on one node `gpus`
    whole GPUs, else `share` hundredths of one GPU. Ordered so that when one demand does not fit, no larger
    one does."""

    nodes: int = 0
    gpus: int = 0
    share: int = 0

    @staticmethod
    def of(gpus: float, gpus_per_node: int) -> Demand:
        if gpus >= gpus_per_node:
            return Demand(nodes=math.ceil(gpus / gpus_per_node - 1e-9))
        if gpus >= 1:
            return Demand(gpus=math.ceil(gpus - 1e-9))
        return Demand(share=max(1, round(gpus * SHARES)))

    def held(self, gpus_per_node: int) -> float:
        """GPUs the allocation holds (a gang holds its nodes' every GPU)."""
        return self.nodes * gpus_per_node or self.gpus or self.share / SHARES


class PoolState:
    """One pool's nodes: wholly idle ones, partly used ones with each GPU's free shares, and running jobs.

    Gangs (multi-node jobs) take whole idle nodes; a job within one node takes GPUs (or a share of one) on the
    partly used node that fits it most tightly, else on an idle node, so that idle nodes stay whole for gangs."""

    def __init__(self, nodes: int, gpus_per_node: int) -> None:
        self.nodes = nodes
        self.gpus_per_node = gpus_per_node
        self.idle: set[int] = set(range(nodes))
        #: partly used node -> free shares of each of its GPUs
        self.slots: dict[int, list[int]] = {}
        #: partly used nodes by their number of wholly free GPUs (0 .. gpus_per_node - 1)
        self.by_free: list[set[int]] = [set() for _ in range(gpus_per_node)]
        #: partly used nodes with a GPU partly shared
        self.shared: set[int] = set()
        #: gangs: job index -> (nodes, estimated end)
        self.running: dict[int, tuple[int, float]] = {}
        #: gangs: job index -> its nodes
        self.gang_nodes: dict[int, tuple[int, ...]] = {}
        #: jobs within a node: job index -> (node, ((GPU, shares), ...), estimated end)
        self.within: dict[int, tuple[int, tuple[tuple[int, int], ...], float]] = {}
        #: partly used node -> indices of its jobs
        self.on_node: dict[int, set[int]] = {}
        #: partly used node -> the latest estimated end of its jobs (when it becomes idle)
        self.node_end: dict[int, float] = {}
        #: cached (sorted times at which nodes become idle, cumulative nodes by then); None when stale
        self.profile: tuple[list[float], list[int]] | None = None
        #: cached earliest (start, node) per single-node demand; cleared on every change
        self.earliest: dict[Demand, tuple[float, int]] = {}
        #: failed nodes -> when their repair ends
        self.down: dict[int, float] = {}

    @property
    def free(self) -> int:
        """Wholly idle nodes."""
        return len(self.idle)

    def clone(self) -> PoolState:
        """A scratch copy to try releases and placements on (what preemption and resizing weigh): the same
        nodes and jobs, none of the caches; several times cheaper than copy.deepcopy."""
        twin = PoolState.__new__(PoolState)
        twin.nodes, twin.gpus_per_node = self.nodes, self.gpus_per_node
        twin.idle, twin.shared = set(self.idle), set(self.shared)
        twin.slots = {node: list(slots) for node, slots in self.slots.items()}
        twin.by_free = [set(nodes) for nodes in self.by_free]
        twin.running, twin.gang_nodes, twin.within = dict(self.running), dict(self.gang_nodes), dict(self.within)
        twin.on_node = {node: set(jobs) for node, jobs in self.on_node.items()}
        twin.node_end, twin.down = dict(self.node_end), dict(self.down)
        twin.profile, twin.earliest = None, {}
        return twin

    def _changed(self) -> None:
        self.profile = None
        if self.earliest:
            self.earliest = {}

    # ---- fitting now ----------------------------------------------------------------------------------
    @staticmethod
    def _pick(nodes: set[int], avoid: frozenset[int]) -> int | None:
        if not avoid:
            return min(nodes) if nodes else None
        return min(nodes - avoid, default=None)

    def _shared_gpu(self, share: int, avoid: frozenset[int]) -> tuple[int, int] | None:
        """The partly shared GPU that fits `share` most tightly: (node, GPU)."""
        best = None
        for node in self.shared:
            if node in avoid:
                continue
            for gpu, free in enumerate(self.slots[node]):
                if share <= free < SHARES and (best is None or (free, node, gpu) < best):
                    best = (free, node, gpu)
        return None if best is None else (best[1], best[2])

    def _node_for(self, demand: Demand, avoid: frozenset[int]) -> int | None:
        """The node a single-node demand goes on now (its GPUs: the lowest wholly free), or None."""
        for free in range(max(demand.gpus, 1), self.gpus_per_node):
            node = self._pick(self.by_free[free], avoid)
            if node is not None:
                return node
        return self._pick(self.idle, avoid)

    def fits(self, demand: Demand, avoid: frozenset[int] = frozenset()) -> bool:
        """Whether `demand` can start now on nodes outside `avoid`."""
        if demand.nodes:
            return len(self.idle) - (len(self.idle & avoid) if avoid else 0) >= demand.nodes
        if demand.share and self._shared_gpu(demand.share, avoid) is not None:
            return True
        return self._node_for(demand, avoid) is not None

    # ---- starting and ending --------------------------------------------------------------------------
    def _unfile(self, node: int) -> None:
        whole = self.slots[node].count(SHARES)
        if whole < self.gpus_per_node:  # else the node was idle a moment ago: in no bucket
            self.by_free[whole].discard(node)
        self.shared.discard(node)

    def _file(self, node: int) -> None:
        slots = self.slots[node]
        whole = slots.count(SHARES)
        if whole == self.gpus_per_node:
            del self.slots[node], self.on_node[node], self.node_end[node]
            self.idle.add(node)
            return
        self.by_free[whole].add(node)
        if any(0 < free < SHARES for free in slots):
            self.shared.add(node)

    def place(self, index: int, demand: Demand, end: float, avoid: frozenset[int] = frozenset()) -> None:
        """Start job `index` (estimated to end at `end`) on nodes outside `avoid`; it must fit."""
        self._changed()
        if demand.nodes:
            nodes = tuple(sorted(self.idle - avoid)[:demand.nodes])
            assert len(nodes) == demand.nodes
            self.idle.difference_update(nodes)
            self.gang_nodes[index] = nodes
            self.running[index] = (demand.nodes, end)
            return
        spot = self._shared_gpu(demand.share, avoid) if demand.share else None
        if spot is not None:
            node, gpus = spot[0], [spot[1]]
        else:
            node = self._node_for(demand, avoid)
            assert node is not None
            slots = self.slots.get(node, [SHARES] * self.gpus_per_node)
            gpus = [g for g, free in enumerate(slots) if free == SHARES][:max(demand.gpus, 1)]
        taken = demand.share or SHARES
        self._take(index, node, tuple((gpu, taken) for gpu in gpus), end)

    def _take(self, index: int, node: int, taken: tuple[tuple[int, int], ...], end: float) -> None:
        """Job `index` takes `taken` ((GPU, shares), ...) of `node`."""
        if node in self.idle:
            self.idle.remove(node)
            self.slots[node] = [SHARES] * self.gpus_per_node
            self.on_node[node] = set()
        self._unfile(node)
        for gpu, shares in taken:
            self.slots[node][gpu] -= shares
        self.within[index] = (node, taken, end)
        self.on_node[node].add(index)
        self.node_end[node] = max(self.node_end.get(node, end), end)
        self._file(node)

    def restore(self, index: int, source: PoolState) -> None:
        """Job `index`, released from this copy of `source`, takes back exactly what it holds in `source`."""
        self._changed()
        if index in source.running:
            nodes = source.gang_nodes[index]
            self.idle.difference_update(nodes)
            self.gang_nodes[index], self.running[index] = nodes, source.running[index]
            return
        node, taken, end = source.within[index]
        self._take(index, node, taken, end)

    def release(self, index: int) -> None:
        self._changed()
        if index in self.running:
            del self.running[index]
            self.idle.update(self.gang_nodes.pop(index))
            return
        node, taken, _ = self.within.pop(index)
        self._unfile(node)
        for gpu, shares in taken:
            self.slots[node][gpu] += shares
        self.on_node[node].discard(index)
        if self.on_node[node]:
            self.node_end[node] = max(self.within[i][2] for i in self.on_node[node])
        self._file(node)

    # ---- node failures --------------------------------------------------------------------------------
    def jobs_on(self, node: int) -> list[int]:
        """Indices of the jobs running on `node`."""
        if node in self.slots:
            return sorted(self.on_node[node])
        return [index for index, nodes in self.gang_nodes.items() if node in nodes]

    def take_down(self, node: int, until: float) -> None:
        """Fail `node` (idle: its jobs released first) until `until`."""
        self._changed()
        self.idle.remove(node)
        self.down[node] = until

    def bring_up(self, node: int) -> None:
        self._changed()
        del self.down[node]
        self.idle.add(node)

    # ---- the future, as estimated ---------------------------------------------------------------------
    def _node_idle_at(self, node: int, now: float) -> float:
        return max(now, self.node_end[node])

    def idle_profile(self, now: float) -> tuple[list[float], list[int]]:
        """(times, cumulative nodes): by times[i], cumulative[i] more nodes are idle, if jobs end as estimated."""
        if self.profile is None:
            ends = [(max(end, now), nodes) for nodes, end in self.running.values()]
            ends += [(self._node_idle_at(node, now), 1) for node in self.slots]
            ends += [(max(until, now), 1) for until in self.down.values()]
            ends.sort()
            times, cumulative, total = [], [], 0
            for end, nodes in ends:
                total += nodes
                times.append(end)
                cumulative.append(total)
            self.profile = (times, cumulative)
        return self.profile

    def single_node_start(self, demand: Demand, now: float) -> tuple[float, int]:
        """(earliest estimated start, its node) of a single-node demand that does not fit now."""
        found = self.earliest.get(demand)
        if found is not None:
            return found
        best: tuple[float, int] = (math.inf, -1)
        for index, (_, end) in self.running.items():  # a gang's nodes become idle
            best = min(best, (max(end, now), min(self.gang_nodes[index])))
        for node, until in self.down.items():  # a failed node is repaired
            best = min(best, (max(until, now), node))
        need = max(demand.gpus, 1)
        for node, slots in self.slots.items():
            free_at = [now if free == SHARES else 0.0 for free in slots]
            for i in self.on_node[node]:
                _, taken, end = self.within[i]
                for gpu, _shares in taken:
                    free_at[gpu] = max(free_at[gpu], end, now)
            if demand.share:  # a GPU with room for the share now, else one that empties
                times = sorted(now if 0 < free < SHARES and free >= demand.share else t
                               for free, t in zip(slots, free_at, strict=True))
            else:
                times = sorted(free_at)
            best = min(best, (times[need - 1], node))
        self.earliest[demand] = best
        return best

    def gang_reservation(self, nodes: int, start: float, now: float) -> frozenset[int]:
        """The `nodes` nodes a gang starting at `start` takes: those that become idle by then, busy ones first
        (idle ones stay free for jobs that start now)."""
        becoming = [(max(end, now), node) for index, (_, end) in self.running.items() if end <= start
                    for node in self.gang_nodes[index]]
        becoming += [(t, node) for node in self.slots if (t := self._node_idle_at(node, now)) <= start]
        becoming += [(max(until, now), node) for node, until in self.down.items() if until <= start]
        chosen = [node for _, node in sorted(becoming)[:nodes]]
        chosen += sorted(self.idle)[:nodes - len(chosen)]
        return frozenset(chosen)


class ClusterState:
    """What a policy sees and does: the queue, free capacity, estimated ends, tenant usage; `start`."""

    def __init__(self, inventory: Inventory, config: SimConfig, running: dict[int, Queued],
                 on_start: Callable[[Queued, float], None],
                 on_interrupt: Callable[[Queued, float, str], None] | None = None) -> None:
        self.inventory = inventory
        self.config = config
        self.pools = {p.name: PoolState(p.nodes, p.gpus_per_node) for p in inventory.pools}
        self.pool_order = {p.name: i for i, p in enumerate(inventory.pools)}
        #: submitted, unstarted jobs in static queue order (`Queued.key`)
        self.waiting: list[Queued] = []
        #: the same jobs per queue (`queue_of`)
        self.queues: dict[str, list[Queued]] = {}
        #: GPUs each tenant's running jobs hold
        self.running_gpus: dict[str, float] = {t.name: 0 for t in inventory.tenants}
        #: GPUs each pool's running jobs hold
        self.pool_held_gpus: dict[str, float] = {p.name: 0.0 for p in inventory.pools}
        #: started, unfinished jobs by index (the engine keeps it)
        self.running = running
        self._on_start = on_start
        self._on_interrupt = on_interrupt
        self._demands: dict[tuple[str, float], Demand] = {}

    # ---- estimates ---------------------------------------------------------------------------
    def estimate(self, option: Option, job: Job, done: float = 0.0) -> float:
        """The run hours the scheduler plans with: a recorded job's time limit when it has one (real
        schedulers know no more; a requeued job gets its whole limit again), else the predicted run of the
        work left (with the expected failure losses when sampled) plus the launch latency."""
        if job.recorded is not None and job.recorded.time_limit_hours is not None:
            return job.recorded.time_limit_hours
        hours = option.compute_hours(job.tokens)
        if done:
            hours *= 1.0 - done
        hours = hours / option.perf.expected_goodput if self.config.failures else hours
        return hours + self.inventory.launch_hours if self.inventory.launch_hours else hours

    def estimate_of(self, queued: Queued, option: Option) -> float:
        hours = queued.estimates.get(option.pool)
        if hours is None:
            hours = queued.estimates[option.pool] = self.estimate(option, queued.job, queued.done)
        return hours

    def since_checkpoint(self, queued: Queued, now: float) -> tuple[float, float]:
        """(compute hours the running job's checkpoints saved in this run, hours held since the last one): what
        stopping it at `now` keeps and loses. Compute advances evenly over the run after its launch (sampled
        failures included); a checkpoint every `checkpoint_interval_s` of compute (a recorded job without a
        model has none: it loses the whole run)."""
        assert queued.option is not None and queued.start is not None and queued.run is not None
        held = now - queued.start
        run = queued.run
        progress = self.progress(queued, now)
        interval = queued.option.perf.checkpoint_interval_s / 3600.0
        saved = math.floor(progress / interval + 1e-9) * interval if math.isfinite(interval) and interval > 0 else 0.0
        saved = min(saved, run.compute_hours)
        wall_saved = saved * run.wall_hours / run.compute_hours if run.compute_hours > 0 else 0.0
        return saved, held - min(held, wall_saved + (self.inventory.launch_hours if saved else 0.0))

    def progress(self, queued: Queued, now: float) -> float:
        """Compute hours the running job has done in this run by `now` (evenly over the run after its launch)."""
        assert queued.start is not None and queued.run is not None
        run = queued.run
        running = max(0.0, now - queued.start - self.inventory.launch_hours)
        return min(run.compute_hours, running * run.compute_hours / run.wall_hours) if run.wall_hours > 0 else 0.0

    def predicted_loss(self, queued: Queued, now: float) -> float:
        """GPU-hours stopping the running job at `now` would throw away (the victim's cost)."""
        return self.gpus_of(queued) * self.since_checkpoint(queued, now)[1]

    def demand(self, option: Option) -> Demand:
        key = (option.pool, option.gpus)
        found = self._demands.get(key)
        if found is None:
            found = self._demands[key] = Demand.of(option.gpus, self.pools[option.pool].gpus_per_node)
        return found

    def earliest_start(self, pool: str, demand: Demand, now: float) -> float:
        state = self.pools[pool]
        if state.fits(demand):
            return now
        if not demand.nodes:
            return max(state.single_node_start(demand, now)[0], now + _NOT_NOW)
        times, cumulative = state.idle_profile(now)
        i = bisect.bisect_left(cumulative, demand.nodes - state.free)
        return max(times[i], now + _NOT_NOW)

    def reserved_nodes(self, pool: str, demand: Demand, start: float, now: float) -> frozenset[int]:
        """The nodes a job reserved to start at `start` would take (EASY keeps later jobs off them)."""
        state = self.pools[pool]
        if demand.nodes:
            return state.gang_reservation(demand.nodes, start, now)
        return frozenset((state.single_node_start(demand, now)[1],))

    def fits_now(self, option: Option, avoid: frozenset[int] = frozenset()) -> bool:
        return self.pools[option.pool].fits(self.demand(option), avoid)

    def can_start_now(self, queued: Queued) -> bool:
        return any(self.fits_now(o) for o in queued.options)

    def rank(self, queued: Queued, now: float, options: tuple[Option, ...] | None = None) -> list[Placement]:
        """The job's pools (or those of `options`), best first, under the configured placement."""
        places = [Placement(o, self.earliest_start(o.pool, self.demand(o), now), self.estimate_of(queued, o))
                  for o in (queued.options if options is None else options)]
        if self.config.placement == "fastest":
            places.sort(key=lambda p: (p.finish, p.start, self.pool_order[p.option.pool]))
        else:
            places.sort(key=lambda p: (p.start > now, p.start, self.pool_order[p.option.pool]))
        return places

    # ---- queue and tenants -------------------------------------------------------------------
    def gpus_of(self, queued: Queued) -> float:
        """GPUs a running job holds: a gang's whole nodes, else its GPUs (or share of one)."""
        assert queued.option is not None
        return self.gpus_of_option(queued.option)

    def gpus_of_option(self, option: Option) -> float:
        """GPUs a job holds on `option`: a gang's whole nodes, else its GPUs (or share of one)."""
        return self.demand(option).held(self.pools[option.pool].gpus_per_node)

    def queue_of(self, queued: Queued) -> str:
        """The queue a job waits in: its tenant's with per-queue ordering, else the one queue ("")."""
        return queued.job.tenant if self.config.per_queue else ""

    def submit(self, queued: Queued) -> None:
        bisect.insort(self.waiting, queued, key=_queue_key)
        bisect.insort(self.queues.setdefault(self.queue_of(queued), []), queued, key=_queue_key)

    def ordered(self) -> list[Queued]:
        """The queue in its static order: priority, submit time, input order."""
        return list(self.waiting)

    # ---- actions -----------------------------------------------------------------------------
    def start(self, queued: Queued, option: Option, now: float, avoid: frozenset[int] = frozenset()) -> None:
        """Start `queued` now on `option`'s pool, off the nodes in `avoid` (a reservation's)."""
        state = self.pools[option.pool]
        demand = self.demand(option)
        if not state.fits(demand, avoid):
            raise AssertionError(f"policy started {queued.job.id} ({demand}) on {option.pool}, which has no room")
        queued.started, queued.pool, queued.option, queued.start = True, option.pool, option, now
        if queued.first_start is None:
            queued.first_start = now
        queued.estimate_hours = self.estimate_of(queued, option)
        state.place(queued.index, demand, now + queued.estimate_hours, avoid)
        self.running_gpus[queued.job.tenant] += self.gpus_of(queued)
        self.pool_held_gpus[option.pool] += self.gpus_of(queued)
        for line in (self.waiting, self.queues[self.queue_of(queued)]):
            i = bisect.bisect_left(line, queued.key, key=_queue_key)
            assert line[i] is queued
            del line[i]
        self._on_start(queued, now)

    def finish(self, queued: Queued) -> None:
        assert queued.option is not None
        self.pools[queued.option.pool].release(queued.index)
        self.running_gpus[queued.job.tenant] -= self.gpus_of(queued)
        self.pool_held_gpus[queued.option.pool] -= self.gpus_of(queued)

    def preempt(self, queued: Queued, now: float) -> None:
        """Stop the running job at `now`: it loses its work since its last checkpoint and waits again."""
        assert self._on_interrupt is not None and queued.index in self.running
        assert not queued.job.service, "an inference service is never preempted"
        self._on_interrupt(queued, now, "preemption")

    def resize(self, queued: Queued, option: Option, now: float) -> None:
        """Stop the running elastic job at `now`, keeping all its work (it checkpoints to resize), and start it
        again on `option` (another size in its pool), after the launch latency."""
        assert self._on_interrupt is not None and queued.index in self.running
        self._on_interrupt(queued, now, "resize")
        self.start(queued, option, now)

    def requeue(self, queued: Queued) -> None:
        """An interrupted job waits again, in its old place in the queue (its priority and submit time)."""
        queued.started, queued.pool, queued.option, queued.start = False, None, None, None
        queued.end = queued.estimate_hours = queued.run = None
        queued.estimates = {}
        self.submit(queued)


def _queue_key(queued: Queued) -> tuple[int, int, float, int]:
    return queued.key
