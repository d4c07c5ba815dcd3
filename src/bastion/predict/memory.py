"""Device memory of a training step: model states (exact, per rank) and activations (per saved tensor).

Model states follow the ZeRO paper (Rajbhandari et al. 2020, Sec. 3.1 and Fig. 1): mixed precision keeps
2 (bf16/fp16 parameters) + 2 (gradients) + 12 (fp32 master copy, Adam m and v) bytes per parameter; pure fp32
keeps 4 + 4 + 8. ZeRO stage 1 shards the optimizer state over the data-parallel group, 2 also the gradients,
3 (FSDP full shard) also the parameters.

Activations are enumerated per tensor, as autograd keeps them for backward (`layer_saved_tensors`): norm
inputs and statistics, matmul inputs, the attention core's Q/K/V/output/log-sum-exp, the MLP's elementwise
inputs. The enumeration equals, byte for byte, what bastion's runtime layer keeps on CPU (composite RMSNorm,
tests/unit/test_runtime_memory.py) and what one bf16 layer kept on an H200 (fused RMSNorm, flash SDPA;
the calibration's `layer` rows, tests/unit/test_memory_activations.py). With GPT's choices (GELU MLP,
multi-head attention, dropout, unfused softmax) and the norm statistics left out, it reproduces Korthikanti
et al. 2022 (Sec. 4, Table 2): sbh(34 + 5as/h) and its TP, SP, selective and full recompute variants.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache

from bastion.predict.comm import fsdp_schedule
from bastion.predict.options import PredictOptions
from bastion.predict.schedule import (
    layer_microbatches_in_flight,
    representative_stages,
    stage_roles,
)
from bastion.specs.model import ModelSpec
from bastion.specs.plan import ParallelPlan, chunk_layer_counts
from bastion.specs.schedules import chunks_of_stage

# ---- model states --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ParamShape:
    """One parameter tensor as the runtime builds it (torch Linear layout: (out, in))."""

    name: str
    shape: tuple[int, ...]
    #: dimension split by tensor parallelism (0 = colwise / vocab-parallel, 1 = rowwise), None = replicated
    tp_dim: int | None = None
    #: a routed-expert tensor: expert parallelism splits its dim 0 (the experts) over ep ranks, and ZeRO/FSDP
    #: then shards the local experts over the dp × cp / ep ranks that hold the same experts
    expert: bool = False
    #: an expert tensor's inner-width dimension, which expert tensor parallelism (etp) splits
    etp_dim: int | None = None


def _mlp_shapes(prefix: str, h: int, f: int, gated: bool, bias: bool) -> list[ParamShape]:
    shapes = [ParamShape(f"{prefix}.w1.weight", (f, h), 0)]
    if gated:
        shapes.append(ParamShape(f"{prefix}.w3.weight", (f, h), 0))
    shapes.append(ParamShape(f"{prefix}.w2.weight", (h, f), 1))
    if bias:
        shapes.append(ParamShape(f"{prefix}.w1.bias", (f,), 0))
        if gated:
            shapes.append(ParamShape(f"{prefix}.w3.bias", (f,), 0))
        shapes.append(ParamShape(f"{prefix}.w2.bias", (h,)))
    return shapes


def layer_param_shapes(model: ModelSpec, moe: bool | None = None) -> list[ParamShape]:
    """The parameters of one transformer block, separate q/k/v and MLP projections (torchtitan layout); `moe`:
    a mixture-of-experts block (default: when the model has experts) or one of its leading dense blocks.

    An MoE block holds the router (num_experts × h), the routed experts as three (num_experts, ·, ·) tensors that
    expert parallelism splits on dim 0, and the shared experts as one MLP of their summed width
    (runtime/moe.py)."""
    h, q, kv, f = model.hidden_size, model.q_width, model.kv_width, model.ffn_hidden_size
    moe = bool(model.num_experts) if moe is None else moe
    attention = _mla_shapes(model) if model.is_mla else [ParamShape("attention.wq.weight", (q, h), 0),
                                                          ParamShape("attention.wk.weight", (kv, h), 0),
                                                          ParamShape("attention.wv.weight", (kv, h), 0),
                                                          ParamShape("attention.wo.weight", (h, q), 1)]
    if model.qk_norm:  # Qwen3's per-head q/k RMSNorms: one head_dim weight each, replicated over tp
        attention += [ParamShape("attention.q_norm.weight", (model.head_dim,)),
                      ParamShape("attention.k_norm.weight", (model.head_dim,))]
    shapes = [ParamShape("attention_norm.weight", (h,)), *attention, ParamShape("ffn_norm.weight", (h,))]
    gated = model.ffn_matrices == 3
    if moe:
        ef, e = model.expert_width, model.num_experts
        shapes.append(ParamShape("moe.router.weight", (e, h)))
        for name in ("w1", "w3", "w2") if gated else ("w1", "w2"):
            shapes.append(ParamShape(f"moe.experts.{name}", (e, h, ef) if name == "w2" else (e, ef, h),
                                     expert=True, etp_dim=2 if name == "w2" else 1))
        if model.num_shared_experts:
            shapes += _mlp_shapes("moe.shared_experts", h, model.num_shared_experts * ef, gated, False)
    else:
        shapes += _mlp_shapes("feed_forward", h, f, gated, model.bias)
    if model.bias:
        shapes += [ParamShape("attention_norm.bias", (h,)), ParamShape("ffn_norm.bias", (h,))]
        if not model.is_mla:  # MLA's projections have no biases (DeepSeek-V3; runtime/model.py LatentAttention)
            shapes += [ParamShape("attention.wq.bias", (q,), 0), ParamShape("attention.wk.bias", (kv,), 0),
                       ParamShape("attention.wv.bias", (kv,), 0), ParamShape("attention.wo.bias", (h,))]
    return shapes


def _mla_shapes(model: ModelSpec) -> list[ParamShape]:
    """Multi-head latent attention's tensors as runtime/model.py's LatentAttention holds them: tensor
    parallelism splits the per-head up projections (wq_b or wq, wkv_b) colwise and wo rowwise; the down
    projections to the latents and the latents' norms are replicated over tp."""
    h, heads = model.hidden_size, model.num_heads
    q_heads = heads * (model.qk_nope_head_dim + model.qk_rope_head_dim)
    if model.q_lora_rank:
        query = [ParamShape("attention.wq_a.weight", (model.q_lora_rank, h)),
                 ParamShape("attention.q_norm.weight", (model.q_lora_rank,)),
                 ParamShape("attention.wq_b.weight", (q_heads, model.q_lora_rank), 0)]
    else:
        query = [ParamShape("attention.wq.weight", (q_heads, h), 0)]
    return [*query,
            ParamShape("attention.wkv_a.weight", (model.kv_lora_rank + model.qk_rope_head_dim, h)),
            ParamShape("attention.kv_norm.weight", (model.kv_lora_rank,)),
            ParamShape("attention.wkv_b.weight", (heads * (model.qk_nope_head_dim + model.v_head_dim),
                                                  model.kv_lora_rank), 0),
            ParamShape("attention.wo.weight", (h, heads * model.v_head_dim), 1)]


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


