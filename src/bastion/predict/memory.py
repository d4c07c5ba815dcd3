"""Device memory of a training step: model states (exact, per rank) and activations (Korthikanti et al. 2022).

Model states follow the ZeRO paper (Rajbhandari et al. 2020, Sec. 3.1 and Fig. 1): mixed precision keeps
2 (bf16/fp16 parameters) + 2 (gradients) + 12 (fp32 master copy, Adam m and v) bytes per parameter; pure fp32
keeps 4 + 4 + 8. ZeRO stage 1 shards the optimizer state over the data-parallel group, 2 also the gradients,
3 (FSDP full shard) also the parameters.

Activations per layer per token follow Korthikanti et al. 2022, Sec. 4 and Table 2, generalised from GPT
(4h GELU MLP, multi-head attention, dropout, unfused softmax) to GQA, SwiGLU, no dropout and flash attention:
with those four set back to GPT's, `activation_bytes_per_token` reproduces sbh(34 + 5as/h) and its TP, SP,
selective and full recompute variants exactly (see tests/unit/test_memory_activations.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import lru_cache

from bastion.predict.options import PredictOptions
from bastion.predict.schedule import chunks_of_stage, layer_microbatches_in_flight
from bastion.specs.model import ModelSpec
from bastion.specs.plan import ParallelPlan

# ---- model states --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ParamShape:
    """One parameter tensor as the runtime builds it (torch Linear layout: (out, in))."""

    name: str
    shape: tuple[int, ...]
    #: dimension split by tensor parallelism (0 = colwise / vocab-parallel, 1 = rowwise), None = replicated
    tp_dim: int | None = None


def layer_param_shapes(model: ModelSpec) -> list[ParamShape]:
    """The parameters of one transformer block, separate q/k/v and MLP projections (torchtitan layout)."""
    h, q, kv, f = model.hidden_size, model.q_width, model.kv_width, model.ffn_hidden_size
    shapes = [ParamShape("attention_norm.weight", (h,)),
              ParamShape("attention.wq.weight", (q, h), 0),
              ParamShape("attention.wk.weight", (kv, h), 0),
              ParamShape("attention.wv.weight", (kv, h), 0),
              ParamShape("attention.wo.weight", (h, q), 1),
              ParamShape("ffn_norm.weight", (h,))]
    if model.num_experts:
        ef = model.expert_ffn_hidden_size or f
        shapes.append(ParamShape("moe.router.weight", (model.num_experts, h)))
        for name in ("w1", "w3", "w2") if model.ffn_matrices == 3 else ("w1", "w2"):
            shape = (model.num_experts, h, ef) if name == "w2" else (model.num_experts, ef, h)
            shapes.append(ParamShape(f"moe.experts.{name}", shape))
    else:
        shapes.append(ParamShape("feed_forward.w1.weight", (f, h), 0))
        if model.ffn_matrices == 3:
            shapes.append(ParamShape("feed_forward.w3.weight", (f, h), 0))
        shapes.append(ParamShape("feed_forward.w2.weight", (h, f), 1))
    if model.bias:
        shapes += [ParamShape("attention_norm.bias", (h,)), ParamShape("ffn_norm.bias", (h,)),
                   ParamShape("attention.wq.bias", (q,), 0), ParamShape("attention.wk.bias", (kv,), 0),
                   ParamShape("attention.wv.bias", (kv,), 0), ParamShape("attention.wo.bias", (h,))]
        if not model.num_experts:
            shapes.append(ParamShape("feed_forward.w1.bias", (f,), 0))
            if model.ffn_matrices == 3:
                shapes.append(ParamShape("feed_forward.w3.bias", (f,), 0))
            shapes.append(ParamShape("feed_forward.w2.bias", (h,)))
    return shapes


def embedding_param_shapes(model: ModelSpec) -> list[ParamShape]:
    shapes = [ParamShape("tok_embeddings.weight", (model.vocab_size, model.hidden_size), 0)]
    if model.position_embedding == "learned":
        shapes.append(ParamShape("pos_embeddings.weight", (model.seq_len, model.hidden_size)))
    return shapes


def head_param_shapes(model: ModelSpec, include_output: bool) -> list[ParamShape]:
    h = model.hidden_size
    shapes = [ParamShape("norm.weight", (h,))]
    if model.bias:
        shapes.append(ParamShape("norm.bias", (h,)))
    if include_output:
        shapes.append(ParamShape("output.weight", (model.vocab_size, h), 0))
    return shapes


def chunk_length(size: int, parts: int, index: int) -> int:
    """Length of piece `index` when torch.chunk splits `size` into `parts` (DTensor Shard and FSDP2 do this)."""
    piece = -(-size // parts)
    return max(0, min(piece, size - index * piece))


def _local_numel(p: ParamShape, tp: int, tp_rank: int, dp: int, dp_rank: int, dp_sharded: bool) -> int:
    shape = list(p.shape)
    if p.tp_dim is not None and tp > 1:
        shape[p.tp_dim] = chunk_length(shape[p.tp_dim], tp, tp_rank)
    if dp_sharded and dp > 1:
        shape[0] = chunk_length(shape[0], dp, dp_rank)  # FSDP2 shards the (TP-local) tensor on dim 0
    n = 1
    for d in shape:
        n *= d
    return n


def stage_param_shapes(model: ModelSpec, plan: ParallelPlan, stage: int) -> list[tuple[ParamShape, int]]:
    """(parameter, how many copies of it) held by pipeline rank `stage`."""
    chunks = chunks_of_stage(plan.pp_schedule, plan.pp, plan.vpp, stage)
    num_chunks = plan.pp * plan.vpp
    layers = len(chunks) * model.num_layers // num_chunks
    held: list[tuple[ParamShape, int]] = [(p, layers) for p in _layer_shapes(model)]
    has_first, has_last = 0 in chunks, (num_chunks - 1) in chunks
    if has_first:
        held += [(p, 1) for p in embedding_param_shapes(model)]
    if has_last:
        # tied embeddings share one tensor when the same rank holds both ends; otherwise the last stage keeps
        # its own copy of the table for the LM head (Megatron's tied-weight all-reduce keeps them equal)
        include_output = not (model.tied_embeddings and has_first)
        held += [(p, 1) for p in head_param_shapes(model, include_output)]
    return held


def state_bytes_per_param(precision: str) -> tuple[int, int, int]:
    """(parameter, gradient, optimizer) bytes per parameter: ZeRO's 2 + 2 + 12 mixed, or 4 + 4 + 8 fp32."""
    return (4, 4, 8) if precision == "fp32" else (2, 2, 12)


