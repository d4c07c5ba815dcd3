"""Collective communication on a two-level network: a scale-up domain (NVLink) and a scale-out fabric.

A process group is laid out on the device mesh with a stride (tensor parallelism innermost, then context, data,
and pipeline outermost, as torchtitan and Megatron-LM place them). Members that share a scale-up domain talk over
NVLink; the rest cross the scale-out fabric, each GPU through its own NIC, so a group with k members per domain
moves its inter-domain traffic over k NICs in parallel. Collectives are hierarchical rings: intra-domain
reduce-scatter, inter-domain all-reduce of the 1/k shard, intra-domain all-gather (NCCL's behaviour on
multi-node jobs), with the latency of a tree across domains. Achieved bandwidth = link bandwidth × the measured
large-message efficiency × a message-size ramp B/(B + B_half).

A cluster read from a machine profile (specs/profile.py) replaces all of this with the latency/bandwidth lines
`bastion calibrate` measured for each collective and group size (gloo on a host's shared cores, say).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from bastion.predict.calibration import load_calibration
from bastion.specs.hardware import Cluster
from bastion.specs.plan import ParallelPlan


@dataclass(frozen=True)
class GroupPlacement:
    """How a process group of `size` ranks sits on the network."""

    size: int
    #: members that share one scale-up domain
    local: int
    #: scale-up domains the group spans
    domains: int


@lru_cache(maxsize=4096)
def place_group(cluster: Cluster, size: int, stride: int) -> GroupPlacement:
    """Placement of a group whose consecutive members are `stride` ranks apart."""
    domain = max(1, min(cluster.network.scale_up_size, cluster.num_gpus))
    local = 1 if stride >= domain else max(1, min(size, domain // stride))
    return GroupPlacement(size=size, local=local, domains=math.ceil(size / local))


def _scale_up_time(cluster: Cluster, nbytes: float) -> float:
    cal = load_calibration().network
    bw = cluster.network.scale_up_bw_gbs * 1e9 * cal["scale_up_efficiency"]
    return nbytes / bw * (1.0 + cal["half_bandwidth_bytes_scale_up"] / max(nbytes, 1.0))


def _scale_out_time(cluster: Cluster, bytes_per_nic: float) -> float:
    """Seconds for each GPU to push `bytes_per_nic` through its own NIC (all NICs of a node work in parallel)."""
    cal = load_calibration().network
    net = cluster.network
    bw = net.scale_out_bw_gbs * 1e9 * cal["scale_out_efficiency"] / net.oversubscription
    return bytes_per_nic / bw * (1.0 + cal["half_bandwidth_bytes_scale_out"] / max(bytes_per_nic, 1.0))


def _tree_latency(cluster: Cluster, g: GroupPlacement) -> float:
    """All-reduce: NCCL's tree (a chain inside each domain, a binary tree across domains), up and down."""
    net = cluster.network
    intra = (g.local - 1) * net.scale_up_latency_us
    inter = math.ceil(math.log2(g.domains)) * net.scale_out_latency_us if g.domains > 1 else 0.0
    return 2 * (intra + inter) * 1e-6


def _ring_latency(cluster: Cluster, g: GroupPlacement) -> float:
    """All-gather / reduce-scatter: NCCL runs them only as rings, whose size-1 steps each wait for one hop
    (NCCL's own tuning model, src/graph/tuning.cc: (nranks - nnodes)·intra-hop + (nnodes - 1)·network-hop
    latency), so the latency grows linearly with the group, not with its logarithm."""
    net = cluster.network
    inter_steps = g.domains - 1
    intra_steps = g.size - 1 - inter_steps
    return (intra_steps * net.scale_up_latency_us + inter_steps * net.scale_out_latency_us) * 1e-6


