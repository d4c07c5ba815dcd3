"""`elastic`: elastic jobs resized by predicted marginal goodput, after Pollux (Qiao et al., OSDI'21) and Sia
(Jayaram Subramanya et al., SOSP'23).

An elastic job (workload `min_gpus` / `max_gpus`) has a throughput curve per pool: the planner's predicted speed
at each size from min_gpus doubling up to max_gpus (perf.py `elastic_sizes`). At each event:
  1. waiting jobs start, in the static order, at their smallest size on their best-ranked pool free now; one
     that does not fit does not hold back the jobs behind it;
  2. a job that still waits shrinks running elastic jobs of its best pool one size at a time, the step that loses
     the least predicted throughput per GPU freed first, when that makes room for it (else nothing shrinks);
  3. when nothing waits, running elastic jobs grow one size at a time, the step of the largest predicted
     throughput gained per GPU added first, while the free GPUs hold the step and the step's gain per GPU is at
     least `GROW_EFFICIENCY` of the job's throughput per GPU at its current size (Pollux's goodput test).
A resize stops the job keeping all its work (it checkpoints to resize) and starts it again at the new size after
the launch latency (a stop and restart, as Pollux's checkpoint-restart resizing). Jobs without a size range run
at their one size, never resized. Resizing is reckoned at events only; Pollux's batch-size co-adaptation and
Sia's heterogeneity are left out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bastion.sim.policies.base import EPS, Policy

if TYPE_CHECKING:
    from bastion.sim.perf import Option
    from bastion.sim.state import ClusterState, Queued

#: a job grows only when the step adds at least this fraction of its current throughput per GPU, per GPU added
GROW_EFFICIENCY = 0.5


def throughput(queued: Queued, option: Option) -> float:
    """The job's predicted work per hour on `option` (whole job = 1)."""
    hours = option.compute_hours(queued.job.tokens)
    return 1.0 / hours if hours > 0 else float("inf")


def _size_index(queued: Queued) -> int:
    assert queued.option is not None
    return queued.sizes[queued.option.pool].index(queued.option)


class Elastic(Policy):
    """Elastic jobs grown and shrunk by the planner-predicted throughput curve (Pollux/Sia style)."""

    name = "elastic"

    def schedule(self, state: ClusterState, now: float) -> None:
        blocked = []
        for queued in state.ordered():
            place = next((p for p in state.rank(queued, now) if p.start <= now + EPS), None)
            if place is not None:
                state.start(queued, place.option, now)
            else:
                blocked.append(queued)
        for queued in blocked:
            self._shrink_for(state, queued, now)
        if not state.waiting:
            self._grow(state, now)

    def _shrink_for(self, state: ClusterState, queued: Queued, now: float) -> None:
        """Start `queued` in its best pool by shrinking running elastic jobs there, when that makes room."""
        for place in state.rank(queued, now):
            option = place.option
            if state.fits_now(option):  # an earlier job's shrinking made room
                state.start(queued, option, now)
                return
            scratch = state.pools[option.pool].clone()
            target: dict[int, int] = {}  # job index -> its size index after shrinking
            elastic = [q for q in state.running.values()
                       if q.pool == option.pool and q.sizes and _size_index(q) > 0]
            while not scratch.fits(state.demand(option)):
                steps = []
                for q in elastic:
                    at = target.get(q.index, _size_index(q))
                    if at == 0:
                        continue
                    curve = q.sizes[option.pool]
                    lost = (throughput(q, curve[at]) - throughput(q, curve[at - 1])) / (
                        curve[at].gpus - curve[at - 1].gpus)
                    steps.append((lost, q.index, q, at - 1))
                if not steps:
                    break
                _, _, victim, smaller = min(steps, key=lambda step: step[:2])
                scratch.release(victim.index)
                scratch.place(victim.index, state.demand(victim.sizes[option.pool][smaller]), now)
                target[victim.index] = smaller
            else:
                for index, at in sorted(target.items()):
                    shrunk = state.running[index]
                    state.resize(shrunk, shrunk.sizes[option.pool][at], now)
                if state.fits_now(option):
                    state.start(queued, option, now)
                return

    def _grow(self, state: ClusterState, now: float) -> None:
        while True:
            best = None
            for q in state.running.values():
                if not q.sizes:
                    continue
                assert q.option is not None
                curve = q.sizes[q.option.pool]
                at = _size_index(q)
                if at + 1 >= len(curve):
                    continue
                bigger = curve[at + 1]
                gain = (throughput(q, bigger) - throughput(q, q.option)) / (bigger.gpus - q.option.gpus)
                if gain < GROW_EFFICIENCY * throughput(q, q.option) / q.option.gpus:
                    continue
                scratch = state.pools[q.option.pool].clone()
                scratch.release(q.index)
                if scratch.fits(state.demand(bigger)) and (best is None or (-gain, q.index) < best[:2]):
                    best = (-gain, q.index, q, bigger)
            if best is None:
                return
            state.resize(best[2], best[3], now)