def model_state_bytes(model: ModelSpec, plan: ParallelPlan, stage: int, dp_rank: int = 0,
                      tp_rank: int = 0) -> dict[str, int]:
    """Exact bytes of parameters, gradients and optimizer state on one rank of pipeline stage `stage`.

    Sharding is per tensor as PyTorch does it: tensor parallelism splits wq/wk/wv/w1/w3 and the vocabulary
    tables on dim 0 and wo/w2 on dim 1 (torch.chunk sizes); norms (and row-parallel biases) are replicated;
    ZeRO/FSDP then splits each TP-local tensor on dim 0 over the data-parallel ranks. The optimizer is Adam:
    m and v per parameter (the per-tensor `step` scalars are not counted) plus, under mixed precision, the fp32
    master copy. Rank 0 of each group holds the largest shard.
    """
    if not 0 <= stage < plan.pp:
        raise ValueError(f"stage {stage} out of range for pp = {plan.pp}")
    p_bytes, g_bytes, o_bytes = state_bytes_per_param(plan.precision)
    z = plan.zero_stage
    params = grads = optimizer = 0
    for shape, copies in stage_param_shapes(model, plan, stage):
        full = _local_numel(shape, plan.tp, tp_rank, plan.dp, dp_rank, dp_sharded=False)
        sharded = _local_numel(shape, plan.tp, tp_rank, plan.dp, dp_rank, dp_sharded=True)
        params += copies * (sharded if z >= 3 else full)
        grads += copies * (sharded if z >= 2 else full)
        optimizer += copies * (sharded if z >= 1 else full)
    return {"params": params * p_bytes, "grads": grads * g_bytes, "optimizer": optimizer * o_bytes}


