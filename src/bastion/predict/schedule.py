"""Pipeline schedules: the idle (bubble) fraction and how many micro-batches' activations a stage holds, from
each schedule's registry entry (specs/schedules.py).

Units: a "layer-microbatch" is the activation memory of one layer for one micro-batch. A stage that holds k
micro-batches of its L/p layers holds k·L/p of them.
"""

from __future__ import annotations

from functools import lru_cache

from bastion.specs.plan import chunk_layer_counts
from bastion.specs.schedules import SCHEDULES, chunks_of_stage


def bubble_note(schedule: str) -> str:
    """How the schedule's bubble is modelled (stated in estimates)."""
    return SCHEDULES[schedule].bubble_note


def bubble_fraction(schedule: str, pp: int, vpp: int, microbatches: int) -> float:
    """Idle time of a pipeline rank as a fraction of its busy time (m micro-batches' forward+backward)."""
    if pp == 1:
        return 0.0
    return SCHEDULES[schedule].bubble(pp, vpp, microbatches)


@lru_cache(maxsize=4096)
def stage_roles(num_layers: int, schedule: str, pp: int, vpp: int, counts: tuple[int, ...] | None = None
                ) -> tuple[tuple[int, bool, bool], ...]:
    """(layers, holds the embedding, holds the LM head) of every pipeline rank, for the chunks' layer `counts`
    (ParallelPlan.chunk_layers: an explicit layout); None: an even split or one where the embedding and the head
    take a layer's slot (specs.plan.chunk_layer_counts)."""
    counts = counts or chunk_layer_counts(num_layers, pp * vpp)
    if counts is None:
        raise ValueError(f"{num_layers} layers cannot be split into {pp} x {vpp} chunks")
    last = pp * vpp - 1
    roles = []
    for stage in range(pp):
        chunks = chunks_of_stage(schedule, pp, vpp, stage)
        roles.append((sum(counts[c] for c in chunks), 0 in chunks, last in chunks))
    return tuple(roles)


@lru_cache(maxsize=4096)
def representative_stages(num_layers: int, schedule: str, pp: int, vpp: int,
                          counts: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The lowest rank of each distinct role (at most four: first, middle, last, or the V's ends).

    Everything the predictor computes for a rank depends on the rank only through its role, except the
    micro-batches in flight, which never grow with the rank index (layer_microbatches_in_flight). So the
    fullest and the slowest rank are always among these, and a deep pipeline costs no more to predict than
    a shallow one."""
    first_of: dict[tuple[int, bool, bool], int] = {}
    for stage, role in enumerate(stage_roles(num_layers, schedule, pp, vpp, counts)):
        first_of.setdefault(role, stage)
    return tuple(sorted(first_of.values()))


def layer_microbatches_in_flight(schedule: str, pp: int, vpp: int, microbatches: int, stage: int,
                                 layers: int) -> float:
    """Peak number of layer-microbatches whose activations pipeline rank `stage`, holding `layers` layers,
    keeps for backward."""
    if pp == 1:
        return float(layers)  # micro-batches run one after another: one in flight
    chunk_microbatches = SCHEDULES[schedule].chunk_microbatches_in_flight(pp, vpp, microbatches, stage)
    return chunk_microbatches * layers / vpp  # each chunk holds layers / vpp of the rank's layers
