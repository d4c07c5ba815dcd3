"""What a scheduling policy is: a class the engine builds once per simulation and calls at each event time.

Hooks, each with a default, so a policy overrides only what it changes:
  admit(resolved)            once per job, before the run: the pools it may ever use (none left = unschedulable)
  order(state, now)          the queue in the order the policy serves it (default: priority, submit, input order)
  schedule(state, now)       start jobs with `state.start(job, option, now)`: the one hook every policy writes
  on_start(state, job, now)  a job started: the policy's own state (usage, counters) follows it
  on_finish(state, job)      a job ended (`job.end`), its nodes are free again
A job takes its best-ranked pool (`state.rank`); when that pool is not free now the job waits for it (it does
not settle for a worse pool that happens to be free).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from bastion.sim.engine import SimConfig
    from bastion.sim.inputs import Inventory
    from bastion.sim.perf import Resolved
    from bastion.sim.state import ClusterState, Queued

#: start times within this of now count as now (hours)
EPS = 1e-9


class Policy:
    """A scheduling policy. Subclass it in one file under sim/policies/ and register it in policies/__init__.py."""

    #: the name `bastion simulate --policy` takes
    name: ClassVar[str]

    def __init__(self, inventory: Inventory, config: SimConfig) -> None:
        self.inventory = inventory
        self.config = config

    def admit(self, resolved: Resolved) -> Resolved:
        """The job with the pools this policy lets it use; default: every pool that can run it."""
        return resolved

    def order(self, state: ClusterState, now: float) -> list[Queued]:
        """The waiting jobs, first served first; default: the static order (priority, submit time, input)."""
        return state.ordered()

    def schedule(self, state: ClusterState, now: float) -> None:
        """Start what should start at `now`."""
        raise NotImplementedError

    def on_start(self, state: ClusterState, queued: Queued, now: float) -> None:
        """`queued` started at `now` on `queued.option`."""

    def on_finish(self, state: ClusterState, queued: Queued) -> None:
        """`queued` ended at `queued.end`; its nodes are free again."""
