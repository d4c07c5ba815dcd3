"""What "best" means: each objective is a sort key over evaluated plans (smaller sorts first).

Every key ends with the plan's own fields so that ties are broken the same way on every run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bastion.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from bastion.planner.search import RankedPlan


@dataclass(frozen=True)
class Objective:
    name: str
    #: one line for `--help` and the report header
    description: str
    #: sort key of an evaluated plan; the smallest key wins
    key: Callable[[RankedPlan], tuple]
    #: the figure the key sorts by first, as a number where smaller is better (what the search bounds)
    value: Callable[[RankedPlan], float]
    #: census reason for plans a bound proves cannot enter the answer
    bounded_reason: str


def _throughput(p: RankedPlan) -> tuple:
    # fewer devices, then less memory, break exact ties in tokens/s
    return (-p.tokens_per_s, p.num_gpus, p.memory_bytes, p.order)


def _mfu(p: RankedPlan) -> tuple:
    return (-p.mfu, -p.tokens_per_s, p.memory_bytes, p.order)


def _memory(p: RankedPlan) -> tuple:
    return (p.memory_bytes, -p.tokens_per_s, p.order)


OBJECTIVES: dict[str, Objective] = {
    o.name: o for o in (
        # every plan of a request moves the same tokens per step, so tokens/s ranks like the step time
        Objective("throughput", "most tokens per second (fastest optimizer step for a fixed GPU count)",
                  _throughput, lambda p: p.step_time_s, "slower than the plans shown (step-time bound)"),
        Objective("mfu", "highest model FLOPs utilisation (most work per GPU; differs from throughput "
                         "when several GPU counts are searched)", _mfu, lambda p: -p.mfu,
                  "lower MFU than the plans shown (step-time bound)"),
        Objective("memory", "least memory per device among the plans that fit (most headroom)", _memory,
                  lambda p: p.memory_bytes, "more memory than the plans shown (model-state bound)"),
    )
}


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ConfigError(f"Unknown objective '{name}'.{did_you_mean(name, OBJECTIVES)}",
                          fix=f"use one of: {', '.join(OBJECTIVES)}.")
    return OBJECTIVES[name]
