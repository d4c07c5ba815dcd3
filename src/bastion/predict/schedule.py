"""Pipeline schedules: the idle (bubble) fraction and how many micro-batches' activations a stage holds.

Units: a "layer-microbatch" is the activation memory of one layer for one micro-batch. A stage that holds k
micro-batches of its L/p layers holds k·L/p of them.
"""

from __future__ import annotations

from functools import lru_cache

from bastion.specs.plan import chunk_layer_counts

#: how each schedule's bubble is modelled (stated in estimates)
BUBBLE_NOTES = {
    "gpipe": "GPipe bubble (p-1)/m",
    "1f1b": "1F1B bubble (p-1)/m (Narayanan et al. 2021)",
    "interleaved-1f1b": "interleaved 1F1B bubble (p-1)/(v*m) (Narayanan et al. 2021)",
    "zero-bubble": "ZB-H1 bubble (p-1)/(3m): F, B and W taken as equal thirds (Qi et al. 2024)",
    "zbv": "ZB-V bubble taken as (p-1)/(6m): half of ZB-H1, near zero as published (Qi et al. 2024)",
    "dualpipev": "DualPipeV bubble taken as (p-1)/(6m), like ZB-V (DeepSeek-V3 report)",
}


def bubble_fraction(schedule: str, pp: int, vpp: int, microbatches: int) -> float:
    """Idle time of a pipeline rank as a fraction of its busy time (m micro-batches' forward+backward)."""
    if pp == 1:
        return 0.0
    m = microbatches
    if schedule == "interleaved-1f1b":
        return (pp - 1) / (vpp * m)
    if schedule == "zero-bubble":
        return (pp - 1) / (3 * m)
    if schedule in ("zbv", "dualpipev"):
        return (pp - 1) / (6 * m)
    return (pp - 1) / m  # gpipe, 1f1b


def chunks_of_stage(schedule: str, pp: int, vpp: int, stage: int) -> list[int]:
    """Which model chunks (0 = first layers) pipeline rank `stage` holds; there are pp·vpp chunks."""
    if schedule in ("zbv", "dualpipev") and pp > 1:
        return [stage, 2 * pp - 1 - stage]  # the V: rank 0 holds the first and the last chunk
    return [stage + k * pp for k in range(vpp)]


@lru_cache(maxsize=4096)
def stage_roles(num_layers: int, schedule: str, pp: int, vpp: int) -> tuple[tuple[int, bool, bool], ...]:
    """(layers, holds the embedding, holds the LM head) of every pipeline rank, for an even split or one where
    the embedding and the head take a layer's slot (specs.plan.chunk_layer_counts)."""
    counts = chunk_layer_counts(num_layers, pp * vpp)
    if counts is None:
        raise ValueError(f"{num_layers} layers cannot be split into {pp} x {vpp} chunks")
    last = pp * vpp - 1
    roles = []
    for stage in range(pp):
        chunks = chunks_of_stage(schedule, pp, vpp, stage)
        roles.append((sum(counts[c] for c in chunks), 0 in chunks, last in chunks))
    return tuple(roles)


@lru_cache(maxsize=4096)
def representative_stages(num_layers: int, schedule: str, pp: int, vpp: int) -> tuple[int, ...]:
    """The lowest rank of each distinct role (at most four: first, middle, last, or the V's ends).

    Everything the predictor computes for a rank depends on the rank only through its role, except the
    micro-batches in flight, which never grow with the rank index (layer_microbatches_in_flight). So the
    fullest and the slowest rank are always among these, and a deep pipeline costs no more to predict than
    a shallow one."""
    first_of: dict[tuple[int, bool, bool], int] = {}
    for stage, role in enumerate(stage_roles(num_layers, schedule, pp, vpp)):
        first_of.setdefault(role, stage)
    return tuple(sorted(first_of.values()))


def layer_microbatches_in_flight(schedule: str, pp: int, vpp: int, microbatches: int, stage: int,
                                 layers: int) -> float:
    """Peak number of layer-microbatches whose activations pipeline rank `stage`, holding `layers` layers,
    keeps for backward."""
    m = microbatches
    if pp == 1:
        return float(layers)  # micro-batches run one after another: one in flight
    if schedule == "gpipe":
        return m * layers
    if schedule == "interleaved-1f1b":
        # Megatron's interleaved schedule warms up (p - i - 1)·2 + (v - 1)·p chunk-microbatches, plus one
        chunks = min(m * vpp, (pp - stage - 1) * 2 + (vpp - 1) * pp + 1)
        return chunks * layers / vpp
    if schedule == "zbv":
        # ZB-V keeps 1F1B's peak, p micro-batches of a stage, on every rank (Qi et al. 2024, Table 3)
        return min(pp, m) * layers
    if schedule == "dualpipev":
        # DualPipe(V): activations of PP + 1 micro-batches of a stage (DeepSeek-V3 report, Table 2)
        return min(pp + 1, m) * layers
    return min(pp - stage, m) * layers  # 1f1b and zero-bubble (ZB-H1 keeps 1F1B's memory)
