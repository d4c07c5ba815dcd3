"""Which running jobs to stop so that a waiting one fits: the fewest, cheapest victims, shared by the preemptive
policies (priority, kueue, srtf, las).

A victim's cost is the work it would lose: GPU-hours since its last checkpoint (`ClusterState.predicted_loss`;
a recorded job without a model has no checkpoints and loses its whole run). Victims are taken cheapest first
until the job fits on a scratch copy of the pool, then any whose stop turns out not to be needed (dearest first)
are spared, so no job is stopped for nothing. An inference service is never a victim.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from bastion.sim.policies import easy

if TYPE_CHECKING:
    from bastion.sim.perf import Option
    from bastion.sim.policies.base import Policy
    from bastion.sim.state import ClusterState, Demand, Queued


def cheapest_victims(state: ClusterState, option: Option, candidates: Iterable[Queued],
                     now: float) -> list[Queued] | None:
    """The running jobs among `candidates` to stop so that a job can start on `option` now, least predicted loss
    first; None when stopping all of them in that pool would not make room."""
    pool = state.pools[option.pool]
    demand = state.demand(option)
    mine = [q for q in candidates if q.pool == option.pool and not q.job.service]
    if not mine:
        return None
    # a bound before any copy: stopping every candidate cannot make room when the GPUs they hold and the pool's
    # free GPUs fall short of the job's (most waiting jobs of a busy cluster, at every event)
    free = (pool.nodes - len(pool.down)) * pool.gpus_per_node - state.pool_held_gpus[option.pool]
    if free + sum(state.gpus_of(q) for q in mine) < state.gpus_of_option(option) - 1e-6:
        return None
    mine.sort(key=lambda q: (state.predicted_loss(q, now), q.index))
    scratch = pool.clone()
    chosen: list[Queued] = []
    for victim in mine:
        scratch.release(victim.index)
        chosen.append(victim)
        if scratch.fits(demand):
            break
    else:
        return None
    # spare, dearest first, each victim the job fits without: `scratch` has every chosen victim released; a spared
    # one takes back exactly its GPUs (one release and one restore per victim, not a fresh copy each)
    for victim in sorted(chosen, key=lambda q: (-state.predicted_loss(q, now), -q.index)):
        scratch.restore(victim.index, pool)
        if scratch.fits(demand):
            chosen.remove(victim)
        else:
            scratch.release(victim.index)
    return chosen


def preempt_for(state: ClusterState, order: list[Queued], now: float,
                outranks: Callable[[Queued, Queued], bool]) -> bool:
    """Each job of `order` still waiting preempts the cheapest running jobs it `outranks(waiting, running)` in its
    best pool (by `state.rank`) where that makes room, and starts there. Returns whether any job was stopped.
    A job that started at this instant is no victim (it would have run for no time).

    `order` lists the jobs so that each outranks only running jobs that every earlier one outranks (the preemptive
    policies' orders do: by queue priority, attained-service level, estimate). Hence, until a preemption changes
    the cluster, a job after one that outranks nobody outranks nobody either (the pass ends), and a job at least as
    large as one for which stopping everything it outranked in a pool made no room finds none there either (it is
    not weighed again): on a long queue this is the difference between seconds and minutes."""
    preempted = False
    runnable = [q for q in state.running.values() if q.start != now]
    hopeless: dict[str, Demand] = {}  # pool -> the smallest demand that found no victims there since the last stop
    for queued in order:
        if queued.started:
            continue
        if all(o.pool in hopeless and state.demand(o) >= hopeless[o.pool] for o in queued.options):
            continue
        beneath = [q for q in runnable if outranks(queued, q)]
        if not beneath:
            break
        for place in state.rank(queued, now):
            victims = cheapest_victims(state, place.option, beneath, now)
            if victims is not None:
                for victim in victims:
                    state.preempt(victim, now)
                state.start(queued, place.option, now)
                preempted = True
                runnable = [q for q in state.running.values() if q.start != now]
                hopeless = {}
                break
            demand = state.demand(place.option)
            hopeless[place.option.pool] = min(hopeless.get(place.option.pool, demand), demand)
    return preempted


def backfill_then_preempt(policy: Policy, state: ClusterState, now: float,
                          outranks: Callable[[Queued, Queued], bool]) -> None:
    """A preemptive policy's pass: EASY backfill in the policy's order, then `preempt_for`, then backfill again
    into what the victims left beyond their preemptors' needs."""
    easy.schedule(state, now, policy.order(state, now))
    if preempt_for(state, policy.order(state, now), now, outranks):
        easy.schedule(state, now, policy.order(state, now))
