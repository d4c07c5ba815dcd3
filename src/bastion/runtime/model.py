"""A Llama-style decoder built from a ModelSpec, on the meta device, with a deterministic per-parameter init.

The module tree is the one the parallelism chain expects (torchtitan's layout): `tok_embeddings`, `layers` (a
ModuleDict keyed "0".."L-1" so a pipeline stage can delete the layers it does not own and keep the names),
`norm`, `output`. A pipeline stage is the same class with some of those set to None.

Deterministic init: every parameter is drawn from its own generator seeded by (seed, canonical name), so the
weights do not depend on how the model is split, sharded or wrapped: every plan starts bit-identical.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from bastion.runtime.preflight import check_runtime_supports
from bastion.specs.model import ModelSpec

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

#: prefixes that wrappers (activation checkpointing, torch.compile, FSDP1) insert into parameter names
_WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")


def canonical_name(name: str) -> str:
    """The parameter's name in the plain, unwrapped full model."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def _norm(spec: ModelSpec) -> nn.Module:
    # GPT/BLOOM-style models (bias = true) use LayerNorm with a bias; Llama-style models use RMSNorm
    if spec.bias:
        return nn.LayerNorm(spec.hidden_size, eps=spec.norm_eps)
    return nn.RMSNorm(spec.hidden_size, eps=spec.norm_eps)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def rope_table(seq_len: int, head_dim: int, theta: float = 10000.0, device: torch.device | None = None
               ) -> torch.Tensor:
    """cos and sin of RoPE angles, shape (2, seq_len, head_dim), rotate-half layout."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    angles_SD = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
    angles_SD = torch.cat((angles_SD, angles_SD), dim=-1)
    return torch.stack((angles_SD.cos(), angles_SD.sin()))


def sum_gradient_over(mesh: DeviceMesh, x: torch.Tensor) -> torch.Tensor:
    """`x` unchanged; backward sums its gradient over `mesh` (each rank used the replicated `x` for its own share
    of the work: Megatron's copy-to-tensor-parallel-region). A Replicate DTensor whose local gradient is declared
    Partial: torch's own reduction."""
    from torch.distributed.tensor import DTensor, Partial, Replicate

    return DTensor.from_local(x, mesh, [Replicate()], run_check=False).to_local(grad_placements=[Partial()])


def sum_over(mesh: DeviceMesh, x: torch.Tensor) -> torch.Tensor:
    """The sum of the partial results `x` over `mesh`; backward passes the (replicated) gradient unchanged
    (Megatron's reduce-from-tensor-parallel-region, what RowwiseParallel does to its output)."""
    from torch.distributed.tensor import DTensor, Partial, Replicate

    return DTensor.from_local(x, mesh, [Partial()], run_check=False).redistribute(mesh, [Replicate()]).to_local()


def gradient_in_own_placements(weight: torch.Tensor) -> torch.Tensor:
    """`weight` unchanged; backward hands its gradient over in `weight`'s own DTensor placements (a plain tensor:
    unchanged). DTensor's embedding backward gives a vocab-parallel table's gradient replicated, the whole table on
    every tensor-parallel rank, which a step that accumulates its micro-batches' gradients unreduced (a pipeline
    schedule, runtime/parallelize.py defers_gradient_reduction) would hold until their reduction; this rank's rows
    of it are a slice, no communication."""
    from torch.distributed.tensor import DTensor

    if not isinstance(weight, DTensor):
        return weight
    local = weight.to_local(grad_placements=weight.placements)
    return DTensor.from_local(local, weight.device_mesh, weight.placements, run_check=False, shape=weight.shape,
                              stride=weight.stride())


class Embedding(nn.Embedding):
    """A token table whose gradient keeps the table's tensor-parallel placements (`gradient_in_own_placements`)."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, gradient_in_own_placements(self.weight), self.padding_idx, self.max_norm,
                           self.norm_type, self.scale_grad_by_freq, self.sparse)


def rope_width(spec: ModelSpec) -> int:
    """Channels RoPE rotates per head: the whole head, or MLA's rotary part."""
    return spec.qk_rope_head_dim if spec.is_mla else spec.head_dim


class Attention(nn.Module):
    """GQA self-attention through SDPA. Head counts are inferred from the (possibly TP-sharded) projections.

    With `qk_norm` (Qwen3) each query and key head is RMSNorm'd over head_dim before RoPE, one weight of head_dim
    per norm shared by all heads: replicated over tp, where each rank normalises its own heads, so `tp_mesh` (set
    by parallelize) sums the weights' gradients over the tp ranks (HF's `replicated_with_grad_allreduce`)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.head_dim = spec.head_dim
        self.use_rope = spec.position_embedding == "rope"
        #: selective recompute: re-run the attention core (SDPA) in backward instead of keeping its inputs
        self.recompute_core = False
        #: context parallelism (runtime/context_parallel.py): this rank holds part of the sequence and gathers
        #: the keys/values of the rest; None = the whole sequence is local
        self.cp = None
        #: the tp sub-mesh when tensor parallelism splits the heads (set by parallelize)
        self.tp_mesh = None
        h = spec.hidden_size
        self.wq = nn.Linear(h, spec.q_width, bias=spec.bias)
        self.wk = nn.Linear(h, spec.kv_width, bias=spec.bias)
        self.wv = nn.Linear(h, spec.kv_width, bias=spec.bias)
        self.wo = nn.Linear(spec.q_width, h, bias=spec.bias)
        self.q_norm = nn.RMSNorm(spec.head_dim, eps=spec.norm_eps) if spec.qk_norm else None
        self.k_norm = nn.RMSNorm(spec.head_dim, eps=spec.norm_eps) if spec.qk_norm else None

    def _head_norm(self, norm: nn.RMSNorm, x_BSND: torch.Tensor) -> torch.Tensor:
        """`x` RMSNorm'd per head; under tp the weight's gradient is summed over the ranks' heads."""
        weight = norm.weight if self.tp_mesh is None else sum_gradient_over(self.tp_mesh, norm.weight)
        return F.rms_norm(x_BSND, (self.head_dim,), weight, norm.eps)

    def _core(self, q_BHSD: torch.Tensor, k_BHSD: torch.Tensor, v_BHSD: torch.Tensor) -> torch.Tensor:
        # GQA inside SDPA (flash kernels read each kv head for its whole query group): no repeated k/v copies
        # are materialised or kept for backward. With cp, the local queries attend to the gathered keys causally
        # by global position, chunk by chunk with a bottom-right causal bias (no mask tensor; context_parallel.py).
        if self.cp is not None:
            return self.cp.attention(q_BHSD, k_BHSD, v_BHSD)
        return F.scaled_dot_product_attention(q_BHSD, k_BHSD, v_BHSD, is_causal=True,
                                              enable_gqa=q_BHSD.shape[1] != k_BHSD.shape[1])

    def forward(self, x_BSH: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x_BSH.shape
        q = self.wq(x_BSH).view(batch, seq, -1, self.head_dim)
        k = self.wk(x_BSH).view(batch, seq, -1, self.head_dim)
        v = self.wv(x_BSH).view(batch, seq, -1, self.head_dim)
        if self.q_norm is not None:
            q, k = self._head_norm(self.q_norm, q), self._head_norm(self.k_norm, k)
        if self.use_rope:  # `rope` holds the angles of this rank's tokens (their global positions under cp)
            cos, sin = rope[0, :seq, None, :], rope[1, :seq, None, :]
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        return self._attend(q, k, v, batch, seq)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: int, seq: int) -> torch.Tensor:
        """The (B, S, heads, ·) queries, keys and values through the core, then the output projection."""
        if self.cp is not None:
            # K and V in one collective each way (one latency, as predict/estimate.py costs it), not two
            kv = self.cp.gather_sequence(torch.cat([k, v], dim=-1))
            k, v = kv.split([k.shape[-1], v.shape[-1]], dim=-1)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.recompute_core and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            out = checkpoint(self._core, q, k, v, use_reentrant=False)
        else:
            out = self._core(q, k, v)
        return self.wo(out.transpose(1, 2).reshape(batch, seq, -1))


class LatentAttention(Attention):
    """Multi-head latent attention (DeepSeek-V2/V3; HF DeepseekV3Attention, torchtitan's names): queries through a
    low-rank latent with its RMSNorm (or one projection when q_lora_rank is 0); keys and values rebuilt per head
    from one compressed latent (RMSNorm'd) plus a rotary key shared by every head; RoPE on the rotary part only
    (rotate-half layout, HF's rope_interleave = False); SDPA's default scale 1/sqrt(qk_nope + qk_rope).

    Tensor parallelism splits the heads: wq/wq_b and wkv_b colwise, wo rowwise; the down projections and their
    norms are replicated. `tp_group` (set by parallelize) sums the shared rotary key's gradient over the tp ranks,
    each of which used it for its own heads only."""

    def __init__(self, spec: ModelSpec) -> None:
        nn.Module.__init__(self)
        self.recompute_core = False
        self.cp = None
        self.tp_mesh = None
        self.nope_dim, self.rope_dim, self.v_dim = spec.qk_nope_head_dim, spec.qk_rope_head_dim, spec.v_head_dim
        self.kv_rank = spec.kv_lora_rank
        h, heads = spec.hidden_size, spec.num_heads
        self.q_latent = spec.q_lora_rank > 0
        if self.q_latent:
            self.wq_a = nn.Linear(h, spec.q_lora_rank, bias=False)
            self.q_norm = nn.RMSNorm(spec.q_lora_rank, eps=spec.norm_eps)
            self.wq_b = nn.Linear(spec.q_lora_rank, heads * spec.head_dim, bias=False)
        else:
            self.wq = nn.Linear(h, heads * spec.head_dim, bias=False)
        self.wkv_a = nn.Linear(h, spec.kv_lora_rank + spec.qk_rope_head_dim, bias=False)
        self.kv_norm = nn.RMSNorm(spec.kv_lora_rank, eps=spec.norm_eps)
        self.wkv_b = nn.Linear(spec.kv_lora_rank, heads * (spec.qk_nope_head_dim + spec.v_head_dim), bias=False)
        self.wo = nn.Linear(heads * spec.v_head_dim, h, bias=False)

    def forward(self, x_BSH: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x_BSH.shape
        q = self.wq_b(self.q_norm(self.wq_a(x_BSH))) if self.q_latent else self.wq(x_BSH)
        q = q.view(batch, seq, -1, self.nope_dim + self.rope_dim)
        q_nope, q_rot = q.split((self.nope_dim, self.rope_dim), dim=-1)
        latent, k_rot = self.wkv_a(x_BSH).split((self.kv_rank, self.rope_dim), dim=-1)
        kv = self.wkv_b(self.kv_norm(latent)).view(batch, seq, -1, self.nope_dim + self.v_dim)
        k_nope, v = kv.split((self.nope_dim, self.v_dim), dim=-1)
        cos, sin = rope[0, :seq, None, :], rope[1, :seq, None, :]
        q_rot = q_rot * cos + rotate_half(q_rot) * sin
        k_rot = k_rot if self.tp_mesh is None else sum_gradient_over(self.tp_mesh, k_rot)
        k_rot = k_rot.unsqueeze(2)
        k_rot = k_rot * cos + rotate_half(k_rot) * sin
        q = torch.cat((q_nope, q_rot), dim=-1)
        k = torch.cat((k_nope, k_rot.expand(-1, -1, k_nope.shape[2], -1)), dim=-1)
        return self._attend(q, k, v, batch, seq)


class FeedForward(nn.Module):
    """SwiGLU (w1 gate, w3 up, w2 down) or GELU (w1 up, w2 down); `width` defaults to ffn_hidden_size."""

    def __init__(self, spec: ModelSpec, width: int | None = None) -> None:
        super().__init__()
        h, f = spec.hidden_size, width or spec.ffn_hidden_size
        self.swiglu = spec.ffn_type == "swiglu"
        self.w1 = nn.Linear(h, f, bias=spec.bias)
        self.w2 = nn.Linear(f, h, bias=spec.bias)
        self.w3 = nn.Linear(h, f, bias=spec.bias) if self.swiglu else None

    def forward(self, x_BSH: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            return self.w2(F.silu(self.w1(x_BSH)) * self.w3(x_BSH))
        return self.w2(F.gelu(self.w1(x_BSH)))


class TransformerBlock(nn.Module):
    """Attention and an MLP: `feed_forward` (dense), or `moe` (runtime/moe.py) for an MoE layer of the spec."""

    def __init__(self, spec: ModelSpec, index: int = 0) -> None:
        super().__init__()
        from bastion.runtime.moe import MoE

        self.attention_norm = _norm(spec)
        self.attention = LatentAttention(spec) if spec.is_mla else Attention(spec)
        self.ffn_norm = _norm(spec)
        moe = spec.is_moe_layer(index)
        self.feed_forward: FeedForward | None = None if moe else FeedForward(spec)
        self.moe: MoE | None = MoE(spec) if moe else None

    def forward(self, x_BSH: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        x_BSH = x_BSH + self.attention(self.attention_norm(x_BSH), rope)
        mlp = self.moe if self.moe is not None else self.feed_forward
        return x_BSH + mlp(self.ffn_norm(x_BSH))


class Transformer(nn.Module):
    """The whole decoder, or one pipeline stage of it (missing parts are None)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        check_runtime_supports(spec)
        self.spec = spec
        self.tok_embeddings: nn.Embedding | None = Embedding(spec.vocab_size, spec.hidden_size)
        self.pos_embeddings: nn.Embedding | None = (
            nn.Embedding(spec.seq_len, spec.hidden_size) if spec.position_embedding == "learned" else None)
        self.layers = nn.ModuleDict({str(i): TransformerBlock(spec, i) for i in range(spec.num_layers)})
        self.norm: nn.Module | None = _norm(spec)
        self.output: nn.Linear | None = (
            None if spec.tied_embeddings else nn.Linear(spec.hidden_size, spec.vocab_size, bias=False))
        # recomputed in init_weights (buffers on the meta device have no values)
        self.register_buffer("rope", torch.empty(2, spec.seq_len, rope_width(spec)), persistent=False)
        #: context parallelism: the input holds this rank's chunks of each sequence (set by parallelize)
        self.cp = None

    def forward(self, tokens_or_hidden: torch.Tensor) -> torch.Tensor:
        seq, device = tokens_or_hidden.shape[1], tokens_or_hidden.device
        positions = None if self.cp is None else self.cp.positions(seq, self.rope.device)
        if self.tok_embeddings is not None:
            h = self.tok_embeddings(tokens_or_hidden)
            if self.pos_embeddings is not None:
                h = h + self.pos_embeddings(torch.arange(seq, device=device) if positions is None else positions)
        else:
            h = tokens_or_hidden
        rope = self.rope if positions is None else self.rope.index_select(1, positions)
        for layer in self.layers.values():
            h = layer(h, rope)
        if self.norm is not None:
            h = self.norm(h)
        if self.output is not None:
            return self.output(h)
        if self.spec.tied_embeddings and self.norm is not None:
            return F.linear(h, self.tok_embeddings.weight)
        return h


def build_model(spec: ModelSpec) -> Transformer:
    """The full model on the meta device (no memory); materialise with `to_empty` + `init_weights`."""
    with torch.device("meta"):
        return Transformer(spec)


def _param_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _init_std(name: str, spec: ModelSpec) -> float | None:
    """Std of a normal init, or None for constant-initialised tensors (norm weights 1, biases 0)."""
    if "norm" in name:
        return None
    if name.endswith(".bias"):
        return None
    if name.endswith(("wo.weight", "w2.weight", "experts.w2")):
        # residual-branch outputs are scaled down with depth (GPT-2 / Megatron)
        return 0.02 / math.sqrt(2 * spec.num_layers)
    return 0.02


def full_init_tensor(name: str, shape: torch.Size, spec: ModelSpec, seed: int,
                     device: torch.device) -> torch.Tensor:
    """The full (unsharded) fp32 initial value of one parameter."""
    std = _init_std(name, spec)
    if std is None:
        value = 0.0 if (name.endswith(".bias") or not name.endswith("weight")) else 1.0
        return torch.full(shape, value, dtype=torch.float32, device=device)
    generator = torch.Generator(device=device)
    generator.manual_seed(_param_seed(seed, name))
    return torch.randn(shape, generator=generator, dtype=torch.float32, device=device) * std


@torch.no_grad()
def init_weights(module: nn.Module, spec: ModelSpec, seed: int) -> None:
    """Fill every parameter (plain, DTensor-sharded or FSDP-sharded) and the buffers deterministically."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    for name, param in module.named_parameters():
        cname = canonical_name(name)
        full = full_init_tensor(cname, param.shape, spec, seed, param.device)
        if isinstance(param, DTensor):
            try:  # src_data_rank=None: every rank already holds the same full tensor, so slice locally
                local = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
            except TypeError:  # older torch without src_data_rank
                local = distribute_tensor(full, param.device_mesh, param.placements)
            param.to_local().copy_(local.to_local())
        else:
            param.copy_(full)
    for name, buffer in module.named_buffers():
        leaf = canonical_name(name).split(".")[-1]
        if leaf == "rope":
            buffer.copy_(rope_table(spec.seq_len, rope_width(spec), spec.rope_theta, device=buffer.device))
        elif leaf == "expert_bias":  # the aux-loss-free routing bias starts at zero (runtime/moe.py)
            buffer.zero_()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
