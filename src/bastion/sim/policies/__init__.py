"""Scheduling policies, one file each, and the registry `bastion simulate --policy` reads.

A new policy is one file here (a `Policy` subclass; base.py lists its hooks) plus one `POLICIES.register`
line below (sjf.py was added that way); fifo.py is the smallest example, fair.py one with admission, its own
order and its own state, priority.py one that preempts (preemption.py picks the victims).
"""

from __future__ import annotations

from bastion.registry import Registry
from bastion.sim.policies.backfill import Backfill
from bastion.sim.policies.base import Policy
from bastion.sim.policies.elastic import Elastic
from bastion.sim.policies.fair import Fair
from bastion.sim.policies.fifo import Fifo
from bastion.sim.policies.gavel import Gavel
from bastion.sim.policies.kueue import Kueue
from bastion.sim.policies.las import LeastAttained
from bastion.sim.policies.multifactor import Multifactor
from bastion.sim.policies.priority import Priority
from bastion.sim.policies.qssf import QuasiShortestService
from bastion.sim.policies.sjf import ShortestFirst
from bastion.sim.policies.srtf import ShortestRemaining

#: name -> policy class, in `--help` order
POLICIES: Registry[type[Policy]] = Registry("policy")
POLICIES.register(Fifo)
POLICIES.register(Backfill)
POLICIES.register(Fair)
POLICIES.register(ShortestFirst)
POLICIES.register(Priority)
POLICIES.register(Kueue)
POLICIES.register(Multifactor)
POLICIES.register(QuasiShortestService)
POLICIES.register(ShortestRemaining)
POLICIES.register(LeastAttained)
POLICIES.register(Gavel)
POLICIES.register(Elastic)

__all__ = ["POLICIES", "Policy"]
