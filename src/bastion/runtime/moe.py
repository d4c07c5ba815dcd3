"""The mixture-of-experts block: router, token permutation, grouped experts, un-permutation, shared experts, and
the expert-parallel dispatch and combine over `all_to_all_single`.

One code path for every plan, so a run on many ranks computes what one process computes:
  route     scores = softmax (or sigmoid) of x·W_router; the top_k experts of each token by a *stable* descending
            sort (ties go to the lower expert index, so routing is bit-reproducible), optionally renormalised
  permute   the (token, choice) pairs sorted by expert, stably (token order kept inside an expert)
  dispatch  (ep > 1) the per-expert counts are exchanged first (all_to_all of E integers), then the rows move
            to the rank owning their expert with uneven splits; received rows, grouped by source rank, are
            regrouped by local expert. torch's functional `all_to_all_single_autograd` carries the gradient
            back with the splits swapped (the same collective torchtitan's ExpertParallel uses)
  experts   one SwiGLU/GELU MLP per expert over its contiguous rows: `torch._grouped_mm` on CUDA cards that have
            it (bf16), otherwise an exact per-expert loop (CPU); dropless, no capacity factor. With etp > 1 each
            etp rank computes its slice of every expert's width on the same rows and the outputs are summed;
            where the etp ranks received different rows (ep folded over tp ranks, each routing its own shard)
            the rows are all-gathered over etp first and the summed outputs reduce-scattered back (Megatron-Core)
  combine   the reverse all_to_all, un-permute, and the top_k outputs of a token summed with their router weights
            in a fixed order; the shared experts (one MLP of their summed width) are added for every token

Load balancing: the sequence-wise auxiliary loss of DeepSeek-V3 (arXiv 2412.19437, Eq. 17-20; Switch
Transformer's loss applied per sequence): aux = coeff · E · Σ_i f_i · P_i per sequence, f_i the share of the
sequence's top_k choices that went to expert i, P_i the mean (normalised) score of expert i; the mean over
sequences. Per sequence, so splitting the batch into micro-batches and data-parallel ranks does not change it.

Split sequences (`SequenceSplit`): under context parallelism, under sequence parallelism with etp = 1, and with
ep folded over the tp ranks (`routes_sequence_shard`), a rank routes only its shard of each sequence (the block is
token-wise; each rank dispatches its own tokens over ep).
The aux loss then needs the whole sequence's counts f_i, which are summed over the ranks holding the other shards
(no gradient flows through them); P_i is linear in the scores, so each rank keeps its shard's part of it and the
parts add up to the single-process loss. When each tp rank routes a different shard, the router's and
routed experts' gradients (replicated weights, `grad_sum_mesh`) are summed over tp, as Megatron sums the
gradients of sequence-parallel replicated weights.

DeepSeek-V3's auxiliary-loss-free balancing (router_bias_update_rate > 0): a per-expert bias added to the scores
for the choice only, moved after every step by rate × sign(mean load − load) from the step's global loads
(`update_router_biases`, run by `step_stats`); a buffer of the router, so checkpoints keep it.

The aux loss's gradient enters backward through `AuxLossInjector` (Megatron's MoEAuxLossAutoScaler habit): the
block's output is returned unchanged and backward adds d(aux)·scale, so the loss function and the pipeline
schedule do not need to know about it. The trainer sets the scale (1 / micro-batches when it divides the loss itself).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from bastion.specs.model import ModelSpec
from bastion.specs.plan import ParallelPlan


@dataclass
class SequenceSplit:
    """The ranks over which the tokens of each sequence this rank routes are split (set by parallelize)."""

    #: process groups whose members hold the other shards (the cp group; the tp group when sp routes shards);
    #: summing over each in turn sums over all of them
    groups: list[dist.ProcessGroup]
    #: how many shards a sequence is cut into (the product of the groups' sizes)
    shards: int
    #: of `shards`, the factor whose gradients are averaged (FSDP over cp) rather than summed (tp): the aux loss's
    #: gradient is scaled by it so that the mean over those ranks is the whole sequence's gradient
    averaged: int


def routes_sequence_shard(plan: ParallelPlan) -> bool:
    """Each tp rank routes its own shard of the sequence: its sequence-parallel shard (sp with etp = 1), or, with
    ep folded over the tp ranks (any etp), without sp its slice of the replicated activation (an ep group
    spanning tp ranks must not dispatch a token once per tp rank); otherwise the tp ranks of a replica route the
    same tokens (with etp > 1 each computes a slice of every expert's width). The predictor's layouts
    (predict/moe.py's routing_layout and runtime_layout) are the home of the rule."""
    from bastion.predict.moe import routing_layout, runtime_layout

    return routing_layout(plan.tp, plan.etp, plan.sequence_parallel, runtime_layout(plan)).token_share < 1


def with_summed_gradient(mesh: object, weight: torch.Tensor) -> torch.Tensor:
    """`weight` unchanged; backward sums its gradient over `mesh` (None: no change)."""
    if mesh is None:
        return weight
    from bastion.runtime.model import sum_gradient_over

    return sum_gradient_over(mesh, weight)


@dataclass
class ExpertParallelGroup:
    """This rank's place among the ranks that split the experts of a layer."""

    group: dist.ProcessGroup
    size: int
    rank: int


class AuxLossInjector(torch.autograd.Function):
    """Returns `output` unchanged; backward also sends `scale` as the gradient of `aux_loss`."""

    @staticmethod
    def forward(ctx, output: torch.Tensor, aux_loss: torch.Tensor, scale: float) -> torch.Tensor:  # noqa: ANN001
        ctx.scale = scale
        ctx.aux_shape = aux_loss.shape
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple:  # noqa: ANN001
        grad_aux = torch.full(ctx.aux_shape, ctx.scale, dtype=torch.float32, device=grad_output.device)
        return grad_output, grad_aux, None


def _local(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def grouped_mm_available(weight: torch.Tensor) -> bool:
    """torch._grouped_mm needs a CUDA card of compute capability 9.0 or later and bf16 operands."""
    return (weight.is_cuda and weight.dtype == torch.bfloat16 and hasattr(torch, "_grouped_mm")
            and torch.cuda.get_device_capability(weight.device) >= (9, 0))


class GroupedExperts(nn.Module):
    """`num_experts` MLPs as three (experts, out, in) tensors; expert parallelism shards them on dim 0, expert
    tensor parallelism (etp) each expert's inner width (w1/w3 colwise, w2 rowwise)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        h, f, e = spec.hidden_size, spec.expert_width, spec.num_experts
        self.swiglu = spec.ffn_type == "swiglu"
        self.w1 = nn.Parameter(torch.empty(e, f, h))
        self.w2 = nn.Parameter(torch.empty(e, h, f))
        self.w3 = nn.Parameter(torch.empty(e, f, h)) if self.swiglu else None
        #: expert tensor parallelism (set by parallelize): the ranks over which each expert's inner width is
        #: split; each computes its slice on the same rows and the outputs are summed
        self.etp_mesh = None
        #: the etp ranks received different rows (their tp ranks route their own sequence shards, ep folded over
        #: tp ranks): the rows are all-gathered over etp first and the summed outputs scattered back
        self.etp_gathers_rows = False
        #: the tp sub-mesh when each tp rank routes its own sequence shard (sp, etp = 1): gradients summed over it
        self.grad_sum_mesh = None

    def _act(self, up: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
        return F.silu(up) * gate if gate is not None else F.gelu(up)

    def forward(self, x_TH: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """Rows of `x_TH` grouped by local expert, `counts[e]` rows for local expert e."""
        if self.etp_mesh is None:
            return self._local_experts(x_TH, counts)
        if self.etp_gathers_rows:
            return self._gathered_experts(x_TH, counts)
        from bastion.runtime.model import sum_gradient_over, sum_over

        return sum_over(self.etp_mesh, self._local_experts(sum_gradient_over(self.etp_mesh, x_TH), counts))

    def _gathered_experts(self, x_TH: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """Megatron-Core's expert tensor parallelism: the etp ranks' rows all-gathered (each padded to the most
        any of them holds, as the collective needs equal sizes), regrouped by local expert (sources in etp rank
        order), this rank's slice of the width computed on all of them, and the partial outputs reduce-scattered
        back to the ranks that sent the rows. Backward: the gradients all-gathered, the input gradients
        reduce-scattered (the functional collectives' autograd)."""
        from torch.distributed._functional_collectives import (
            all_gather_tensor,
            all_gather_tensor_autograd,
            reduce_scatter_tensor_autograd,
        )

        group, size = self.etp_mesh.get_group(), self.etp_mesh.size()
        mine = torch.tensor(counts, dtype=torch.int64, device=x_TH.device)
        per_rank = torch.ops._c10d_functional.wait_tensor(all_gather_tensor(mine, 0, group)).view(size, -1).tolist()
        most = max(1, max(sum(row) for row in per_rank))  # never an empty collective
        padded = F.pad(x_TH, (0, 0, 0, most - x_TH.shape[0]))
        gathered = all_gather_tensor_autograd(padded, 0, group)
        by_expert = []
        for expert in range(len(counts)):
            for source, row in enumerate(per_rank):
                start = source * most + sum(row[:expert])
                by_expert.append(torch.arange(start, start + row[expert], device=x_TH.device))
        regroup = torch.cat(by_expert)
        out = self._local_experts(gathered.index_select(0, regroup),
                                  [sum(row[e] for row in per_rank) for e in range(len(counts))])
        # back to the gathered layout, padding rows zero: a gather from the outputs and one zero row
        inverse = torch.full((size * most,), regroup.numel(), dtype=torch.int64, device=x_TH.device)
        inverse.scatter_(0, regroup, torch.arange(regroup.numel(), device=x_TH.device))
        partial = torch.cat([out, out.new_zeros(1, out.shape[1])]).index_select(0, inverse)
        return reduce_scatter_tensor_autograd(partial, "sum", 0, group)[:x_TH.shape[0]]

    def _local_experts(self, x_TH: torch.Tensor, counts: list[int]) -> torch.Tensor:
        w1, w2 = (with_summed_gradient(self.grad_sum_mesh, _local(w)) for w in (self.w1, self.w2))
        w3 = with_summed_gradient(self.grad_sum_mesh, _local(self.w3)) if self.w3 is not None else None
        if grouped_mm_available(w1) and x_TH.shape[0]:
            offsets = torch.cumsum(torch.tensor(counts, device=x_TH.device), 0).to(torch.int32)
            x = x_TH.to(w1.dtype)
            up = torch._grouped_mm(x, w1.transpose(-2, -1), offs=offsets)
            gate = torch._grouped_mm(x, w3.transpose(-2, -1), offs=offsets) if w3 is not None else None
            return torch._grouped_mm(self._act(up, gate), w2.transpose(-2, -1), offs=offsets).to(x_TH.dtype)
        outputs = []
        for expert, rows in enumerate(torch.split(x_TH, counts)):
            up = rows @ w1[expert].T
            gate = rows @ w3[expert].T if w3 is not None else None
            outputs.append(self._act(up, gate) @ w2[expert].T)
        if not outputs:
            return x_TH.new_zeros(0, w2.shape[1])
        return torch.cat(outputs)


class Router(nn.Module):
    """Scores, top-k choice and weights. With DeepSeek-V3's auxiliary-loss-free balancing (router_bias_update_rate
    > 0) a per-expert `expert_bias` buffer is added to the scores for the choice only (the weights stay the plain
    scores); `update_bias` moves it after each step. The buffer is part of the model's state dict, so checkpoints
    keep it."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.top_k = spec.top_k
        self.sigmoid = spec.router == "sigmoid"
        self.norm_topk = spec.router_norm_topk
        self.bias_update_rate = spec.router_bias_update_rate
        self.weight = nn.Parameter(torch.empty(spec.num_experts, spec.hidden_size))
        #: the tp sub-mesh when each tp rank routes its own sequence shard (sp, etp = 1): gradient summed over it
        self.grad_sum_mesh = None
        if self.bias_update_rate:
            self.register_buffer("expert_bias", torch.zeros(spec.num_experts, dtype=torch.float32))

    @torch.no_grad()
    def update_bias(self, load_E: torch.Tensor) -> None:
        """DeepSeek-V3 (arXiv 2412.19437, Sec. 2.1.2): each expert's bias moves by the rate towards balance,
        down when it took more than the mean of the step's tokens, up when fewer; `load_E` counts the whole
        global batch, the same on every rank, so every copy of the bias stays bit-identical."""
        load = load_E.to(self.expert_bias.device, torch.float64)
        step = torch.sign(load.mean() - load) * self.bias_update_rate
        self.expert_bias.add_(step.to(torch.float32))

    def forward(self, x_TH: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(scores (T, E) fp32, chosen experts (T, k), their weights (T, k) fp32)."""
        logits = F.linear(x_TH, with_summed_gradient(self.grad_sum_mesh, self.weight)).float()
        scores = torch.sigmoid(logits) if self.sigmoid else torch.softmax(logits, dim=-1)
        choice = scores.detach() + self.expert_bias if self.bias_update_rate else scores.detach()
        # stable descending sort: equal scores keep expert order, so ties go to the lower index deterministically
        order = torch.sort(choice, dim=-1, descending=True, stable=True).indices
        chosen = order[:, :self.top_k]
        weights = scores.gather(1, chosen)
        if self.norm_topk:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return scores, chosen, weights


class MoE(nn.Module):
    """Routed experts + shared experts in place of a block's MLP (module tree: router, experts, shared_experts)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        from bastion.runtime.model import FeedForward

        self.num_experts = spec.num_experts
        self.top_k = spec.top_k
        self.aux_loss_coeff = spec.aux_loss_coeff
        self.router = Router(spec)
        self.experts = GroupedExperts(spec)
        self.shared_experts = (FeedForward(spec, spec.num_shared_experts * spec.expert_width)
                               if spec.num_shared_experts else None)
        #: expert parallelism (set by parallelize); None = every expert is local
        self.ep: ExpertParallelGroup | None = None
        #: the ranks holding the other shards of this rank's sequences (set by parallelize); None = whole sequences
        self.sequence_split: SequenceSplit | None = None
        #: gradient of the aux loss per unit (the trainer's 1 / micro-batches when it divides the loss)
        self.aux_grad_scale = 1.0
        self.reset_stats()

    def reset_stats(self) -> None:
        #: per training forward since the last reset: (tokens routed to each expert, aux loss or None)
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def _aux_loss(self, scores_BSE: torch.Tensor, chosen_BSK: torch.Tensor) -> torch.Tensor:
        """The aux loss of this rank's sequences; with a split sequence, this shard's part of it (the parts of
        one sequence's shards add up to its loss)."""
        batch, seq, experts = scores_BSE.shape
        picked = torch.zeros(batch, experts, device=scores_BSE.device, dtype=torch.float32)
        picked.scatter_add_(1, chosen_BSK.reshape(batch, -1),
                            torch.ones(batch, seq * self.top_k, device=scores_BSE.device))
        shards = 1
        if self.sequence_split is not None:
            shards = self.sequence_split.shards
            if not picked.is_meta:  # pipeline shape inference runs forward on meta tensors
                for group in self.sequence_split.groups:
                    dist.all_reduce(picked, group=group)
        share_BE = picked / (seq * shards * self.top_k)
        probs = scores_BSE / scores_BSE.sum(dim=-1, keepdim=True) if self.router.sigmoid else scores_BSE
        mean_probs_BE = probs.mean(dim=1) if shards == 1 else probs.mean(dim=1) / shards
        return self.aux_loss_coeff * experts * (share_BE * mean_probs_BE).sum(dim=1).mean()

    def _record(self, counts: torch.Tensor, aux: torch.Tensor | None) -> None:
        # not a forward re-run for activation recomputation (inside backward), nor one without grad
        if not torch.is_grad_enabled() or torch._C._current_graph_task_id() != -1:
            return
        # kept on the device: read once per step (step_stats), not once per layer and micro-batch
        self.calls.append((counts.detach(), None if aux is None else aux.detach()))

    def forward(self, x_BSH: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = x_BSH.shape
        x_TH = x_BSH.reshape(-1, hidden)
        scores, chosen, weights = self.router(x_TH)
        flat = chosen.reshape(-1)
        # (token, choice) pairs grouped by expert; the stable sort keeps token order inside each expert
        order = torch.sort(flat, stable=True).indices
        counts = torch.bincount(flat, minlength=self.num_experts)
        routed = x_TH.index_select(0, order // self.top_k)
        if self.ep is None:
            out = self.experts(routed, counts.tolist())
        else:
            out = self._expert_parallel(routed, counts)
        unsorted = unpermute(out, order)  # row j of `out` belongs to pair order[j]
        combined = (unsorted.view(-1, self.top_k, hidden).float() * weights.unsqueeze(-1)).sum(dim=1)
        y_BSH = combined.to(x_BSH.dtype).view(batch, seq, hidden)
        if self.shared_experts is not None:
            y_BSH = y_BSH + self.shared_experts(x_BSH)
        aux = None
        if self.aux_loss_coeff and torch.is_grad_enabled():
            aux = self._aux_loss(scores.view(batch, seq, -1), chosen.view(batch, seq, -1))
            split = self.sequence_split
            y_BSH = AuxLossInjector.apply(y_BSH, aux, self.aux_grad_scale * (split.averaged if split else 1))
            if split is not None:  # recorded as the whole sequences' loss once per shard (step_stats' mean)
                aux = aux * split.shards
        self._record(counts, aux)
        return y_BSH

    def _expert_parallel(self, routed: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        from torch.distributed._functional_collectives import all_to_all_single, all_to_all_single_autograd

        ep = self.ep
        local_experts = self.num_experts // ep.size
        # how many rows each rank sends to each of my local experts: [source][local expert]
        received = torch.ops._c10d_functional.wait_tensor(all_to_all_single(counts, None, None, group=ep.group))
        send_splits = counts.view(ep.size, local_experts).sum(dim=1).tolist()
        from_rank = received.view(ep.size, local_experts).tolist()
        recv_splits = [sum(row) for row in from_rank]
        arrived = all_to_all_single_autograd(routed, recv_splits, send_splits, ep.group)
        # regroup the arrived rows (by source, then expert) by local expert, sources in rank order
        starts, offset = [], 0
        for row in from_rank:
            starts.append([])
            for n in row:
                starts[-1].append(offset)
                offset += n
        by_expert = [torch.arange(starts[s][e], starts[s][e] + from_rank[s][e], device=routed.device)
                     for e in range(local_experts) for s in range(ep.size)]
        regroup = torch.cat(by_expert) if by_expert else torch.zeros(0, dtype=torch.int64, device=routed.device)
        local_counts = [sum(from_rank[s][e] for s in range(ep.size)) for e in range(local_experts)]
        out = self.experts(arrived.index_select(0, regroup), local_counts)
        back = unpermute(out, regroup)
        return all_to_all_single_autograd(back, send_splits, recv_splits, ep.group)


def unpermute(rows: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """The rows put back in place: row j of `rows` becomes row permutation[j]. A gather by the inverse
    permutation rather than index_copy, whose backward keeps all of `rows` (top_k × hidden per token, as much as
    the permuted input) only for their shape; each row is written once either way, so both are exact."""
    inverse = torch.empty_like(permutation).scatter_(
        0, permutation, torch.arange(permutation.numel(), device=permutation.device))
    return rows.index_select(0, inverse)


# ---- what the trainer does around a step ---------------------------------------------------------------------
def moe_blocks(parts: list[nn.Module]) -> list[tuple[int, MoE]]:
    """(layer index, block) of every MoE block in this rank's model chunks."""
    from bastion.runtime.model import canonical_name

    found = []
    for part in parts:
        for name, sub in part.named_modules():
            if isinstance(sub, MoE):
                found.append((int(canonical_name(name).split(".")[1]), sub))
    return found


@torch.no_grad()
def scale_expert_gradients(parts: list[nn.Module], plan: ParallelPlan) -> None:
    """Make routed-expert gradients the data-parallel mean. An expert's gradient arrives (through the combine
    all_to_all) summed over the ep ranks whose tokens it served, and FSDP then averages it over the
    expert_data_parallel ranks holding the same experts only, where every other parameter's gradient is averaged
    over the dp × cp ranks (after a sum over tp where each tp rank routes its own sequence shard): a factor of
    expert_data_parallel / (dp × cp) makes up the difference — 1 / ep when ep is carved from dp × cp, tp / ep when
    folded over tp ranks too (torchtitan sets FSDP's gradient divide factor to the same effect)."""
    if plan.ep == 1:
        return
    factor = plan.expert_data_parallel / plan.shard_degree
    for _, block in moe_blocks(parts):
        for param in block.experts.parameters():
            if param.grad is not None:
                param.grad.mul_(factor)


def step_stats(parts: list[nn.Module], spec: ModelSpec, plan: ParallelPlan, device: torch.device) -> dict:
    """The step's routing figures over every rank (collective; every rank calls it), and the counters reset:
    `moe_aux_loss` the load-balancing loss (coefficient included) summed over layers, mean over micro-batches and
    data-parallel replicas; `expert_tokens` the tokens routed to each expert, summed over layers, and
    `expert_tokens_by_layer` the same per MoE layer (what shows a routing difference is one token's choice);
    `expert_imbalance` the largest per-layer ratio of the busiest expert's tokens to the mean (1.0 = perfectly
    balanced). The tp ranks
    of a replica route the same tokens and count once (unless each routes its own sequence shard). Only the last micro-batch forwards of a block count: torch
    2.13's pipeline stages run one more forward with grad on their first step to infer shapes. With the
    aux-loss-free bias, the routers' biases are moved by these global loads and `router_bias_absmax` reported."""
    micro_batches, copies = plan.grad_accumulation, plan.dp * plan.cp * plan.tp
    counts = torch.zeros(spec.num_layers, spec.num_experts, dtype=torch.float64)
    aux = torch.zeros(spec.num_layers, dtype=torch.float64)
    for index, block in moe_blocks(parts):
        calls = block.calls[-micro_batches:]
        for tokens, _ in calls:
            counts[index] += tokens.double().cpu()
        losses = [float(loss) for _, loss in calls if loss is not None]
        if losses:
            aux[index] += sum(losses) / len(losses)
        block.reset_stats()
    packed = torch.cat([counts.flatten(), aux]).to(device)
    dist.all_reduce(packed)
    packed = packed.cpu()
    layer_counts = packed[:counts.numel()].view_as(counts) / (1 if routes_sequence_shard(plan) else plan.tp)
    moe_counts = layer_counts[[spec.is_moe_layer(i) for i in range(spec.num_layers)]]
    mean = moe_counts.mean(dim=1, keepdim=True).clamp(min=1e-12)
    stats = {"moe_aux_loss": float(packed[counts.numel():].sum()) / copies,
             "expert_tokens": [round(n) for n in moe_counts.sum(dim=0).tolist()],
             "expert_tokens_by_layer": [[round(n) for n in layer] for layer in moe_counts.tolist()],
             "expert_imbalance": float((moe_counts.max(dim=1, keepdim=True).values / mean).max())}
    if spec.router_bias_update_rate:
        stats["router_bias_absmax"] = update_router_biases(parts, layer_counts, device)
    return stats


def update_router_biases(parts: list[nn.Module], layer_counts: torch.Tensor, device: torch.device) -> float:
    """Move every local router's bias by the step's global load of its layer (`layer_counts`: layers × experts,
    the same on every rank); returns the largest |bias| over all layers after the update (collective)."""
    absmax = torch.zeros((), dtype=torch.float32, device=device)
    for index, block in moe_blocks(parts):
        block.router.update_bias(layer_counts[index])
        absmax = torch.maximum(absmax, block.router.expert_bias.abs().max().to(device))
    dist.all_reduce(absmax, op=dist.ReduceOp.MAX)  # the pipeline stages hold different layers
    return float(absmax)