def _hierarchical_transfer_time(cluster: Cluster, passes: float, nbytes: float, g: GroupPlacement) -> float:
    """Bandwidth time of a collective moving `passes` × (n−1)/n of `nbytes` per level: first inside the scale-up
    domain, then across domains, where each of the `local` ranks carries 1/local of the data on its own NIC
    (all-reduce = 2 passes: reduce-scatter + all-gather; all-gather or reduce-scatter = 1)."""
    t = 0.0
    if g.local > 1:
        t += _scale_up_time(cluster, passes * (g.local - 1) / g.local * nbytes)
    if g.domains > 1:
        t += _scale_out_time(cluster, passes * (g.domains - 1) / g.domains * nbytes / g.local)
    return t


@lru_cache(maxsize=65536)
def all_reduce_time(cluster: Cluster, nbytes: float, g: GroupPlacement) -> float:
    """Seconds to all-reduce `nbytes` (each rank's buffer) over group g."""
    if g.size <= 1 or nbytes <= 0:
        return 0.0
    return _profiled(cluster, "all_reduce", g.size, nbytes, g.domains > 1) or _hierarchical_transfer_time(cluster, 2.0, nbytes, g) + _tree_latency(cluster, g)


def _profiled(cluster: Cluster, op: str, size: int, nbytes: float, spans_domains: bool = False) -> float | None:
    """The machine profile's measured time (always > 0), or None on datasheet rates. A GPU profile measured NCCL
    inside one node: a group that spans scale-up domains runs on the datasheet network instead."""
    if cluster.profile is None or (spans_domains and cluster.accelerator.host_cores <= 0):
        return None
    return cluster.profile.collective_wall_time(op, size, nbytes,
                                                cluster.accelerator.core_share(cluster.gpus_per_node))


@lru_cache(maxsize=65536)
def all_gather_time(cluster: Cluster, nbytes: float, g: GroupPlacement) -> float:
    """Seconds to all-gather (or reduce-scatter) a buffer of `nbytes` in total (the unsharded size)."""
    if g.size <= 1 or nbytes <= 0:
        return 0.0
    return _profiled(cluster, "all_gather", g.size, nbytes, g.domains > 1) or _hierarchical_transfer_time(cluster, 1.0, nbytes, g) + _ring_latency(cluster, g)


@lru_cache(maxsize=65536)
def reduce_scatter_time(cluster: Cluster, nbytes: float, g: GroupPlacement) -> float:
    """Seconds to reduce-scatter a buffer of `nbytes` in total: an all-gather's traffic in reverse."""
    if g.size <= 1 or nbytes <= 0:
        return 0.0
    return _profiled(cluster, "reduce_scatter", g.size, nbytes, g.domains > 1) or all_gather_time(cluster, nbytes, g)


def p2p_time(cluster: Cluster, nbytes: float, crosses_domain: bool) -> float:
    """Seconds to send `nbytes` to a neighbouring pipeline stage."""
    if nbytes <= 0:
        return 0.0
    measured = _profiled(cluster, "send_recv", 2, nbytes, crosses_domain)
    if measured is not None:
        return measured
    net = cluster.network
    if crosses_domain:
        return _scale_out_time(cluster, nbytes) + net.scale_out_latency_us * 1e-6
    return _scale_up_time(cluster, nbytes) + net.scale_up_latency_us * 1e-6


@lru_cache(maxsize=65536)
def all_to_all_time(cluster: Cluster, nbytes: float, g: GroupPlacement) -> float:
    """Seconds for every rank of group g to send `nbytes` in total, spread evenly over the members (itself
    included, which keeps its share), and to receive as much: an expert-parallel dispatch or combine.

    NCCL's all-to-all posts a send and a receive to every peer at once: the shares for peers in the same scale-up
    domain cross NVLink while the shares for the other domains leave through this GPU's own NIC, in parallel, so
    the slower of the two sets the time. Message-size efficiency is the same ramp as for the other collectives,
    taken at the bytes each link carries in the call; the exchanges wait one hop's latency."""
    if g.size <= 1 or nbytes <= 0:
        return 0.0
    measured = _profiled(cluster, "all_to_all", g.size, nbytes, g.domains > 1)
    if measured:
        return measured
    per_peer = nbytes / g.size
    return exchange_time(cluster, (g.local - 1) * per_peer, (g.size - g.local) * per_peer)