def stage_states(model: ModelSpec, plan: ParallelPlan, stage: int) -> tuple[int, int, int]:
    """(params, grads, optimizer) bytes on rank 0 of a stage, cached by what they depend on: the planner varies
    batch, recompute and schedule far more often than the degrees that shape the model states."""
    chunks = chunks_of_stage(plan.pp_schedule, plan.pp, plan.vpp, stage)
    last = plan.pp * plan.vpp - 1
    return _states_of_role(model, plan.tp, plan.dp, plan.zero_stage, plan.precision,
                           len(chunks) * model.num_layers // (plan.pp * plan.vpp), 0 in chunks, last in chunks)


@lru_cache(maxsize=8192)
def _states_of_role(model: ModelSpec, tp: int, dp: int, zero_stage: int, precision: str, layers: int,
                    has_first: bool, has_last: bool) -> tuple[int, int, int]:
    p_bytes, g_bytes, o_bytes = state_bytes_per_param(precision)
    held = [(p, layers) for p in _layer_shapes(model)]
    if has_first:
        held += [(p, 1) for p in embedding_param_shapes(model)]
    if has_last:
        held += [(p, 1) for p in head_param_shapes(model, not (model.tied_embeddings and has_first))]
    z = zero_stage
    params = grads = optimizer = 0
    for shape, copies in held:
        full = _local_numel(shape, tp, 0, dp, 0, dp_sharded=False)
        sharded = _local_numel(shape, tp, 0, dp, 0, dp_sharded=True)
        params += copies * (sharded if z >= 3 else full)
        grads += copies * (sharded if z >= 2 else full)
        optimizer += copies * (sharded if z >= 1 else full)
    return params * p_bytes, grads * g_bytes, optimizer * o_bytes


@lru_cache(maxsize=1024)
def _layer_shapes(model: ModelSpec) -> tuple[ParamShape, ...]:
    return tuple(layer_param_shapes(model))


@lru_cache(maxsize=4096)
def layer_numel(model: ModelSpec, tp: int) -> int:
    """Parameters of one layer on one tensor-parallel rank (rank 0, the largest)."""
    return sum(_local_numel(p, tp, 0, 1, 0, False) for p in _layer_shapes(model))


def stage_layer_count(model: ModelSpec, plan: ParallelPlan, stage: int) -> int:
    return len(chunks_of_stage(plan.pp_schedule, plan.pp, plan.vpp, stage)) * model.num_layers // (
        plan.pp * plan.vpp)


# ---- activations --------------------------------------------------------------------------------

def activation_dtype_bytes(precision: str) -> int:
    """Activations are kept in the compute dtype; fp8 training keeps them in bf16."""
    return 4 if precision == "fp32" else 2


