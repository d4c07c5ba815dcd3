"""The device mesh of a ParallelPlan: one 4-D DeviceMesh ("pp", "dp_replicate", "dp_shard", "tp"), plus a cp group.

Data parallelism is always FSDP2 over the ("dp_replicate", "dp_shard") sub-mesh, because that is deterministic
and bitwise-resumable (DDP is not: it rebuilds gradient buckets after the first step, see PYTORCH_NOTES):
  zero 0     -> dp_replicate = dp, dp_shard = 1: HSDP with one shard per replica = all-reduce replication
  zero 1, 2  -> dp_shard = dp, parameters kept unsharded between forward and backward. FSDP2 has no
                optimizer-only mode, and a reduce-scatter plus an all-gather moves the same bytes as an
                all-reduce: zero 1 is the sharded layout whose gradients stay whole while a step accumulates them
                (the loop turns FSDP2's gradient sync off until the last micro-batch, the parameters staying
                gathered, runtime/parallelize.py defers_gradient_reduction), so only the optimizer state is
                sharded then; zero 2 reduce-scatters after every micro-batch, keeping its gradients sharded
  zero 3     -> dp_shard = dp, parameters resharded after forward (full shard)
tp is the innermost dimension so that a TP group is made of neighbouring ranks (one NVLink domain on GPUs).

Context parallelism (cp > 1) sits between tp and dp, as the predictor places it (tp innermost, then cp, then dp,
pp outermost; predict/comm.py): the data-parallel mesh dimension has dp × cp members, index = dp_index · cp +
cp_index. Parameters and gradients are therefore sharded (zero 1-3) or replicated (zero 0) over dp × cp, and FSDP
reduces gradients over cp as well as dp — torchtitan's flattened "dp_shard_cp" mesh, built here directly as one
dimension, so no flattened-dim slicing (deprecated from torch 2.11) is needed. The cp ranks of one (pp, dp, tp)
coordinate also get a plain process group (`cp_group`) for the attention's key/value all-gather.

Expert parallelism (ep > 1) is carved from the data-parallel ranks, as in Megatron-Core and torchtitan: the dp × cp
dimension is unflattened into (dp × cp / ep, ep), ep innermost, so rank i of that dimension holds expert group
i mod ep. Routed experts are split over "ep" and sharded (zero 1-3) or replicated (zero 0) over the other factor
(`expert_dp_mesh`); every other parameter keeps the whole dp × cp dimension. With expert tensor parallelism
(etp = tp) the experts are also split in width over "tp": 2-D ("ep", "tp") DTensors (1 < etp < tp: below). Both
meshes are views of one root mesh, which FSDP2 needs to compose the experts' DTensor placements with its own. With cp > 1 an ep group may hold cp
ranks of one replica: each routes its own shard of the sequences (runtime/moe.py's SequenceSplit); an ep group's
members share a tp index, so its members are tp ranks apart (the predictor's "bastion" layout, predict/moe.py).

Parallel folding (Megatron-Core; ep does not divide dp × cp, ParallelPlan.folds_experts): the ep groups take in
tensor-parallel ranks. The expert grid is laid over the stage's ranks numbered tp innermost (the predictor's
memory._local_numel): ep consecutive ranks form an ep group, the ranks ep apart hold the same experts. That grid is
not a view of the 4-D mesh (it cuts across its dp and tp dimensions), so it is a DeviceMesh of its own over the same
ranks, (pp, dp_replicate | edp_replicate, edp_shard | dp_shard, ep) with the names the carved layout uses, whose
groups the experts' DTensors and their FSDP unit share (FSDP2 composes placements of one root mesh). Each tp rank
routes its own shard of the sequence (its sequence-parallel shard, or without sp its slice of the replicated
activation; runtime/parallelize.py), so every rank of an ep group dispatches distinct tokens. With etp > 1 the
grid gains an innermost "etp" dimension (etp consecutive ranks split each expert's width, the ep groups' members
are etp ranks apart, as the predictor lays it out): the etp ranks all-gather the rows their ep groups received,
each computes its slice of the width on all of them, and the partial outputs are reduce-scattered back
(runtime/moe.py, Megatron-Core's expert-tensor-parallel all-gather and reduce-scatter).

Expert tensor parallelism narrower than tp without folding (1 < etp < tp, ep dividing dp × cp): the tp dimension
is unflattened into ("etp_replicate", "etp"), etp innermost (etp rank = tp rank mod etp, as the predictor's
memory._local_numel has it); the tp ranks of a replica route the same tokens, the etp ranks sum their slices'
outputs, and the tp / etp ranks holding the same slice compute the same gradient (replicated there, as a weight
replicated over tp is).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from bastion.runtime.preflight import check_world_size
from bastion.specs.plan import ParallelPlan

MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "tp")


def dp_layout(plan: ParallelPlan) -> tuple[int, int]:
    """(replicate, shard) sizes of the data-parallel (× context-parallel) dimension for the plan's ZeRO stage."""
    members = plan.dp * plan.cp
    return (members, 1) if plan.zero_stage == 0 else (1, members)