def exchange_time(cluster: Cluster, intra: float, inter: float) -> float:
    """Seconds for a rank to send `intra` bytes to peers in its scale-up domain and `inter` bytes to the other
    domains at once (each receiving as much): the two sets of links work in parallel, the slower sets the time."""
    net = cluster.network
    t_intra = _scale_up_time(cluster, intra) + net.scale_up_latency_us * 1e-6 if intra > 0 else 0.0
    t_inter = _scale_out_time(cluster, inter) + net.scale_out_latency_us * 1e-6 if inter > 0 else 0.0
    return max(t_intra, t_inter)


def host_transfer_time(cluster: Cluster, nbytes: float) -> float:
    """Seconds to copy `nbytes` one way between a device and its host's memory (activation offloading) over the
    catalog's host link (Accelerator.host_link_gbs, per direction), at the datasheet rate: a pinned-memory copy
    runs on its own copy engine, and the link carries nothing else of the step."""
    link = cluster.accelerator.host_link_gbs
    if nbytes <= 0:
        return 0.0
    if link <= 0:
        raise ValueError(f"{cluster.accelerator.name} has no host link in the catalog")
    return nbytes / (link * 1e9)


def ring_attention_exposed(cluster: Cluster, kv_bytes: float, cp: int, g: GroupPlacement, attn_fwd: float,
                           attn_bwd: float) -> tuple[float, float]:
    """(forward, backward) seconds of ring attention's K,V passing that one layer's attention does not hide
    (Megatron-Core / Transformer Engine context parallelism, cp_comm_type "p2p"; Liu et al. 2023, Ring
    Attention). The attention runs in cp steps; while step i computes with the K,V chunk in hand, the chunk for
    step i + 1 travels to the next rank, so each of the cp - 1 hops is exposed by what it outlasts of one step.
    With the causal load balance (each rank holds two sequence chunks, one from each end) every step does 1/cp
    of the rank's attention. The backward passes the K,V and their gradient accumulators: twice the bytes."""
    if cp <= 1:
        return 0.0, 0.0
    hop = p2p_time(cluster, kv_bytes, g.domains > 1)
    steps = cp - 1
    return (steps * max(0.0, hop - attn_fwd / cp), steps * max(0.0, 2 * hop - attn_bwd / cp))


@dataclass(frozen=True)
class FsdpSchedule:
    """How often bastion's runtime runs FSDP2's collectives for each unit in one optimizer step: per
    micro-batch, and once per step (`fsdp_schedule`)."""

    gathers_per_micro_batch: int
    reduces_per_micro_batch: int
    gathers_once: int
    reduces_once: int


def fsdp_schedule(plan: ParallelPlan) -> FsdpSchedule:
    """FSDP2's collectives per unit (a block; the stage's root) in bastion's runtime, the one home of that rule
    for its time (estimate.py `_runtime_fsdp_comm`, `_data_parallel_schedule`), its synchronisation points
    (`_sync_points`) and the model states a step holds (memory.py `held_whole_in_step`): each unit is gathered for
    the forward, again for the backward under ZeRO-3 (resharded after forward), and its gradients reduced.

    Where gradient sync and resharding after backward are off for every micro-batch but the last, gradients
    accumulate whole and are reduced once per step, and ZeRO 0-2 gather once per step; ZeRO-3, resharded after
    every forward, still gathers per micro-batch. A pipeline schedule does that for every ZeRO stage
    (torch.distributed.pipelining's backward_maybe_with_nosync, perform_reduce_grad); without one the training
    loop does it for ZeRO 0 and 1 (runtime/parallelize.py defers_gradient_reduction), while ZeRO 2 and 3 gather
    and reduce per micro-batch (ZeRO-2's reduce-scatter after every backward keeps its gradients sharded)."""
    gathers = 2 if plan.zero_stage == 3 else 1
    if plan.pp <= 1 and plan.zero_stage >= 2:
        return FsdpSchedule(gathers, 1, 0, 0)
    if plan.zero_stage == 3:
        return FsdpSchedule(gathers, 0, 0, 1)
    return FsdpSchedule(0, 0, gathers, 1)
