"""The planner's memory choices rebuilt without space.py, for the brute-force checks of the search."""

from __future__ import annotations

from bastion.planner.space import OFFLOAD_SHARES, PARTIAL_RECOMPUTE_SHARES
from bastion.specs.model import ModelSpec
from bastion.specs.plan import RECOMPUTE_MODES, chunk_layer_counts


def memory_variants(model: ModelSpec, cluster, pp: int, vpp: int) -> list[tuple[str, int, int]]:
    """(recompute, recompute_layers, activation_offload): every mode, full recompute of each share of a chunk's
    layers (at least 1, at most all but one), and offloading each share without recompute where the accelerator
    has a host link."""
    counts = chunk_layer_counts(model.num_layers, pp * vpp)
    n = max(counts) if counts else 1
    variants = [(mode, 0, 0) for mode in RECOMPUTE_MODES]
    if n > 1:
        variants += [("full", r, 0) for r in {min(n - 1, max(1, round(x * n))) for x in PARTIAL_RECOMPUTE_SHARES}]
        if cluster.accelerator.host_link_gbs > 0:
            variants += [("none", 0, o) for o in {min(n - 1, max(1, round(x * n))) for x in OFFLOAD_SHARES}]
    return variants