def _local_numel(p: ParamShape, tp: int, tp_rank: int, dp: int, dp_rank: int, dp_sharded: bool, ep: int = 1,
                 etp: int = 1) -> int:
    """Elements of `p` on one rank; `dp_rank` is the shard index among the `dp` (dp × cp) ranks, of which
    consecutive groups of `ep` split the experts (runtime/mesh.py: ep is innermost in the data-parallel ranks);
    etp splits each expert's inner width (etp rank = tp_rank mod etp).

    When ep does not divide dp (ParallelPlan.folds_experts) the experts' grid is folded over all tp × dp ranks of
    the stage as Megatron-Core lays it out: with the stage's ranks numbered tp innermost, etp is innermost, then
    ep, then the expert-data-parallel ranks that ZeRO shards over."""
    shape = list(p.shape)
    if p.expert and ep > 1 and dp % ep:
        flat = tp_rank + tp * dp_rank
        if p.etp_dim is not None and etp > 1:
            shape[p.etp_dim] = chunk_length(shape[p.etp_dim], etp, flat % etp)
        shape[0] = chunk_length(shape[0], ep, flat // etp % ep)
        edp = max(1, tp * dp // (ep * etp))
        if dp_sharded and edp > 1:
            shape[0] = chunk_length(shape[0], edp, flat // (etp * ep))
        return math.prod(shape)
    if p.tp_dim is not None and tp > 1:
        shape[p.tp_dim] = chunk_length(shape[p.tp_dim], tp, tp_rank)
    if p.etp_dim is not None and etp > 1:
        shape[p.etp_dim] = chunk_length(shape[p.etp_dim], etp, tp_rank % etp)
    if p.expert and ep > 1:
        shape[0] = chunk_length(shape[0], ep, dp_rank % ep)
        dp, dp_rank = dp // ep, dp_rank // ep
    if dp_sharded and dp > 1:
        shape[0] = chunk_length(shape[0], dp, dp_rank)  # FSDP2 shards the (TP-local) tensor on dim 0
    n = 1
    for d in shape:
        n *= d
    return n


def stage_param_shapes(model: ModelSpec, plan: ParallelPlan, stage: int) -> list[tuple[ParamShape, int]]:
    """(parameter, how many copies of it) held by pipeline rank `stage`."""
    counts = plan.chunk_layers(model)
    layers, has_first, has_last = stage_roles(model.num_layers, plan.pp_schedule, plan.pp, plan.vpp, counts)[stage]
    dense = stage_dense_layers(model, plan.pp_schedule, plan.pp, plan.vpp, stage, counts)
    held: list[tuple[ParamShape, int]] = [(p, layers - dense) for p in _layer_shapes(model)]
    if dense:
        held += [(p, dense) for p in _layer_shapes(model, False)]
    if has_first:
        held += [(p, 1) for p in embedding_param_shapes(model)]
    if has_last:
        # tied embeddings share one tensor when the same rank holds both ends; otherwise the last stage keeps
        # its own copy of the table for the LM head (Megatron's tied-weight all-reduce keeps them equal)
        include_output = not (model.tied_embeddings and has_first)
        held += [(p, 1) for p in head_param_shapes(model, include_output)]
    return held


def state_bytes_per_param(precision: str, fp32_gradients: bool = False) -> tuple[int, int, int]:
    """(parameter, gradient, optimizer) bytes per parameter: ZeRO's 2 + 2 + 12 mixed, or 4 + 4 + 8 fp32; mixed
    with fp32 gradients (PredictOptions.fp32_gradients: bastion's runtime) 2 + 4 + 12."""
    if precision == "fp32":
        return 4, 4, 8
    return (2, 4, 12) if fp32_gradients else (2, 2, 12)


def held_whole_in_step(plan: ParallelPlan, runtime_fsdp: bool) -> bool:
    """Whether a rank holds its parameters gathered and its gradients whole (tensor-parallel-local, not sharded
    over dp × cp) during a step, whatever its ZeRO stage: where bastion's runtime (`runtime_fsdp`:
    PredictOptions.runtime_fsdp) reduces the gradients once per step (comm.py `fsdp_schedule`, the one home of
    that rule), FSDP2's gradient sync and resharding after backward are off for every micro-batch before, so the
    gradients accumulate unsharded and the parameters stay gathered until that reduction. Under a pipeline schedule
    that is every ZeRO stage (ZeRO-2 and 3 held as ZeRO 0 holds them); without one ZeRO 0 and 1, which ZeRO's
    sharding already counts whole."""
    if not runtime_fsdp or plan.shard_degree <= 1:
        return False
    return fsdp_schedule(plan).reduces_once > 0


def model_state_bytes(model: ModelSpec, plan: ParallelPlan, stage: int, dp_rank: int = 0,
                      tp_rank: int = 0, cp_rank: int = 0, runtime_fsdp: bool = False) -> dict[str, int]:
    """Exact bytes of parameters, gradients and optimizer state on one rank of pipeline stage `stage`.

    Sharding is per tensor as PyTorch does it: tensor parallelism splits wq/wk/wv/w1/w3 and the vocabulary
    tables on dim 0 and wo/w2 on dim 1 (torch.chunk sizes); norms (and row-parallel biases) are replicated;
    ZeRO/FSDP then splits each TP-local tensor on dim 0 over the dp × cp ranks (shard index dp_rank·cp + cp_rank,
    as torchtitan's dp_shard_cp mesh and bastion's runtime order them). The optimizer is Adam:
    m and v per parameter (the per-tensor `step` scalars are not counted) plus, under mixed precision, the fp32
    master copy. Rank 0 of each group holds the largest shard. `runtime_fsdp`: the parameters and gradients as
    bastion's runtime holds them during a step (`held_whole_in_step`), which a pipeline holds whole; otherwise
    ZeRO's sharding of them.
    """
    if not 0 <= stage < plan.pp:
        raise ValueError(f"stage {stage} out of range for pp = {plan.pp}")
    p_bytes, g_bytes, o_bytes = state_bytes_per_param(plan.precision)
    sharded_params, sharded_grads = _sharded_params_and_grads(plan.zero_stage,
                                                              held_whole_in_step(plan, runtime_fsdp))
    params = grads = optimizer = 0
    shards, shard = plan.shard_degree, dp_rank * plan.cp + cp_rank
    for shape, copies in stage_param_shapes(model, plan, stage):
        full = _local_numel(shape, plan.tp, tp_rank, shards, shard, dp_sharded=False, ep=plan.ep, etp=plan.etp)
        sharded = _local_numel(shape, plan.tp, tp_rank, shards, shard, dp_sharded=True, ep=plan.ep, etp=plan.etp)
        params += copies * (sharded if sharded_params else full)
        grads += copies * (sharded if sharded_grads else full)
        optimizer += copies * (sharded if plan.zero_stage >= 1 else full)
    return {"params": params * p_bytes, "grads": grads * g_bytes, "optimizer": optimizer * o_bytes}


def _sharded_params_and_grads(zero_stage: int, whole_in_step: bool) -> tuple[bool, bool]:
    """Whether parameters (ZeRO-3) and gradients (ZeRO >= 2) are sharded over dp × cp: neither where they are held
    whole during the step (`held_whole_in_step`). The optimizer state is sharded under ZeRO >= 1."""
    if whole_in_step:
        return False, False
    return zero_stage >= 3, zero_stage >= 2


def stage_states(model: ModelSpec, plan: ParallelPlan, stage: int, fp32_gradients: bool = False,
                 runtime_fsdp: bool = False) -> tuple[int, int, int]:
    """(params, grads, optimizer) bytes on rank 0 of a stage (`fp32_gradients`: state_bytes_per_param's;
    `runtime_fsdp`: as bastion's runtime holds them during a step, `model_state_bytes`), cached by what they depend
    on: the planner varies batch, recompute and schedule far more often than the degrees that shape the model
    states."""
    counts = plan.chunk_layers(model)
    layers, has_first, has_last = stage_roles(model.num_layers, plan.pp_schedule, plan.pp, plan.vpp, counts)[stage]
    dense = stage_dense_layers(model, plan.pp_schedule, plan.pp, plan.vpp, stage, counts)
    return _states_of_role(model, plan.tp, plan.shard_degree, plan.zero_stage, plan.precision, layers, has_first,
                           has_last, dense, plan.ep, plan.etp, fp32_gradients,
                           held_whole_in_step(plan, runtime_fsdp))


def stage_expert_grad_bytes(model: ModelSpec, plan: ParallelPlan, stage: int, fp32_gradients: bool = False) -> int:
    """Bytes of the routed experts' gradients on rank 0 of a stage before any ZeRO sharding of them: the part of
    its gradients that reduces over the expert-data-parallel ranks (ParallelPlan.expert_data_parallel), not over
    dp × cp as the rest does."""
    if not model.num_experts:
        return 0
    counts = plan.chunk_layers(model)
    layers = stage_roles(model.num_layers, plan.pp_schedule, plan.pp, plan.vpp, counts)[stage][0]
    moe_layers = layers - stage_dense_layers(model, plan.pp_schedule, plan.pp, plan.vpp, stage, counts)
    numel = sum(_local_numel(p, plan.tp, 0, plan.shard_degree, 0, dp_sharded=False, ep=plan.ep, etp=plan.etp)
                for p in _layer_shapes(model) if p.expert)
    return moe_layers * numel * state_bytes_per_param(plan.precision, fp32_gradients)[1]


@lru_cache(maxsize=65536)
def fullest_stage_states(model: ModelSpec, tp: int, dp: int, zero_stage: int, precision: str, schedule: str,
                         pp: int, vpp: int, ep: int = 1, etp: int = 1, counts: tuple[int, ...] | None = None) -> int:
    """Parameter + gradient + optimizer bytes on the fullest pipeline rank (the planner's memory lower bound:
    no plan with these degrees, schedule, layout, precision and ZeRO stage needs less); `dp` is the shard degree
    dp × cp; `counts` the chunks' layer counts (None: the even split)."""
    roles = stage_roles(model.num_layers, schedule, pp, vpp, counts)
    stages = (range(pp) if has_dense_layers(model)
              else representative_stages(model.num_layers, schedule, pp, vpp, counts))
    return max(sum(_states_of_role(model, tp, dp, zero_stage, precision, *roles[i],
                                   stage_dense_layers(model, schedule, pp, vpp, i, counts), ep, etp))
               for i in stages)


@lru_cache(maxsize=1024)
def has_dense_layers(model: ModelSpec) -> bool:
    """An MoE model with layers that have no experts (so ranks of one role may differ in their layers' kinds)."""
    return bool(model.num_experts) and model.num_moe_layers < model.num_layers


@lru_cache(maxsize=8192)
def _states_of_role(model: ModelSpec, tp: int, dp: int, zero_stage: int, precision: str, layers: int,
                    has_first: bool, has_last: bool, dense_layers: int = 0, ep: int = 1, etp: int = 1,
                    fp32_gradients: bool = False, whole_in_step: bool = False) -> tuple[int, int, int]:
    p_bytes, g_bytes, o_bytes = state_bytes_per_param(precision, fp32_gradients)
    parts = [(_part_numels(model, "layer", tp, dp, ep, etp), layers - dense_layers)]
    if dense_layers:
        parts.append((_part_numels(model, "dense layer", tp, dp, ep, etp), dense_layers))
    if has_first:
        parts.append((_part_numels(model, "embedding", tp, dp, ep, etp), 1))
    if has_last:
        parts.append((_part_numels(model, "head" if model.tied_embeddings and has_first else "head+output", tp, dp,
                                   ep, etp), 1))
    sharded_params, sharded_grads = _sharded_params_and_grads(zero_stage, whole_in_step)
    params = grads = optimizer = 0
    for (full, sharded), copies in parts:
        params += copies * (sharded if sharded_params else full)
        grads += copies * (sharded if sharded_grads else full)
        optimizer += copies * (sharded if zero_stage >= 1 else full)
    return params * p_bytes, grads * g_bytes, optimizer * o_bytes


@lru_cache(maxsize=8192)
def _part_numels(model: ModelSpec, part: str, tp: int, dp: int, ep: int = 1, etp: int = 1) -> tuple[int, int]:
    """(TP-local, TP-local and data-parallel-sharded) parameters of one (MoE) layer / a leading dense layer / the
    embedding / the head, on rank 0 (the largest shard), summed tensor by tensor as the runtime shards them."""
    shapes = {"layer": _layer_shapes(model), "dense layer": _layer_shapes(model, False),
              "embedding": embedding_param_shapes(model),
              "head": head_param_shapes(model, False), "head+output": head_param_shapes(model, True)}[part]
    return (sum(_local_numel(p, tp, 0, dp, 0, dp_sharded=False, ep=ep, etp=etp) for p in shapes),
            sum(_local_numel(p, tp, 0, dp, 0, dp_sharded=True, ep=ep, etp=etp) for p in shapes))


@lru_cache(maxsize=1024)
def _layer_shapes(model: ModelSpec, moe: bool | None = None) -> tuple[ParamShape, ...]:
    return tuple(layer_param_shapes(model, moe))


@lru_cache(maxsize=4096)
def stage_dense_layers(model: ModelSpec, schedule: str, pp: int, vpp: int, stage: int,
                       counts: tuple[int, ...] | None = None) -> int:
    """How many layers without experts (an MoE model's leading `dense_layers` and, with moe_layer_freq > 1, the
    interleaved ones) pipeline rank `stage` holds, for the chunks' layer `counts` (None: the even split)."""
    if not has_dense_layers(model):
        return 0
    counts = counts or chunk_layer_counts(model.num_layers, pp * vpp)
    if counts is None:
        raise ValueError(f"{model.num_layers} layers cannot be split into {pp} x {vpp} chunks")
    dense = 0
    for chunk in (chunks_of_stage(schedule, pp, vpp, stage) if pp > 1 else [0]):
        start = sum(counts[:chunk])
        dense += sum(not model.is_moe_layer(i) for i in range(start, start + counts[chunk]))
    return dense


@lru_cache(maxsize=4096)
def layer_numel(model: ModelSpec, tp: int) -> int:
    """Parameters of one layer on one tensor-parallel rank (rank 0, the largest)."""
    return sum(_local_numel(p, tp, 0, 1, 0, False) for p in _layer_shapes(model))


@lru_cache(maxsize=4096)
def fsdp_units(model: ModelSpec, tp: int, unit: str, ep: int = 1, etp: int = 1) -> tuple[tuple[int, bool], ...]:
    """(parameters on one rank, routed experts?) of each group ZeRO-3 gathers at once inside one layer: the whole
    layer, or each sub-module (a weight matrix with its bias; a norm) — see PredictOptions.fsdp_unit. A layer's
    routed experts are a unit of their own, this rank's 1/ep of them (1/etp of their width), gathered over the
    ranks that hold the same experts rather than dp × cp (torchtitan's apply_fsdp shards them on their own mesh,
    Megatron-FSDP over the expert-data-parallel group)."""
    if unit not in ("layer", "module"):
        raise ValueError(f"fsdp_unit must be 'layer' or 'module', got {unit!r}")
    groups: dict[tuple[str, bool], int] = {}
    for p in _layer_shapes(model):
        module = "layer" if unit == "layer" else p.name.rsplit(".", 1)[0]
        key = (module, p.expert)
        # dp = ep: this rank's experts before any data-parallel sharding (the gathered size)
        groups[key] = groups.get(key, 0) + _local_numel(p, tp, 0, ep, 0, False, ep=ep, etp=etp)
    return tuple((numel, expert) for (_, expert), numel in groups.items())


def fsdp_unit_numels(model: ModelSpec, tp: int, unit: str, ep: int = 1, etp: int = 1) -> tuple[int, ...]:
    """Parameters (on one rank) of each group ZeRO-3 gathers at once inside one layer (fsdp_units), the whole
    layer's as one under `layer`."""
    units = fsdp_units(model, tp, unit, ep, etp)
    return (sum(n for n, _ in units),) if unit == "layer" else tuple(n for n, _ in units)


def stage_layer_count(model: ModelSpec, plan: ParallelPlan, stage: int) -> int:
    return stage_roles(model.num_layers, plan.pp_schedule, plan.pp, plan.vpp, plan.chunk_layers(model))[stage][0]


# ---- activations --------------------------------------------------------------------------------

def activation_dtype_bytes(precision: str) -> int:
    """Activations are kept in the compute dtype; fp8 training keeps them in bf16."""
    return 4 if precision == "fp32" else 2


#: bytes of one fp32 per-row statistic (norm 1/rms or mean, attention log-sum-exp)
STAT_BYTES = 4


@dataclass(frozen=True)
class SavedTensor:
    """One tensor autograd keeps for backward: bytes per token of a micro-batch, before any parallel split."""

    name: str
    bytes_per_token: float
    #: "tp": split by tensor parallelism (per head or per FFN column); "seq": replicated in the TP group unless
    #: sequence parallelism splits the sequence; "replicated": whole on every rank of the TP group (MLA latents)
    split: str
    #: a small per-row statistic (norm 1/rms, mean, log-sum-exp); Korthikanti et al. leave these out
    statistic: bool = False


def norm_saved_tensors(prefix: str, model: ModelSpec, a: int, fused_rmsnorm: bool, rows: int = 1,
                       width: int | None = None, split: str = "seq") -> list[SavedTensor]:
    """What one norm keeps; its output is kept by the matmuls that read it and is counted there. Per token: `rows`
    normalised rows of `width` (default: one of hidden_size; Qwen3's q/k norms: one per head of head_dim, split
    by tensor parallelism)."""
    h = rows * (width or model.hidden_size)
    if model.bias:  # LayerNorm (the runtime's choice for biased GPT/BLOOM models): one kernel everywhere
        return [SavedTensor(f"{prefix}.input", a * h, split),
                SavedTensor(f"{prefix}.mean_rstd", 2 * STAT_BYTES * rows, split, statistic=True)]
    if fused_rmsnorm:
        return [SavedTensor(f"{prefix}.input", a * h, split),
                SavedTensor(f"{prefix}.rstd", STAT_BYTES * rows, split, statistic=True)]
    # composite (x.float() * rsqrt(mean(x²) + eps) * weight) cast back: pow and the first mul keep the fp32
    # input, the weight's mul the fp32 normalised x (measured on torch 2.13 CPU in fp32 and bf16)
    return [SavedTensor(f"{prefix}.input_fp32", 4 * h, split),
            SavedTensor(f"{prefix}.rstd", STAT_BYTES * rows, split, statistic=True),
            SavedTensor(f"{prefix}.normalized_fp32", 4 * h, split)]


@lru_cache(maxsize=1024)
def layer_saved_tensors(model: ModelSpec, seq_len: int, recompute: str, precision: str = "bf16",
                        options: PredictOptions = PredictOptions(), fused_rmsnorm: bool = True,
                        routed_whole: bool = False, experts_split: bool = False) -> tuple[SavedTensor, ...]:
    """Every tensor one transformer layer keeps for backward without full recomputation, per token.

    Per op, as autograd saves them (enumerated on torch 2.13 CPU and matched to the H200's per-layer
    measurements, see tests/unit/test_memory_activations.py): each norm's input (+ statistics); each matmul's
    input (the norm outputs once for QKV and once for the MLP, the attention output for `wo`, the MLP's last
    intermediate for `w2`); the attention core's Q, K, V (after RoPE: multiplying by the constant cos/sin
    tables keeps only the tables) and, with flash attention, its output and fp32 log-sum-exp per head; the
    MLP's elementwise inputs. Residual additions keep nothing. The attention output and `wo`'s input are one
    tensor: flash kernels write it in (batch, seq, heads, dim) order, so the reshape is a view. Without flash
    attention, softmax keeps its s×s output (and dropout its mask and the dropped copy), which selective
    recomputation drops (Korthikanti et al. 2022, Sec. 4.2).
    """
    a = activation_dtype_bytes(precision)
    if recompute == "selective" and options.selective_recompute == "every-second-matmul":
        return every_second_matmul_saved_tensors(model, a, options.flash_attention)
    # a matmul's saved input: its fp8 cast (1 byte) where the fp8 recipe keeps that instead of the bf16 tensor
    fp8_inputs = precision == "fp8" and options.fp8_saved_inputs
    mm = 1 if fp8_inputs else a
    h, f, heads = model.hidden_size, model.ffn_hidden_size, model.num_heads
    q, kv = model.q_width, model.kv_width
    # the column-parallel matmuls' input: the sequence shard, or under DTensor SP the gathered whole
    matmul_input = "replicated" if options.sp_gathered_inputs else "seq"
    saved = norm_saved_tensors("attention_norm", model, a, fused_rmsnorm)
    saved.append(SavedTensor("attention.qkv_input", mm * h, matmul_input))
    if model.is_mla:
        saved += mla_saved_tensors(model, a, mm)
    else:
        if model.qk_norm:  # the per-head q/k norms keep their inputs (the projections' outputs), before RoPE
            saved += norm_saved_tensors("attention.q_norm", model, a, fused_rmsnorm, heads, model.head_dim, "tp")
            saved += norm_saved_tensors("attention.k_norm", model, a, fused_rmsnorm, model.num_kv_heads,
                                        model.head_dim, "tp")
        saved += [SavedTensor("attention.q", a * q, "tp"), SavedTensor("attention.k", a * kv, "tp"),
                  SavedTensor("attention.v", a * kv, "tp")]
    saved.append(SavedTensor("attention.output", a * model.v_width, "tp"))  # = the output projection's input
    if fp8_inputs:  # the attention kernel keeps its bf16 output; the projection its own fp8 copy
        saved.append(SavedTensor("attention.output_fp8", model.v_width, "tp"))
    if options.flash_attention:
        if recompute != "selective":  # selective recomputation re-runs the kernel, log-sum-exp and all
            saved.append(SavedTensor("attention.logsumexp", STAT_BYTES * heads, "tp", statistic=True))
    elif recompute != "selective":
        saved.append(SavedTensor("attention.softmax", a * heads * seq_len, "tp"))
        if options.dropout:
            saved += [SavedTensor("attention.dropout_mask", heads * seq_len, "tp"),
                      SavedTensor("attention.dropout_output", a * heads * seq_len, "tp")]
    if options.dropout:
        saved.append(SavedTensor("attention.residual_dropout_mask", h, "seq"))
    saved += norm_saved_tensors("ffn_norm", model, a, fused_rmsnorm)
    saved.append(SavedTensor("feed_forward.input", mm * h, matmul_input))
    if model.num_experts:
        saved += moe_saved_tensors(model, a, mm, options, routed_whole, experts_split)
    else:
        saved += mlp_saved_tensors("feed_forward", model, f, a, mm, options)
    if options.dropout:
        saved.append(SavedTensor("feed_forward.residual_dropout_mask", h, "seq"))
    return tuple(saved)


def mlp_saved_tensors(prefix: str, model: ModelSpec, width: float, a: int, mm: int, options: PredictOptions
                      ) -> list[SavedTensor]:
    """What an MLP of inner `width` keeps beyond its input (split by tensor parallelism)."""
    if model.ffn_type == "gelu":
        return [SavedTensor(f"{prefix}.w1_output", a * width, "tp"),
                SavedTensor(f"{prefix}.gelu_output", mm * width, "tp")]  # = w2's input
    saved = [SavedTensor(f"{prefix}.w1_output", a * width, "tp")]  # silu's input
    if not (options.fused_swiglu or options.compiled):
        saved.append(SavedTensor(f"{prefix}.silu_output", a * width, "tp"))
    return saved + [SavedTensor(f"{prefix}.w3_output", a * width, "tp"),
                    SavedTensor(f"{prefix}.w2_input", mm * width, "tp")]


def moe_saved_tensors(model: ModelSpec, a: int, mm: int, options: PredictOptions, routed_whole: bool = False,
                      experts_split: bool = False) -> list[SavedTensor]:
    """What an MoE layer's MLP keeps beyond its input, per token: the router's fp32 probabilities, the top_k
    permuted copies (the experts' grouped-GEMM input), each expert's MLP tensors for its rows, the expert outputs
    the weighted un-permutation multiplies by the scores, and the shared experts' MLP. The routed tensors are
    per routed copy at the mean load (the busiest rank holds more: PredictOptions.moe_imbalance is a time
    assumption only); each tp rank routes its own sequence-parallel slice, so they split by tp (the megatron layout,
    and bastion's runtime under sp with etp = 1). `routed_whole`: every tp rank routes all the tokens (bastion's
    runtime without sp, or with etp = tp), so the router's probabilities and the permuted copies are whole on
    each, and the experts' MLP tensors too unless `experts_split` (etp = tp splits their width)."""
    h, k = model.hidden_size, model.top_k
    routed = "replicated" if routed_whole else "tp"
    saved = [SavedTensor("moe.router_probs", STAT_BYTES * model.num_experts, "replicated" if routed_whole else "seq",
                         statistic=True),
             SavedTensor("moe.permuted_input", mm * h * k, routed)]
    experts = mlp_saved_tensors("moe.experts", model, k * model.expert_width, a, mm, options)
    if routed_whole and not experts_split:
        experts = [replace(t, split="replicated") for t in experts]
    saved += experts
    saved.append(SavedTensor("moe.expert_output", a * h * k, routed))
    if model.num_shared_experts:
        saved += mlp_saved_tensors("moe.shared_experts", model, model.num_shared_experts * model.expert_width, a,
                                   mm, options)
    return saved


def mla_saved_tensors(model: ModelSpec, a: int, mm: int) -> list[SavedTensor]:
    """What multi-head latent attention keeps between the block's normalised input and the attention output:
    each latent's RMSNorm input and the up-projection's (normalised) input — the query latent (when q_lora_rank
    > 0) and the key/value latent, computed whole on every tp rank (the down-projections are replicated) — the
    shared rotary key, and the per-head rebuilt Q, K (query/key head width) and V (value head width) the
    attention kernel keeps."""
    heads = model.num_heads
    saved = []
    if model.q_lora_rank:
        saved += [SavedTensor("attention.q_latent", a * model.q_lora_rank, "replicated"),
                  SavedTensor("attention.q_latent_normed", mm * model.q_lora_rank, "replicated")]
    return saved + [SavedTensor("attention.kv_latent", a * model.kv_lora_rank, "replicated"),
                    SavedTensor("attention.kv_latent_normed", mm * model.kv_lora_rank, "replicated"),
                    SavedTensor("attention.k_rope", a * model.qk_rope_head_dim, "replicated"),
                    SavedTensor("attention.q", a * heads * model.head_dim, "tp"),
                    SavedTensor("attention.k", a * heads * model.head_dim, "tp"),
                    SavedTensor("attention.v", a * heads * model.v_head_dim, "tp")]


def every_second_matmul_saved_tensors(model: ModelSpec, a: int, flash_attention: bool) -> tuple[SavedTensor, ...]:
    """What op-level selective checkpointing keeps of one layer (torchtitan's `op` policy): the block's input,
    the outputs of the 1st, 3rd, 5th and 7th matmul (wq, wv, w1, w2; w2's is its reduce-scattered output under
    TP with sequence parallelism) and the attention kernel's output and log-sum-exp. Everything else is
    recomputed from those."""
    h, f = model.hidden_size, model.ffn_hidden_size
    saved = [SavedTensor("block.input", a * h, "seq"), SavedTensor("attention.wq_output", a * model.q_width, "tp"),
             SavedTensor("attention.wv_output", a * model.kv_width, "tp"),
             SavedTensor("attention.output", a * model.q_width, "tp"),
             SavedTensor("feed_forward.w1_output", a * f, "tp"), SavedTensor("feed_forward.w2_output", a * h, "seq")]
    if flash_attention:
        saved.append(SavedTensor("attention.logsumexp", STAT_BYTES * model.num_heads, "tp", statistic=True))
    return tuple(saved)


@lru_cache(maxsize=256)
def head_saved_tensors(model: ModelSpec, precision: str = "bf16", fused_rmsnorm: bool = True,
                       sp_gathered_inputs: bool = False) -> tuple[SavedTensor, ...]:
    """What the last stage keeps ahead of the logits: the final norm's tensors and the LM head's input (a
    column-parallel matmul's: whole under DTensor sequence parallelism, PredictOptions.sp_gathered_inputs).

    The logits and the loss's buffers are counted apart (`stage_memory`'s `logits`)."""
    a = activation_dtype_bytes(precision)
    return (*norm_saved_tensors("norm", model, a, fused_rmsnorm),
            SavedTensor("output.input", a * model.hidden_size, "replicated" if sp_gathered_inputs else "seq"))


def loss_saved_bytes_per_token(model: ModelSpec, tp: int, precision: str = "bf16",
                               options: PredictOptions = PredictOptions()) -> float:
    """What the loss keeps for backward per token, vocab-parallel over tp: plain PyTorch's cross-entropy keeps
    the fp32 log-softmax output; a fused kernel keeps the logits, whose gradient it writes in place."""
    per_entry = activation_dtype_bytes(precision) if options.fused_cross_entropy else 4
    return model.vocab_size / tp * per_entry


def saved_bytes_per_token(saved: tuple[SavedTensor, ...], tp: int, sequence_parallel: bool,
                          statistics: bool = True) -> float:
    """Sum of the saved tensors' bytes per token on one tensor-parallel rank."""
    divisor = {"tp": tp, "seq": tp if sequence_parallel else 1, "replicated": 1}
    return sum(t.bytes_per_token / divisor[t.split] for t in saved if statistics or not t.statistic)


@lru_cache(maxsize=4096)
def activation_bytes_per_token(model: ModelSpec, seq_len: int, tp: int, sequence_parallel: bool, recompute: str,
                               precision: str = "bf16", options: PredictOptions = PredictOptions(),
                               fused_rmsnorm: bool = True, etp: int = 1) -> float:
    """Bytes one layer keeps for backward per token of a micro-batch (per device, before cp and pipelining).

    The sum of `layer_saved_tensors`. With GPT's choices (GELU MLP, multi-head attention, dropout, no flash
    attention) and the norm statistics left out, as Korthikanti et al. 2022 (Sec. 4.1, Table 2) leave out
    small buffers, this is their sbh(34 + 5as/h) and its TP, SP and selective-recompute variants exactly.
    Full recomputation keeps only each layer's input (Sec. 4.3). `etp`: an MoE layer's expert tensor parallelism,
    which with the tp ranks' routing layout (PredictOptions.moe_expert_layout) decides how its routed tensors split.
    """
    if recompute == "full":
        return activation_dtype_bytes(precision) * model.hidden_size / (tp if sequence_parallel else 1)
    routed_whole = bool(model.num_experts) and tp > 1 and _routes_every_token(tp, etp, sequence_parallel, options)
    saved = layer_saved_tensors(model, seq_len, recompute, precision, options, fused_rmsnorm,
                                routed_whole=routed_whole, experts_split=etp > 1)
    return saved_bytes_per_token(saved, tp, sequence_parallel)


def _routes_every_token(tp: int, etp: int, sequence_parallel: bool, options: PredictOptions) -> bool:
    """Every tp rank routes all of the micro-batch's tokens (not its 1/tp) under the software's MoE layout."""
    from bastion.predict.moe import routing_layout

    return routing_layout(tp, etp, sequence_parallel, options.moe_expert_layout).token_share == 1.0


def _stage_chunks(model: ModelSpec, plan: ParallelPlan, stage: int) -> tuple[tuple[int, int], ...]:
    """(first layer, layers) of each pipeline chunk pipeline rank `stage` holds (the plan's layout, else the even
    split, as stage_roles counts them)."""
    counts = plan.chunk_layers(model)
    if counts is None:
        raise ValueError(f"{model.num_layers} layers cannot be split into {plan.pp} x {plan.vpp} chunks")
    return tuple((sum(counts[:c]), counts[c]) for c in (chunks_of_stage(plan.pp_schedule, plan.pp, plan.vpp, stage)
                                                        if plan.pp > 1 else [0]))


def stage_chunk_layers(model: ModelSpec, plan: ParallelPlan, stage: int) -> tuple[int, ...]:
    """Transformer layers of each pipeline chunk pipeline rank `stage` holds."""
    return tuple(n for _, n in _stage_chunks(model, plan, stage))


def recomputed_layers(model: ModelSpec, plan: ParallelPlan, stage: int) -> int:
    """Layers of pipeline rank `stage` whose whole activations are recomputed: under recompute = "full", the
    first `recompute_layers` of each chunk (Megatron's --recompute-method block --recompute-num-layers N), every
    layer when recompute_layers is 0; none otherwise."""
    if plan.recompute != "full":
        return 0
    return sum(_recomputed_of_chunk(plan, n) for n in stage_chunk_layers(model, plan, stage))


def _recomputed_of_chunk(plan: ParallelPlan, layers: int) -> int:
    return min(plan.recompute_layers, layers) if plan.recompute_layers else layers


def recomputed_dense_layers(model: ModelSpec, plan: ParallelPlan, stage: int) -> int:
    """Of recomputed_layers, those without experts (an MoE model's leading or interleaved dense layers): the
    recomputed layers are the first of each chunk, where the leading dense layers are."""
    if plan.recompute != "full" or not has_dense_layers(model):
        return 0
    return sum(sum(not model.is_moe_layer(i) for i in range(start, start + _recomputed_of_chunk(plan, n)))
               for start, n in _stage_chunks(model, plan, stage))


def offloaded_chunk_layers(plan: ParallelPlan, layers: int) -> range:
    """Positions, within a pipeline chunk of `layers` layers, of the layers whose saved activations go to host
    memory: the first `activation_offload` of the layers that keep their activations, never the chunk's last,
    whose backward follows its forward at once (Transformer Engine's get_cpu_offload_context requires
    num_layers < model_layers for the same reason). A layer recomputed whole (recompute = "full") is never
    offloaded: it keeps only its input, which its recomputation reads first in the backward (Megatron-Core
    refuses cpu_offloading with recomputation); so the offloaded layers follow the chunk's recomputed ones.
    The runtime offloads exactly these (runtime/offload.py)."""
    first = _recomputed_of_chunk(plan, layers) if plan.recompute == "full" else 0
    return range(first, first + min(plan.activation_offload, max(layers - 1 - first, 0)))


def offloaded_layers(model: ModelSpec, plan: ParallelPlan, stage: int) -> int:
    """Layers of pipeline rank `stage` whose saved activations go to host memory (offloaded_chunk_layers of each
    of its chunks)."""
    if not plan.activation_offload:
        return 0
    return sum(len(offloaded_chunk_layers(plan, n)) for n in stage_chunk_layers(model, plan, stage))


def gathered_kv_bytes_per_token(model: ModelSpec, tp: int, cp: int, precision: str, options: PredictOptions
                                ) -> float:
    """All-gather context parallelism: what attention keeps of the other cp - 1 ranks' K,V for backward."""
    if cp > 1 and options.context_parallel == "all-gather":
        return (cp - 1) * 2 * model.kv_width / tp * activation_dtype_bytes(precision)
    return 0.0


def kept_layer_bytes_per_token(model: ModelSpec, seq_len: int, tp: int, cp: int, sequence_parallel: bool,
                               recompute: str, precision: str, options: PredictOptions, fused_rmsnorm: bool,
                               etp: int = 1) -> float:
    """What a layer that keeps its activations (not recomputed whole) keeps per token for backward: its saved
    tensors under the recompute mode (selective, or none) and the gathered K,V. An offloaded layer sends exactly
    this to host memory."""
    mode = "none" if recompute == "full" else recompute
    return (activation_bytes_per_token(model, seq_len, tp, sequence_parallel, mode, precision, options,
                                       fused_rmsnorm, etp)
            + gathered_kv_bytes_per_token(model, tp, cp, precision, options))


def offloaded_bytes_per_step(model: ModelSpec, plan: ParallelPlan, seq_len: int, stage: int, is_gpu: bool,
                             options: PredictOptions) -> float:
    """Bytes one rank of pipeline stage `stage` copies to host memory in an optimizer step: each offloaded layer's
    kept activations, for every micro-batch (what the runtime's offload hooks count, runtime/offload.py)."""
    tokens = plan.micro_batch * seq_len / plan.cp
    per_token = kept_layer_bytes_per_token(model, seq_len, plan.tp, plan.cp, plan.sequence_parallel, plan.recompute,
                                           plan.precision, options, uses_fused_rmsnorm(options, is_gpu), plan.etp)
    return offloaded_layers(model, plan, stage) * plan.num_microbatches * tokens * per_token


def uses_fused_rmsnorm(options: PredictOptions, is_gpu: bool) -> bool:
    return is_gpu if options.fused_rmsnorm is None else options.fused_rmsnorm


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
    layers, _, has_last = stage_roles(model.num_layers, plan.pp_schedule, plan.pp, plan.vpp,
                                      plan.chunk_layers(model))[stage]
    params, grads, optimizer = stage_states(model, plan, stage, options.fp32_gradients, options.runtime_fsdp)
    a = activation_dtype_bytes(plan.precision)
    tokens = plan.micro_batch * seq_len / plan.cp  # tokens of one micro-batch on this device
    in_flight = layer_microbatches_in_flight(plan.pp_schedule, plan.pp, plan.vpp, plan.num_microbatches, stage,
                                             layers)
    fused_rmsnorm = uses_fused_rmsnorm(options, is_gpu)
    gathered_kv = gathered_kv_bytes_per_token(model, plan.tp, plan.cp, plan.precision, options)
    # what an average layer of the stage keeps per token: recomputed layers their input, the others (partial
    # recompute's rest, or every layer of another mode) their saved tensors and the gathered K,V
    recomputed = recomputed_layers(model, plan, stage) / layers if layers else 0.0
    kept = kept_layer_bytes_per_token(model, seq_len, plan.tp, plan.cp, plan.sequence_parallel, plan.recompute,
                                      plan.precision, options, fused_rmsnorm, plan.etp)
    per_token = (recomputed * activation_bytes_per_token(model, seq_len, plan.tp, plan.sequence_parallel, "full",
                                                         plan.precision, options, fused_rmsnorm)
                 + (1 - recomputed) * kept)
    offloaded = offloaded_layers(model, plan, stage) / layers if layers else 0.0
    # offloaded layers (ones that keep their activations) keep nothing on the device between their forward and
    # backward, but the copy in flight each way (one layer of one micro-batch going out, one coming back) is
    # resident while it moves
    activations = in_flight * tokens * (per_token - offloaded * kept)
    if offloaded:
        activations += min(2.0, in_flight * offloaded) * tokens * kept
    if plan.recompute != "none":
        # backward re-materialises one layer's full activations at a time on top of the checkpoints (under full
        # recompute, with that layer's gathered K,V)
        rematerialised = activation_bytes_per_token(model, seq_len, plan.tp, plan.sequence_parallel, "none",
                                                    plan.precision, options, fused_rmsnorm, plan.etp)
        activations += tokens * (rematerialised + (gathered_kv if plan.recompute == "full" else 0.0))
    logits = 0.0
    if has_last:
        # the final norm and the LM head's input, once per micro-batch (the head is never checkpointed)
        head = head_saved_tensors(model, plan.precision, fused_rmsnorm, options.sp_gathered_inputs)
        activations += tokens * saved_bytes_per_token(head, plan.tp, plan.sequence_parallel)
        # plain: besides the saved log-softmax output, the logits in the compute dtype (or their fp32 copy) and
        # the fp32 gradient at the loss; fused: the logits and their gradient written in place
        transient = 0.0 if options.fused_cross_entropy else (a + 4) * model.vocab_size / plan.tp
        logits = tokens * (loss_saved_bytes_per_token(model, plan.tp, plan.precision, options) + transient)
    comm = 0.0
    if plan.shard_degree > 1 and plan.zero_stage == 3:
        # two gathered units (current + prefetched) and one unsharded gradient, the largest unit each
        comm += 3 * a * max(fsdp_unit_numels(model, plan.tp, options.fsdp_unit, plan.ep, plan.etp))
    elif plan.shard_degree > 1:
        comm += 2 * options.dp_bucket_bytes
    if plan.tp > 1:
        comm += 2 * tokens * model.hidden_size * a  # gathered sequence / all-reduce staging
    if plan.pp > 1:
        comm += 2 * tokens * model.hidden_size * a / plan.tp  # p2p send and receive buffers
    if plan.ep > 1 and model.num_experts:
        # the all-to-all's send and receive buffers: this rank's top_k routed copies of the tokens it routes
        from bastion.predict.moe import routing_layout

        share = routing_layout(plan.tp, plan.etp, plan.sequence_parallel, options.moe_expert_layout).token_share
        comm += 2 * tokens * share * model.top_k * model.hidden_size * a
    overhead = options.fragmentation * (activations + logits + comm)
    if is_gpu:
        overhead += options.runtime_reserve_gib * 2**30
    return MemoryBreakdown.of(params=float(params), grads=float(grads), optimizer=float(optimizer),
                              activations=activations, logits=logits, comm_buffers=comm,
                              allocator_overhead=overhead)
