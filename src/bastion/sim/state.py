"""The cluster as a policy sees it: the queue, each pool's free nodes and running jobs, tenant usage; `start`.

The engine (engine.py) owns the clock and the events and calls `submit` and `finish`; a policy (policies/)
reads the state and calls `start`. Placement ranks the pools a job can use:
  fastest    by predicted finish (earliest free time of enough nodes + the job's estimated run there)
  first-fit  pools with enough free nodes now, in inventory order; then the others by earliest start
Estimated run times, not the sampled ones, drive every decision: the scheduler cannot know when a job will fail.
"""

from __future__ import annotations

import bisect
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
class PoolState:
    nodes: int
    gpus_per_node: int
    free: int
    #: job index -> (nodes, estimated end)
    running: dict[int, tuple[int, float]] = field(default_factory=dict)
    #: cached (sorted estimated ends, cumulative nodes freed by then); None when stale
    profile: tuple[list[float], list[int]] | None = None


class ClusterState:
    """What a policy sees and does: the queue, free nodes, estimated ends, tenant usage; `start`."""

    def __init__(self, inventory: Inventory, config: SimConfig, running: dict[int, Queued],
                 on_start: Callable[[Queued, float], None]) -> None:
        self.inventory = inventory
        self.config = config
        self.pools = {p.name: PoolState(p.nodes, p.gpus_per_node, p.nodes) for p in inventory.pools}
        self.pool_order = {p.name: i for i, p in enumerate(inventory.pools)}
        #: submitted, unstarted jobs in static queue order (`Queued.key`)
        self.waiting: list[Queued] = []
        #: GPUs each tenant's running jobs hold
        self.running_gpus = {t.name: 0 for t in inventory.tenants}
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

    # ---- queue and tenants -------------------------------------------------------------------
    def gpus_of(self, queued: Queued) -> int:
        """GPUs a running job holds: whole nodes."""
        assert queued.option is not None
        return queued.option.nodes * self.pools[queued.option.pool].gpus_per_node

    def submit(self, queued: Queued) -> None:
        bisect.insort(self.waiting, queued, key=_queue_key)

    def ordered(self) -> list[Queued]:
        """The queue in its static order: priority, submit time, input order."""
        return list(self.waiting)

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
        assert queued.option is not None
        state = self.pools[queued.option.pool]
        state.free += queued.option.nodes
        del state.running[queued.index]
        state.profile = None
        self.running_gpus[queued.job.tenant] -= self.gpus_of(queued)


def _queue_key(queued: Queued) -> tuple[int, float, int]:
    return queued.key