@dataclass
class RuntimeMesh:
    """The mesh plus this rank's coordinates; one object owns the parallel degrees."""

    plan: ParallelPlan
    mesh: DeviceMesh
    device: torch.device
    #: the ranks that share this rank's (pp, dp, tp) coordinates, in cp order; None when cp = 1
    cp_group: dist.ProcessGroup | None = None
    #: `mesh` with the data-parallel dimension unflattened into (expert data parallel, ep) when ep > 1: (pp,
    #: dp_replicate, edp_shard, ep, tp) under zero 1-3, (pp, edp_replicate, ep, dp_shard, tp) under zero 0; a
    #: mesh of its own, (pp, ·, ·, ep[, etp]), when the plan folds ep over tp ranks (_folded_expert_mesh); with
    #: 1 < etp < tp the tp dimension unflattened into ("etp_replicate", "etp") too
    expert_mesh: DeviceMesh | None = None

    @property
    def etp_mesh(self) -> DeviceMesh | None:
        """The ranks that split each routed expert's width (None: etp = 1): the tp ranks (etp = tp), or the
        expert mesh's "etp" dimension."""
        if self.plan.etp == 1:
            return None
        if self.expert_mesh is not None and "etp" in self.expert_mesh.mesh_dim_names:
            return self.expert_mesh["etp"]
        return self.tp_mesh

    @property
    def expert_shard_mesh(self) -> DeviceMesh:
        """The mesh the routed experts' DTensors live on: ep (dim 0), then the etp ranks (each expert's width)."""
        if self.plan.ep == 1:
            return self.etp_mesh
        if self.plan.etp == 1:
            return self.ep_mesh
        return self.expert_mesh["ep", self.etp_mesh.mesh_dim_names[0]]

    @property
    def ep_mesh(self) -> DeviceMesh:
        return self.expert_mesh["ep"]

    @property
    def ep_rank(self) -> int:
        return 0 if self.expert_mesh is None else self.expert_mesh.get_local_rank("ep")

    @property
    def expert_dp_mesh(self) -> DeviceMesh:
        """The ranks over which one expert group's tensors are sharded (zero 1-3) or replicated (zero 0)."""
        if dp_layout(self.plan)[1] > 1:
            return self.expert_mesh["dp_replicate", "edp_shard"]
        return self.expert_mesh["edp_replicate", "dp_shard"]

    @property
    def pp_rank(self) -> int:
        return self.mesh.get_local_rank("pp")

    @property
    def tp_rank(self) -> int:
        return self.mesh.get_local_rank("tp")

    @property
    def _dp_cp_index(self) -> int:
        replicate, shard = self.mesh.get_local_rank("dp_replicate"), self.mesh.get_local_rank("dp_shard")
        return replicate * self.mesh.size(MESH_DIMS.index("dp_shard")) + shard

    @property
    def dp_rank(self) -> int:
        """Data-parallel rank (which share of the global batch); the cp ranks of a replica share it."""
        return self._dp_cp_index // self.plan.cp

    @property
    def cp_rank(self) -> int:
        return self._dp_cp_index % self.plan.cp

    @property
    def dp_mesh(self) -> DeviceMesh:
        return self.mesh["dp_replicate", "dp_shard"]

    @property
    def tp_mesh(self) -> DeviceMesh:
        return self.mesh["tp"]

    @property
    def pp_group(self) -> dist.ProcessGroup:
        return self.mesh.get_group("pp")


