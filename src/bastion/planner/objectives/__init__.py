"""Planner objectives, one file each, and the registry `bastion plan --objective` reads.

A new objective is one file here (an `Objective` subclass with its sort key and its floor; base.py says what the
search asks of it) plus one `OBJECTIVES.register` line below.
"""

from __future__ import annotations

from bastion.planner.objectives.base import Floors, Objective
from bastion.planner.objectives.goodput import Goodput
from bastion.planner.objectives.memory import Memory
from bastion.planner.objectives.mfu import Mfu
from bastion.planner.objectives.throughput import Throughput, TimeMedian
from bastion.planner.objectives.time_p90 import TimeP90
from bastion.registry import Registry

#: name -> objective, in `--help` order
OBJECTIVES: Registry[Objective] = Registry("objective")
OBJECTIVES.register(TimeP90())
OBJECTIVES.register(TimeMedian())
OBJECTIVES.register(Throughput())
OBJECTIVES.register(Mfu())
OBJECTIVES.register(Memory())
OBJECTIVES.register(Goodput())

#: the objective called `name`; an unknown name is a guidance error
get_objective = OBJECTIVES.named

#: what `bastion plan` ranks by unless --objective says otherwise
DEFAULT_OBJECTIVE = TimeP90.name

__all__ = ["DEFAULT_OBJECTIVE", "OBJECTIVES", "Floors", "Objective", "get_objective"]