def activation_bytes_per_token(model: ModelSpec, seq_len: int, tp: int, sequence_parallel: bool, recompute: str,
                               precision: str = "bf16", options: PredictOptions = PredictOptions()) -> float:
    """Bytes one layer keeps for backward per token of a micro-batch (per device, before cp and pipelining).

    Korthikanti et al. 2022, Sec. 4.1, per layer: norms' inputs, QKV input, MLP input (the "replicated" part,
    split by tp only under sequence parallelism); Q, K, V, the output-projection input and the MLP's
    intermediate tensors (split by tp); the attention core's s×s scores (only without flash attention).
    """
    a = activation_dtype_bytes(precision)
    h, f, heads = model.hidden_size, model.ffn_hidden_size, model.num_heads
    sp_split = tp if sequence_parallel else 1
    if recompute == "full":
        return a * h / sp_split  # only each layer's input (Sec. 4.3)
    # replicated in the TP group unless SP: two norm inputs, the QKV input and the MLP input (4h elements)
    replicated = 4 * h * a + (2 * h if options.dropout else 0)  # + two 1-byte dropout masks
    # split by tp: Q, K, V; the output-projection input; the MLP's intermediates
    mlp = (2 if model.ffn_type == "gelu" else 4) * f  # GELU: fc1 out + GELU out; SwiGLU: x1, x3, silu, product
    split = a * (model.q_width + 2 * model.kv_width + model.q_width + mlp)
    if options.flash_attention:
        core = 4 * heads  # fp32 log-sum-exp per query and head
    elif recompute == "selective":
        core = 0  # the score matrix is what selective recomputation drops (Sec. 4.2)
    else:
        # softmax output (a bytes) per score; with dropout also its 1-byte mask and the dropped-out copy
        core = heads * seq_len * (2 * a + 1 if options.dropout else a)
    return replicated / sp_split + (split + core) / tp


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per device."""

    params: float
    grads: float
    optimizer: float
    activations: float
    logits: float
    comm_buffers: float
    allocator_overhead: float
    total: float

    @classmethod
    def of(cls, **parts: float) -> MemoryBreakdown:
        return cls(**parts, total=sum(parts.values()))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


MEMORY_FIELDS = tuple(f.name for f in fields(MemoryBreakdown))


def stage_memory(model: ModelSpec, plan: ParallelPlan, seq_len: int, stage: int, is_gpu: bool,
                 options: PredictOptions) -> MemoryBreakdown:
    """Peak memory of one rank of pipeline stage `stage`."""
    params, grads, optimizer = stage_states(model, plan, stage)
    a = activation_dtype_bytes(plan.precision)
    tokens = plan.micro_batch * seq_len / plan.cp  # tokens of one micro-batch on this device
    in_flight = layer_microbatches_in_flight(plan.pp_schedule, plan.pp, plan.vpp, plan.num_microbatches, stage,
                                             model.num_layers)
    per_token = activation_bytes_per_token(model, seq_len, plan.tp, plan.sequence_parallel, plan.recompute,
                                           plan.precision, options)
    activations = in_flight * tokens * per_token
    if plan.recompute != "none":
        # backward re-materialises one layer's full activations at a time on top of the checkpoints
        activations += tokens * activation_bytes_per_token(model, seq_len, plan.tp, plan.sequence_parallel,
                                                           "none", plan.precision, options)
    chunks = chunks_of_stage(plan.pp_schedule, plan.pp, plan.vpp, stage)
    logits = 0.0
    if plan.pp * plan.vpp - 1 in chunks:
        # plain: logits in the compute dtype, their fp32 copy for the loss and the fp32 gradient; fused: the
        # logits and their gradient written in place; vocab-parallel over tp either way
        per_entry = a if options.fused_cross_entropy else a + 4 + 4
        logits = tokens * model.vocab_size / plan.tp * per_entry
    comm = 0.0
    layer_params = layer_numel(model, plan.tp)
    if plan.dp > 1 and plan.zero_stage == 3:
        comm += 3 * a * layer_params  # two gathered layers (current + prefetched) and one unsharded gradient
    elif plan.dp > 1:
        comm += 2 * options.dp_bucket_bytes
    if plan.tp > 1:
        comm += 2 * tokens * model.hidden_size * a  # gathered sequence / all-reduce staging
    if plan.pp > 1:
        comm += 2 * tokens * model.hidden_size * a / plan.tp  # p2p send and receive buffers
    overhead = options.fragmentation * (activations + logits + comm)
    if is_gpu:
        overhead += options.runtime_reserve_gib * 2**30
    return MemoryBreakdown.of(params=float(params), grads=float(grads), optimizer=float(optimizer),
                              activations=activations, logits=logits, comm_buffers=comm,
                              allocator_overhead=overhead)