def build_mesh(plan: ParallelPlan, device: torch.device) -> RuntimeMesh:
    check_world_size(plan, dist.get_world_size())
    replicate, shard = dp_layout(plan)
    mesh = init_device_mesh(device.type, (plan.pp, replicate, shard, plan.tp), mesh_dim_names=MESH_DIMS)
    return RuntimeMesh(plan=plan, mesh=mesh, device=device, cp_group=_cp_group(plan),
                       expert_mesh=_expert_mesh(plan, mesh))


def _expert_mesh(plan: ParallelPlan, mesh: DeviceMesh) -> DeviceMesh | None:
    narrow_etp = 1 < plan.etp < plan.tp
    if plan.ep == 1 and not narrow_etp:
        return None
    replicate, shard = dp_layout(plan)
    if plan.folds_experts:
        return _folded_expert_mesh(plan, mesh.device_type, zero_sharded=shard > 1)
    if shard > 1:  # zero 1-3: (pp, dp_replicate, edp_shard, ep, tp)
        expert_mesh = mesh._unflatten("dp_shard", (shard // plan.ep, plan.ep), ("edp_shard", "ep"))
    else:  # zero 0: (pp, edp_replicate, ep, dp_shard, tp); expert_dp_mesh picks the two data-parallel names
        expert_mesh = mesh._unflatten("dp_replicate", (replicate // plan.ep, plan.ep), ("edp_replicate", "ep"))
    if narrow_etp:
        expert_mesh = expert_mesh._unflatten("tp", (plan.tp // plan.etp, plan.etp), ("etp_replicate", "etp"))
    return expert_mesh


def _folded_expert_mesh(plan: ParallelPlan, device_type: str, zero_sharded: bool) -> DeviceMesh:
    """(pp, ·, ·, ep[, etp]) over all ranks: a stage's dp × cp × tp ranks (tp innermost) split into consecutive
    etp groups (etp > 1), the ranks etp apart into ep groups (collective: every rank builds every group)."""
    expert_dp = plan.expert_data_parallel
    sizes = (plan.pp, 1, expert_dp, plan.ep) if zero_sharded else (plan.pp, expert_dp, 1, plan.ep)
    names = ("pp", "dp_replicate", "edp_shard", "ep") if zero_sharded else ("pp", "edp_replicate", "dp_shard", "ep")
    if plan.etp > 1:
        sizes, names = (*sizes, plan.etp), (*names, "etp")
    return DeviceMesh(device_type, torch.arange(plan.num_gpus).view(sizes), mesh_dim_names=names)


def cp_group_ranks(plan: ParallelPlan) -> list[list[int]]:
    """Global ranks of every cp group: rank = ((pp · dp + d) · cp + c) · tp + t (tp innermost, then cp, dp, pp)."""
    return [[((p * plan.dp + d) * plan.cp + c) * plan.tp + t for c in range(plan.cp)]
            for p in range(plan.pp) for d in range(plan.dp) for t in range(plan.tp)]


def _cp_group(plan: ParallelPlan) -> dist.ProcessGroup | None:
    if plan.cp == 1:
        return None
    # collective: every rank creates every group, in the same order, and keeps its own
    group, _ = dist.new_subgroups_by_enumeration(cp_group_ranks(plan))
    return group
