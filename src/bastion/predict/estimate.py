"""`estimate()`: memory per device and time per optimizer step of a ParallelPlan on a cluster.

Pure arithmetic over cached calibration data: no per-layer loops (layers of a stage are identical, so one layer
is costed and multiplied) and no file I/O after the first call, because the planner calls it for every candidate.

Time model, per pipeline rank and micro-batch: forward + backward GEMMs and attention (compute), recomputed
forward passes (recompute), norms/activations/residuals/loss (memory_bound), exposed tensor- and context-parallel
communication, and ZeRO-3 parameter gathering that the layer's compute does not hide (dp_comm). A step is
m micro-batches of the slowest rank, plus the pipeline bubble, the pipeline's point-to-point transfers, the
data-parallel gradient reduction that the last backward does not hide, and the optimizer step.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from typing import Any, NamedTuple

from bastion.errors import PlanError
from bastion.predict import comm, compute, flops, moe, schedule
from bastion.predict.calibration import load_calibration, profiled_rates_note, rates_note
from bastion.predict.comm import FsdpSchedule, fsdp_schedule
from bastion.predict.kernels import fp8_recipe
from bastion.predict.memory import (
    MemoryBreakdown,
    activation_bytes_per_token,
    activation_dtype_bytes,
    fsdp_units,
    has_dense_layers,
    kept_layer_bytes_per_token,
    offloaded_layers,
    recomputed_dense_layers,
    recomputed_layers,
    stage_chunk_layers,
    stage_dense_layers,
    stage_expert_grad_bytes,
    stage_memory,
    stage_states,
    state_bytes_per_param,
    uses_fused_rmsnorm,
)
from bastion.predict.options import PredictOptions
from bastion.specs.hardware import Cluster
from bastion.specs.model import ModelSpec
from bastion.specs.plan import ParallelPlan, expert_grid
from bastion.specs.profile import FsdpUnitCost

DEFAULT_OPTIONS = PredictOptions()

MFU_CONVENTION = ("MFU = model FLOPs of a causal decoder (6·N_matmul + 6·L·h·s per token: PaLM's count with the "
                  "masked half of attention left out, no recompute) / (step time × devices × dense peak of the "
                  "plan's precision); HFU adds the recomputed forward passes")


@dataclass(frozen=True)
class TimeBreakdown:
    """Seconds per optimizer step on the critical path; the parts add up to `step`."""

    compute: float
    recompute: float
    memory_bound: float
    tp_comm: float
    cp_comm: float
    #: expert parallelism's dispatch/combine all-to-alls (forward and backward) that compute does not hide
    #: (0 for dense models)
    ep_comm: float
    #: expert tensor parallelism's all-gathers / reduce-scatters around the expert GEMMs (0 unless etp > 1)
    etp_comm: float
    dp_comm: float
    pp_comm: float
    bubble: float
    optimizer: float
    #: activation offloading: the host-link copies (out in the forward, back in the backward) that the layers'
    #: compute does not hide
    offload: float
    #: CPU work outside the kernels (eager and DTensor dispatch, FSDP hooks, the loop's bookkeeping), when a
    #: machine profile measured it; 0 on datasheet rates
    host_overhead: float
    step: float
    #: on a host CPU whose ranks time-share the cores, with a profile that measured it: what the step's
    #: synchronisation points cost beyond their latency (a rank descheduled mid-work while its peers wait idle
    #: at the sync; gloo's transport threads' CPU); in `step`
    sync_wait: float = 0.0

    def to_dict(self) -> dict[str, float]:
        # not asdict: its deep copy of every float is most of the cost of the planner's per-plan shares
        return {name: getattr(self, name) for name in _TIME_TERMS}


_TIME_TERMS = tuple(f.name for f in fields(TimeBreakdown))


@dataclass(frozen=True)
class Estimate:
    """What one plan costs: memory per device, time per step, and the derived rates."""

    model: str
    cluster: str
    plan: ParallelPlan
    seq_len: int
    #: the worst pipeline stage (bytes per device)
    memory: MemoryBreakdown
    memory_by_stage: list[MemoryBreakdown]
    time: TimeBreakdown
    step_time_s: float
    tokens_per_s: float
    mfu: float
    hfu: float
    model_flops_per_step: float
    hardware_flops_per_step: float
    hbm_bytes: float
    fits: bool
    assumptions: list[str] = field(default_factory=list)
    #: MoE models: the expert placement (moe.expert_placement), the all-to-all's seconds and share of the step,
    #: the load imbalance and all-to-all overlap assumed; empty for dense models
    experts: dict[str, Any] = field(default_factory=dict)

    def time_to_train_s(self, tokens: float) -> float:
        """Seconds to train on `tokens` tokens at this step rate."""
        return tokens / self.tokens_per_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "cluster": self.cluster, "plan": self.plan.to_dict(), "seq_len": self.seq_len,
            "fits": self.fits, "hbm_bytes": self.hbm_bytes,
            "memory": self.memory.to_dict(), "memory_by_stage": [m.to_dict() for m in self.memory_by_stage],
            "time": self.time.to_dict(), "step_time_s": self.step_time_s, "tokens_per_s": self.tokens_per_s,
            "mfu": self.mfu, "hfu": self.hfu, "model_flops_per_step": self.model_flops_per_step,
            "hardware_flops_per_step": self.hardware_flops_per_step, "mfu_convention": MFU_CONVENTION,
            "assumptions": list(self.assumptions), **({"experts": self.experts} if self.experts else {}),
        }


@dataclass(frozen=True)
class _StageTime:
    """Per micro-batch seconds of one pipeline rank, by category."""

    compute: float
    recompute: float
    memory_bound: float
    tp_comm: float
    cp_comm: float
    fsdp_exposed: float
    backward: float  # the window a data-parallel gradient reduction can hide under
    forward: float  # the window a ZeRO-1/2 parameter all-gather can hide under
    host_overhead: float = 0.0
    ep_comm: float = 0.0
    etp_comm: float = 0.0
    offload: float = 0.0

    @property
    def total(self) -> float:
        return (self.compute + self.recompute + self.memory_bound + self.tp_comm + self.cp_comm
                + self.fsdp_exposed + self.host_overhead + self.ep_comm + self.etp_comm + self.offload)


def _mlp_width(model: ModelSpec) -> int:
    """Inner width of the MLP that runs on every token of a layer: the dense MLP, or an MoE layer's shared
    experts as one MLP (0 when it has none); the routed experts are costed apart (predict/moe.py)."""
    if model.num_experts:
        return model.num_shared_experts * model.expert_width
    return model.ffn_hidden_size


def _attention_gemm_shapes(model: ModelSpec, tp: int, tokens: int) -> tuple[tuple[int, int, int], ...]:
    """(m, k, n) of one layer's attention projections on one tensor-parallel rank. MLA (Megatron-Core's
    MLASelfAttention): the query and the key/value down-projections to their latents are replicated in the tp
    group, the up-projections (per head) and the output projection are split by it."""
    h = model.hidden_size
    if model.is_mla:
        q_heads = model.num_heads * model.head_dim // tp
        kv_heads = model.num_heads * (model.qk_nope_head_dim + model.v_head_dim) // tp
        query = (((tokens, h, model.q_lora_rank), (tokens, model.q_lora_rank, q_heads)) if model.q_lora_rank
                 else ((tokens, h, q_heads),))
        return (*query,
                (tokens, h, model.kv_lora_rank + model.qk_rope_head_dim),   # latent + the shared rotary key
                (tokens, model.kv_lora_rank, kv_heads),                      # keys (non-rotary) and values
                (tokens, model.v_width // tp, h))                            # output projection
    q, kv = model.q_width, model.kv_width
    return ((tokens, h, (q + 2 * kv) // tp),                              # QKV projection
            (tokens, q // tp, h))                                         # attention output projection


def _layer_gemm_shapes(model: ModelSpec, plan: ParallelPlan | _StageKey, tokens: int) -> tuple[tuple[int, int, int], ...]:
    """(m, k, n) of one layer's forward GEMMs on one tensor-parallel rank (an MoE layer's routed experts are
    costed by predict/moe.py)."""
    tp, h, f = plan.tp, model.hidden_size, _mlp_width(model)
    mlp = ((tokens, h, (model.ffn_matrices - 1) * f // tp),               # fc1 (+ gate)
           (tokens, f // tp, h)) if f else ()                             # fc2
    return _attention_gemm_shapes(model, tp, tokens) + mlp


def _every_second_matmul_shapes(model: ModelSpec, plan: ParallelPlan | _StageKey,
                                tokens: int) -> tuple[tuple[int, int, int], ...]:
    """(m, k, n) of the matmuls op-level selective checkpointing recomputes (flops.every_second_matmul_params)."""
    tp = plan.tp
    h, q, kv = model.hidden_size, model.q_width, model.kv_width
    f = _mlp_width(model)
    third = ((tokens, h, f // tp) if model.ffn_type == "swiglu" else (tokens, f // tp, h),) if f else ()
    return ((tokens, h, kv // tp), (tokens, q // tp, h), *third)


def _layer_gemm_fwd_time(model: ModelSpec, cluster: Cluster, plan: ParallelPlan | _StageKey, tokens: int,
                         recipe: str) -> float:
    acc, p = cluster.accelerator, plan.precision
    return sum(compute.gemm_time(acc, p, m, k, n, recipe) for m, k, n in _layer_gemm_shapes(model, plan, tokens))


def _layer_fp8_cast_time(model: ModelSpec, cluster: Cluster, plan: ParallelPlan | _StageKey, tokens: int,
                         recipe: str) -> float:
    """Forward + backward seconds of quantising one layer's GEMM operands to fp8 under `recipe` (zero unless the
    plan is fp8)."""
    if plan.precision != "fp8":
        return 0.0
    return compute.membound_time(cluster.accelerator, sum(
        compute.fp8_cast_bytes(m, k, n, recipe) for m, k, n in _layer_gemm_shapes(model, plan, tokens)))


def attention_times(model: ModelSpec, cluster: Cluster, plan: ParallelPlan | _StageKey, seq_len: int,
                     options: PredictOptions) -> tuple[float, float]:
    """(forward, forward+backward) seconds of the attention core of one layer for one micro-batch."""
    acc, b = cluster.accelerator, plan.micro_batch
    heads_local = model.num_heads / plan.tp
    if options.flash_attention:
        # load-balanced causal context parallelism gives each rank 1/cp of the causal work
        fwd_flops = b * flops.attention_flops_per_token(model, seq_len, causal=True) * seq_len / (plan.tp * plan.cp)
        s_eff = max(seq_len // plan.cp, 1)
        cap = options.attention_efficiency_cap
        kernel = options.attention_kernel
        return (compute.flash_attention_time(acc, plan.precision, fwd_flops, s_eff, model.head_dim, "fwd", cap,
                                             kernel),
                compute.flash_attention_time(acc, plan.precision, fwd_flops, s_eff, model.head_dim, "fwdbwd", cap,
                                             kernel))
    # unfused: two batched GEMMs over the full s×s scores, plus the softmax (and dropout) as memory-bound passes
    s_q = seq_len // plan.cp
    batch = b * heads_local
    bmm = batch * (compute.gemm_time(acc, plan.precision, s_q, model.head_dim, seq_len)
                   + compute.gemm_time(acc, plan.precision, s_q, seq_len, model.head_dim))
    scores = batch * s_q * seq_len
    softmax = compute.membound_time(acc, scores * compute.unfused_softmax_bytes_per_score(options.dropout))
    fwd = bmm + softmax / 3
    return fwd, 3 * bmm + softmax


class _StageKey(NamedTuple):
    """The plan fields a rank's per-micro-batch time depends on (not the schedule, vpp or global batch): the
    planner's many schedules and batch splits of one configuration share one cached stage time."""

    #: the ZeRO-3 shard degree dp × cp (1 unless ZeRO-3)
    dp: int
    tp: int
    cp: int
    zero_stage: int
    micro_batch: int
    recompute: str
    sequence_parallel: bool
    precision: str
    #: expert parallelism, expert tensor parallelism, and the fraction of the all-to-all hidden under compute
    ep: int = 1
    etp: int = 1
    a2a_overlap: float = 0.0
    #: partial recompute: the rank's layers recomputed whole when fewer than all (-1: all, or not "full")
    recomputed: int = -1
    #: the rank's layers whose activations are offloaded to host memory
    offloaded: int = 0
    #: ZeRO-3 whose gradients are reduced once per step, not with every micro-batch's backward
    #: (`_data_parallel_schedule`: bastion's runtime under a pipeline)
    deferred_reduction: bool = False


def _stage_time(model: ModelSpec, cluster: Cluster, plan: ParallelPlan, seq_len: int, layers: int,
                has_first: bool, has_last: bool, options: PredictOptions, stage: int = 0, dense: int = 0
                ) -> _StageTime:
    # only ZeRO-3 (parameter gathering) makes a rank's time depend on dp or the ZeRO stage
    zero3 = plan.zero_stage == 3 and plan.shard_degree > 1
    recomputed = recomputed_layers(model, plan, stage)
    key = _StageKey(plan.shard_degree if zero3 else 1, plan.tp, plan.cp, 3 if zero3 else 0, plan.micro_batch,
                    plan.recompute, plan.sequence_parallel, plan.precision, *_expert_key(plan, options),
                    recomputed if plan.recompute == "full" and recomputed < layers else -1,
                    offloaded_layers(model, plan, stage),
                    zero3 and not _data_parallel_schedule(plan, options).reduces_per_micro_batch)
    # the layers without experts among the partially recomputed ones (leading dense layers sit in the first chunk)
    dense_recomputed = recomputed_dense_layers(model, plan, stage) if key.recomputed >= 0 else 0
    return _stage_time_of(model, cluster, key, seq_len, layers, has_first, has_last, options, dense,
                          dense_recomputed)


def _expert_key(plan: ParallelPlan, options: PredictOptions) -> tuple[int, int, float]:
    return plan.ep, plan.etp, options.moe_a2a_overlap


def _micro_batch_overhead(node: Cluster, plan: ParallelPlan, layers: int, has_first: bool, has_last: bool) -> float:
    """Seconds of one micro-batch's host work on one rank (machine profile's [host] terms): each block's eager
    dispatch, plus DTensor's under tensor parallelism and FSDP2's hooks when gradients are reduced over dp × cp
    (unless the profile timed FSDP2's units on real groups: then `_runtime_fsdp_comm` holds them);
    a fully recomputed block dispatches its forward (a third of the work) again; the ends of the model once
    (with tensor parallelism's extra there); the pipeline schedule's own work per micro-batch and stage."""
    host = node.profile.host_overheads
    tp = (host.layer_tp_s + (host.layer_sp_s if plan.sequence_parallel else 0.0)) if plan.tp > 1 else 0.0
    per_layer = (host.layer_s + tp) * (4 / 3 if plan.recompute == "full" else 1.0)
    if plan.dp * plan.cp > 1 and _measured_fsdp(node, plan) is None:
        per_layer += host.layer_fsdp_s  # else the measured unit cost holds FSDP2's hooks (_runtime_fsdp_comm)
    ends_tp = (host.micro_batch_tp_s + (host.micro_batch_sp_s if plan.sequence_parallel else 0.0)
               if plan.tp > 1 else 0.0)
    ends = (host.micro_batch_s + ends_tp) * (int(has_first) + int(has_last)) / 2
    ends += host.pipeline_micro_batch_s * plan.vpp if plan.pp > 1 else 0.0
    return (layers * per_layer + ends) / node.accelerator.core_share(node.gpus_per_node)


def _tp_ends_comm(cluster: Cluster, model: ModelSpec, plan: ParallelPlan, seq_len: int, layers: int,
                  has_first: bool, has_last: bool) -> float:
    """Seconds of one micro-batch's tensor-parallel collectives at the model's ends (embedding, final norm, LM
    head, loss parallelism) the profile counted, half on the first and half on the last stage's rank."""
    if plan.tp <= 1 or not (has_first or has_last):
        return 0.0
    nbytes = float(plan.micro_batch * seq_len // plan.cp * model.hidden_size * activation_dtype_bytes(plan.precision))
    counted = _counted_tp_comm(cluster, plan, nbytes, "ends")
    return (counted or 0.0) * (int(has_first) + int(has_last)) / 2


def _shared_core_bubble(node: Cluster, busy: float, bubble: float) -> float:
    """The pipeline bubble of a rank on a host CPU whose ranks share its cores: a rank idle in the bubble blocks
    in a receive and leaves its core to the others, so the step lasts the longer of the busy work at the share
    all ranks get (`busy`, `bubble`: seconds at that share) and the rank's busy + idle path at the share of the
    ranks busy on average (a fraction busy / (busy + bubble) of them). Returns the bubble that adds."""
    acc = node.accelerator
    ranks = node.gpus_per_node
    if bubble <= 0 or busy <= 0:
        return bubble
    busy_ranks = ranks * busy / (busy + bubble)
    path = (busy + bubble) * acc.core_share(ranks) / min(1.0, acc.host_cores / (busy_ranks + acc.background_load))
    return max(0.0, path - busy)


def _sync_points(node: Cluster, model: ModelSpec, plan: ParallelPlan, layers: int, has_first: bool,
                 has_last: bool) -> dict[str, float]:
    """Blocking synchronisation points of one optimizer step on one rank of bastion's runtime, by kind
    (specs/profile.py SYNC_OPS), counted from what the other terms cost: FSDP2's gathers and reductions per unit
    (`_runtime_fsdp_comm`'s; none where the profile measured the units on real groups, which already holds their
    waiting), the tensor-parallel collectives the profile counted, context parallelism's K/V
    gather and gradient all-reduce per layer, the pipeline's hops (`pp_comm`'s, as send/recv pairs) and the
    loop's two scalar all-reduces."""
    m = plan.num_microbatches
    collectives = 2.0
    # where the profile timed FSDP2's units on real groups (_runtime_fsdp_comm), their waiting is in that figure
    if plan.dp * plan.cp > 1 and _measured_fsdp(node, plan) is None:
        units = len(fsdp_units(model, plan.tp, "layer", plan.ep, plan.etp)) * layers + 1
        schedule = fsdp_schedule(plan)
        # ZeRO 0 runs FSDP2 replicated (runtime/mesh.py dp_layout): its gradients' all-reduce, no gather
        gathers_per_mb, gathers_once = (0, 0) if plan.zero_stage == 0 else (schedule.gathers_per_micro_batch,
                                                                           schedule.gathers_once)
        collectives += units * (m * (gathers_per_mb + schedule.reduces_per_micro_batch) + gathers_once
                                + schedule.reduces_once)
    if plan.tp > 1 and node.profile is not None:
        for c in node.profile.tp_collectives:
            if c.sequence_parallel == plan.sequence_parallel:
                collectives += m * (c.per_layer * layers + c.ends * (int(has_first) + int(has_last)) / 2)
    if plan.cp > 1:
        collectives += m * layers * (3 if plan.recompute == "full" else 2)
    # `pp_comm`'s hops, a send or a receive each: half as many send/recv pairs (the probe's unit,
    # specs/profile.py SyncWait)
    pairs = _pp_hops(plan) / 2
    return {"all_reduce": collectives, "send_recv": pairs}


def _shared_core_sync_wait(node: Cluster, points: dict[str, float], busy: float) -> float:
    """Seconds a step's synchronisation points (`points`, `_sync_points`) add when the ranks time-share the
    cores: each costs the profile's measured idle time and gloo's transport CPU (`MachineProfile.sync_cost`) for
    the CPU work between syncs (the rank's `busy` wall seconds × its core share, spread evenly over the points);
    none on whole cores or without the profile's [[sync_wait]] rows."""
    profile = node.profile
    total = sum(points.values())
    if profile is None or not profile.sync_waits or total <= 0:
        return 0.0
    share = node.accelerator.core_share(node.gpus_per_node)
    work = busy * share / total
    return sum(count * profile.sync_cost(op, 1.0 / share, work) for op, count in points.items())


def _host_saturated(node: Cluster) -> bool:
    """A host CPU with measured rates: gloo's collectives run on the cores the ranks compute on, so nothing
    hides them (no idle core, no separate engine), and the predictor follows what bastion's runtime does."""
    return node.profile is not None and node.accelerator.host_cores > 0


def _data_parallel_schedule(plan: ParallelPlan, options: PredictOptions) -> FsdpSchedule:
    """How often the software runs the data-parallel collectives of each unit in one step, where nothing measured
    them (datasheet or GPU rates): bastion's runtime as `comm.fsdp_schedule` says (PredictOptions.runtime_fsdp);
    other software reduces ZeRO 0-2 gradients once per step, after the last micro-batch, and gathers ZeRO 1/2
    parameters once (DDP's no_sync, Megatron's distributed optimizer, DeepSpeed), while ZeRO-3 gathers twice and
    reduce-scatters with every micro-batch."""
    if options.runtime_fsdp:
        return fsdp_schedule(plan)
    if plan.zero_stage == 3:
        return FsdpSchedule(2, 1, 0, 0)
    return FsdpSchedule(0, 0, 1, 1)


def _runtime_fsdp_note(plan: ParallelPlan, schedule: FsdpSchedule) -> str:
    """What the estimate assumes of FSDP2's collectives in bastion's runtime (`_data_parallel_schedule`)."""
    m = plan.num_microbatches
    gathers = 0 if plan.zero_stage == 0 else m * schedule.gathers_per_micro_batch + schedule.gathers_once
    reductions = m * schedule.reduces_per_micro_batch + schedule.reduces_once
    return (f"FSDP2 as bastion's runtime runs it: each unit gathered {gathers} and its gradients reduced "
            f"{reductions} time{'s' if reductions != 1 else ''} a step ({m} micro-batch{'es' if m != 1 else ''})")


def _runtime_fsdp_comm(node: Cluster, model: ModelSpec, plan: ParallelPlan, layers: int, has_first: bool,
                       has_last: bool) -> tuple[float, float]:
    """Seconds of FSDP2's collectives on one rank of bastion's runtime, none hidden, as (per micro-batch, once
    per step): every plan with dp × cp > 1 runs FSDP2 (runtime/parallelize.py), on the schedule
    `comm.fsdp_schedule` says. Where the profile timed FSDP2's units on real groups of the plan's layout, each unit
    costs that (hooks, latency, waiting) plus its collectives' bytes (`_cpu_line_fsdp_comm` where the profile
    holds them as a CPU line). A micro-batch that runs no collective (its reduction deferred to the last) still
    runs FSDP2's hooks (the profile's one-process layer_fsdp_s per unit)."""
    shard = plan.dp * plan.cp
    if shard <= 1:
        return 0.0, 0.0
    group = comm.place_group(node, shard, plan.tp)
    # the routed experts are their own unit over the expert data-parallel ranks (runtime/parallelize.py)
    expert_group = moe.expert_data_parallel_group(node, shard, plan.tp, plan.ep, plan.etp)
    p_bytes, g_bytes, _ = state_bytes_per_param(plan.precision)
    root = model.vocab_size * model.hidden_size // plan.tp * (int(has_first) + int(has_last)) + model.hidden_size
    layer = [(n, expert_group if expert else group) for n, expert in fsdp_units(model, plan.tp, "layer", plan.ep,
                                                                                plan.etp)]
    units = layer * layers + [(root, group)]
    measured = _measured_fsdp(node, plan)
    schedule = fsdp_schedule(plan)
    if measured is None:
        # (the hooks are already in the host overhead per micro-batch: _micro_batch_overhead)
        gather = sum(comm.all_gather_time(node, float(n * p_bytes), g) for n, g in units)
        reduce = sum(comm.reduce_scatter_time(node, float(n * g_bytes), g) for n, g in units)
        return _on_fsdp_schedule(schedule, gather, reduce, 0.0, 0.0)
    # the profile timed FSDP2's units on real groups at a negligible size (hooks, the collectives' latency, the
    # waiting): per unit that, plus only the bytes of its collectives at the measured bandwidth. ZeRO 0 runs
    # FSDP2 replicated (runtime/mesh.py dp_layout): no gather, its gradients all-reduced.
    share = node.accelerator.core_share(node.gpus_per_node)
    fixed = (len(layer) * layers * measured.unit_s + measured.root_s) / share
    hooks = (len(layer) * layers + 1) * node.profile.host_overheads.layer_fsdp_s / share
    if measured.cpu_line:
        return _cpu_line_fsdp_comm(node, plan, units, measured, schedule, fixed, hooks)

    def bytes_term(op: str, nbytes: float, g: comm.GroupPlacement) -> float:
        if g.size <= 1 or nbytes <= 0:
            return 0.0
        at_size = node.profile.collective_wall_time(op, g.size, nbytes, share) or 0.0
        return at_size - (node.profile.collective_wall_time(op, g.size, 0.0, share) or 0.0)

    gather = sum(bytes_term("all_gather", float(n * p_bytes), g) for n, g in units if plan.zero_stage > 0)
    reduce = sum(bytes_term("all_reduce" if plan.zero_stage == 0 else "reduce_scatter", float(n * g_bytes), g)
                 for n, g in units)
    return _on_fsdp_schedule(schedule, gather, reduce, fixed, hooks)


def _cpu_line_fsdp_comm(node: Cluster, plan: ParallelPlan, units: list[tuple[int, comm.GroupPlacement]],
                        measured: FsdpUnitCost, schedule: FsdpSchedule, fixed: float, hooks: float
                        ) -> tuple[float, float]:
    """`_runtime_fsdp_comm` where the profile's row also holds FSDP2's CPU seconds per unit as a line in the
    unit's parameter bytes (FsdpUnitCost.cpu_line): a unit's bytes cost the line's slope / the ranks' core share
    instead of the collective probe's bytes term, gathers and reductions included. On a host whose ranks share the
    cores the work over a unit's bytes is CPU work, and FSDP2's is more than the raw collective's (its replicate
    path's copy-in, size-1 reduce-scatter copy, averaging and copy-out, the forward's copies: memory passes at the
    shared bandwidth), which the line measured at a realistic width holds. The size-free part (`fixed`) stays the
    wall figure at negligible size: it holds the waiting the CPU line does not (charging the line's own fixed CPU
    seconds instead put `tiny`'s ZeRO-3 at 0.65x of its measured step, 0.78x with the wall figure, in the
    2026-12-07 19:00 table: a choice made after seeing that table). The waiting stays out of `_sync_points` as
    before."""
    share = node.accelerator.core_share(node.gpus_per_node)
    p_bytes = state_bytes_per_param(plan.precision)[0]
    line = sum(n * p_bytes for n, g in units if g.size > 1) * measured.cpu_s_per_byte / share
    gathered = _gathers_share_of_cpu_line(node, plan, measured)
    recurring, reduction = fixed + line * gathered, line * (1.0 - gathered)
    if schedule.gathers_per_micro_batch and not schedule.reduces_per_micro_batch:
        # the gathers recur per micro-batch but the reduction runs once (ZeRO-3 under a pipeline): only the
        # gathers' part of the line recurs with the measured unit cost
        return recurring, reduction
    return _on_fsdp_schedule(schedule, 0.0, 0.0, recurring + reduction, hooks)


def _on_fsdp_schedule(schedule: FsdpSchedule, gather: float, reduce: float, fixed: float, hooks: float
                      ) -> tuple[float, float]:
    """(per micro-batch, once per step) seconds of FSDP2's gathers and reductions (`gather`, `reduce`: each
    once, every unit) on `schedule`, with the measured size-free unit cost `fixed`, which recurs with the
    gathers, or else runs once; a micro-batch that runs no collective still runs FSDP2's `hooks`."""
    per_micro_batch = schedule.gathers_per_micro_batch * gather + schedule.reduces_per_micro_batch * reduce
    once = schedule.gathers_once * gather + schedule.reduces_once * reduce
    if schedule.gathers_per_micro_batch:
        return fixed + per_micro_batch, once
    once += fixed
    return per_micro_batch + min(hooks, once), max(0.0, once - hooks)


def _gathers_share_of_cpu_line(node: Cluster, plan: ParallelPlan, measured: FsdpUnitCost) -> float:
    """The part of a measured CPU line (FsdpUnitCost.cpu_s_per_byte: a unit's forward + backward, every
    collective of its layout) that its parameter gathers take, the rest its gradient reduction. ZeRO-3 gathers
    twice and reduce-scatters once, ZeRO-2 gathers once and reduce-scatters once: with both lines of the group
    measured, a gather's per byte is their difference and the reduce-scatter's what ZeRO-2's leaves; else the
    three collectives of equal bytes alike. ZeRO 0 and 1 (all-reduce; gathered once per step) are all reduction
    here: their schedule runs the line together anyway."""
    if plan.zero_stage != 3:
        return 0.0
    zero2 = node.profile.fsdp_unit_cost(2, plan.dp * plan.cp) if node.profile is not None else None
    if zero2 is not None and zero2.cpu_line and measured.cpu_s_per_byte:
        gather = max(0.0, measured.cpu_s_per_byte - zero2.cpu_s_per_byte)
        return min(1.0, 2.0 * gather / measured.cpu_s_per_byte)
    return 2.0 / 3.0


def _measured_fsdp(node: Cluster, plan: ParallelPlan) -> FsdpUnitCost | None:
    """The machine profile's measured FSDP2 unit cost for the plan's ZeRO layout and dp × cp group, if any."""
    if node.profile is None:
        return None
    return node.profile.fsdp_unit_cost(plan.zero_stage, plan.dp * plan.cp)


def _step_overhead(node: Cluster, model: ModelSpec, plan: ParallelPlan, layers: int, has_first: bool,
                   has_last: bool) -> float:
    """Seconds of one optimizer step's host work on one rank: AdamW, zero_grad and clipping per parameter
    tensor, plus the loop's fixed bookkeeping."""
    if node.profile is None:
        return 0.0
    host = node.profile.host_overheads
    per_layer = 6 + model.ffn_matrices + (6 if model.bias else 0)  # 2 norms, q k v o, the MLP matrices
    tensors = layers * per_layer + int(has_first) + 2 * int(has_last)  # embedding; final norm and LM head
    dtensors = plan.tp > 1 or plan.dp * plan.cp > 1
    per_tensor = host.optimizer_dtensor_per_tensor_s if dtensors else host.optimizer_per_tensor_s
    # the loop's two scalar all-reduces over every rank (the gradient norm and the logged loss)
    world = comm.place_group(node, plan.num_gpus, 1)
    scalars = 2 * comm.all_reduce_time(node, 4.0, world)
    return (tensors * per_tensor + host.step_s) / node.accelerator.core_share(node.gpus_per_node) + scalars


class _LayerCosts(NamedTuple):
    """Per micro-batch seconds of one layer on one rank."""

    gemm_fwd: float
    attn_fwd: float
    compute: float  # forward + backward GEMMs and attention
    recompute: float
    membound: float
    tp: float
    cp: float
    #: exposed all-to-all, and the expert-tensor-parallel collectives (MoE layers)
    ep: float = 0.0
    etp: float = 0.0


def _counted_tp_comm(cluster: Cluster, plan: ParallelPlan | _StageKey, nbytes: float, where: str) -> float | None:
    """Seconds of the tensor-parallel collectives a machine profile counted the runtime issuing (`where`:
    per_layer or ends), each the bandwidth term of the measured line of its op for an activation of `nbytes`
    (their latency and host work are in the profile's measured layer_tp_s / micro_batch_tp_s, which ran the
    same collectives at a negligible size); None when the profile counted none (or on datasheet rates)."""
    profile = cluster.profile
    counts = [c for c in (profile.tp_collectives if profile else ()) if c.sequence_parallel == plan.sequence_parallel]
    if not counts:
        return None
    share = cluster.accelerator.core_share(cluster.gpus_per_node)
    seconds = 0.0
    for c in counts:
        at_size = profile.collective_wall_time(c.op, plan.tp, nbytes, share)
        if at_size is not None:
            seconds += getattr(c, where) * (at_size - profile.collective_wall_time(c.op, plan.tp, 0.0, share))
    return seconds


@lru_cache(maxsize=16384)
def _layer_costs(model: ModelSpec, cluster: Cluster, plan: _StageKey, seq_len: int,
                 options: PredictOptions) -> _LayerCosts:
    """One layer's costs per micro-batch on one rank: the layer without its routed experts
    (`_unrouted_layer_costs`), plus an MoE layer's routed experts (moe.routed_cost), their all-to-all and the
    recomputation of both."""
    unrouted = _unrouted_layer_costs(model, cluster, plan._replace(ep=1, etp=1, a2a_overlap=0.0), seq_len, options)
    gemm_fwd, attn_fwd, layer_compute, layer_recompute, layer_membound, layer_tp, layer_cp = unrouted[:7]
    routed = None
    if model.num_experts:
        imbalance, _ = moe.imbalance(model, options)
        routed = moe.routed_cost(model, cluster, plan.micro_batch * seq_len // plan.cp, plan.tp, plan.ep, plan.etp,
                                 plan.precision, imbalance, options.fp8_recipe,
                                 moe.routing_layout(plan.tp, plan.etp, plan.sequence_parallel,
                                                    options.moe_expert_layout),
                                 options.moe_dispatcher, options.grouped_gemm)
        gemm_fwd += routed.gemm_fwd
        layer_compute += 3 * routed.gemm_fwd
        layer_membound += routed.membound
    if plan.recompute == "full":
        layer_recompute = gemm_fwd + attn_fwd
        layer_membound *= 4 / 3  # the forward third of the memory-bound work runs again
    elif plan.recompute == "selective" and options.selective_recompute == "every-second-matmul":
        layer_membound *= 4 / 3  # every elementwise op of the forward runs again
    layer_ep = layer_etp = 0.0
    if routed is not None:
        again = 1.5 if plan.recompute == "full" else 1.0  # the recomputed forward dispatches and combines again
        layer_ep = again * moe.exposed_a2a(routed.a2a, layer_compute, plan.a2a_overlap)
        layer_etp = again * routed.etp_comm
    return _LayerCosts(gemm_fwd, attn_fwd, layer_compute, layer_recompute, layer_membound, layer_tp, layer_cp,
                       layer_ep, layer_etp)


@lru_cache(maxsize=16384)
def _unrouted_layer_costs(model: ModelSpec, cluster: Cluster, plan: _StageKey, seq_len: int,
                          options: PredictOptions) -> _LayerCosts:
    """One layer's costs without an MoE layer's routed experts, which read none of the key's expert fields (the
    caller clears them, so that the planner's many ep × etp of one configuration share this cache entry). Full
    recompute and the memory-bound work recomputation adds are left to `_layer_costs`: they grow with the
    routed experts' work."""
    acc = cluster.accelerator
    tokens = plan.micro_batch * seq_len // plan.cp
    a = activation_dtype_bytes(plan.precision)
    gemm_fwd = _layer_gemm_fwd_time(model, cluster, plan, tokens, options.fp8_recipe)
    attn_fwd, attn_fwdbwd = attention_times(model, cluster, plan, seq_len, options)
    layer_compute = 3 * gemm_fwd + attn_fwdbwd
    # (effective bytes per token, activation width) of the hidden-state ops and of the MLP activation
    membound_parts = list(compute.layer_membound_parts(model, plan.tp, plan.sequence_parallel, plan.precision,
                                                       options.dropout))
    if options.compiled:
        fraction = load_calibration().membound["compiled_layer_membound_fraction"]
        membound_parts = [(per_token * fraction, width) for per_token, width in membound_parts]
    if model.num_experts:
        # the per-token membound above counts a dense MLP's activation; an MoE layer runs its shared experts' on
        # every token (the routed experts' is in the routed cost)
        dtype = 2.0 if plan.precision == "fp32" else 1.0
        (act_per_token, act_width) = membound_parts[1]
        membound_parts[1] = (act_per_token + dtype * (moe.mlp_activation_bytes_per_token(model, _mlp_width(model))
                                                      - moe.mlp_activation_bytes_per_token(
                                                          model, model.ffn_hidden_size)) / plan.tp, act_width)
    # each op's size decides, on a host CPU with a measured curve, whether it streams from the caches
    layer_membound = (sum(compute.membound_time(acc, tokens * per_token,
                                                compute.elementwise_op_bytes(tokens, width, plan.precision))
                          for per_token, width in membound_parts)
                      + _layer_fp8_cast_time(model, cluster, plan, tokens, options.fp8_recipe))
    if plan.recompute == "selective" and options.selective_recompute == "every-second-matmul":
        layer_recompute = sum(compute.gemm_time(acc, plan.precision, m, k, n, options.fp8_recipe)
                              for m, k, n in _every_second_matmul_shapes(model, plan, tokens))
    elif plan.recompute == "selective":
        layer_recompute = attn_fwd
    else:
        layer_recompute = 0.0  # full recompute: _layer_costs

    # tensor parallelism: 2 all-reduces (or all-gather + reduce-scatter under SP) forward, 2 backward, 2 more
    # when the whole layer is recomputed; Megatron does not overlap them with compute
    layer_tp = 0.0
    if plan.tp > 1:
        tp_group = comm.place_group(cluster, plan.tp, 1)
        # an MoE layer without shared experts has no tensor-parallel MLP: the router sees the sequence-parallel
        # slice of the tokens, so only attention's collectives remain
        collectives = 4 + (2 if plan.recompute == "full" else 0)
        if model.num_experts and not _mlp_width(model):
            collectives //= 2
        nbytes = float(tokens * model.hidden_size * a)
        counted = _counted_tp_comm(cluster, plan, nbytes, "per_layer")
        if counted is not None:
            # the collectives the profile counted the runtime issuing per block; a fully recomputed block runs
            # its forward again (a third of the work, as _micro_batch_overhead counts its dispatch)
            layer_tp = counted * (4 / 3 if plan.recompute == "full" else 1.0)
        elif plan.sequence_parallel and cluster.profile is not None:
            # measured collectives: each all-reduce is an all-gather and a reduce-scatter under SP, two
            # latencies (the bandwidth terms of the datasheet model are the same either way)
            layer_tp = collectives * (comm.all_gather_time(cluster, nbytes, tp_group)
                                      + comm.reduce_scatter_time(cluster, nbytes, tp_group))
        else:
            layer_tp = collectives * comm.all_reduce_time(cluster, nbytes, tp_group)

    # context parallelism (PredictOptions.context_parallel)
    layer_cp = 0.0
    if plan.cp > 1:
        cp_group = comm.place_group(cluster, plan.cp, plan.tp)
        kv_bytes = 2.0 * tokens * model.kv_width / plan.tp * a  # this rank's K and V
        if options.context_parallel == "ring":
            # cp steps, each hop hidden under the previous step's attention (comm.ring_attention_exposed), and the
            # merge of every step's partial output and gradients; full recompute runs the forward ring again
            fwd_exposed, bwd_exposed = comm.ring_attention_exposed(cluster, kv_bytes, plan.cp, cp_group, attn_fwd,
                                                                   attn_fwdbwd - attn_fwd)
            fwd_merge, bwd_merge = (compute.membound_time(cluster.accelerator, tokens * nbytes)
                                    for nbytes in compute.ring_merge_bytes_per_token(
                                        model.q_width // plan.tp, model.kv_width // plan.tp, plan.cp))
            layer_cp = fwd_exposed + bwd_exposed + fwd_merge + bwd_merge
            if plan.recompute == "full":
                layer_cp += fwd_exposed + fwd_merge
        elif options.context_parallel == "all-gather":
            # the whole sequence's K,V gathered before attention and their gradients all-reduced after it (what
            # bastion's runtime does: exact on any backend), nothing overlapped; full recompute gathers again
            gather = comm.all_gather_time(cluster, kv_bytes * plan.cp, cp_group)
            layer_cp = gather * (2 if plan.recompute == "full" else 1) + comm.all_reduce_time(
                cluster, kv_bytes * plan.cp, cp_group)
        else:
            raise ValueError(f"context_parallel must be 'all-gather' or 'ring', got {options.context_parallel!r}")
    return _LayerCosts(gemm_fwd, attn_fwd, layer_compute, layer_recompute, layer_membound, layer_tp, layer_cp)


@lru_cache(maxsize=16384)
def _head_costs(model: ModelSpec, cluster: Cluster, plan: _StageKey, seq_len: int, options: PredictOptions
                ) -> tuple[float, float]:
    """(forward + backward GEMM, loss memory-bound) seconds of the LM head for one micro-batch."""
    acc = cluster.accelerator
    tokens = plan.micro_batch * seq_len // plan.cp
    # fp8 recipes (Transformer Engine, torchao/torchtitan) keep the LM head in bf16
    head_precision = "bf16" if plan.precision == "fp8" else plan.precision
    head_fwd = compute.gemm_time(acc, head_precision, tokens, model.hidden_size, model.vocab_size // plan.tp)
    return 3 * head_fwd, compute.membound_time(acc, tokens * compute.cross_entropy_bytes_per_token(
        model, plan.tp, options.fused_cross_entropy), compute.elementwise_op_bytes(
        tokens, model.vocab_size / plan.tp, head_precision))


@lru_cache(maxsize=65536)
def _stage_time_of(model: ModelSpec, cluster: Cluster, plan: _StageKey, seq_len: int, layers: int,
                   has_first: bool, has_last: bool, options: PredictOptions, dense: int = 0,
                   dense_recomputed: int = 0) -> _StageTime:
    """`dense` of the stage's `layers` are an MoE model's layers without experts (leading or interleaved),
    `dense_recomputed` of them among the `plan.recomputed` a partial recompute re-runs."""
    key = plan._replace(dp=1, zero_stage=0, recomputed=-1, offloaded=0, deferred_reduction=False)
    costs = _mean_layer_costs(model, cluster, key, seq_len, layers, dense, plan.recomputed, dense_recomputed,
                              options)
    gemm_fwd, attn_fwd, layer_compute, layer_recompute, layer_membound, layer_tp, layer_cp, layer_ep, layer_etp = costs

    compute_t = layers * layer_compute
    recompute_t = layers * layer_recompute
    membound_t = layers * layer_membound
    backward_t = layers * (layer_compute * (2 / 3) + layer_recompute)
    forward_t = layers * (gemm_fwd + attn_fwd + layer_membound / 4)
    head_compute = head_membound = 0.0
    if has_last:
        head_compute, head_membound = _head_costs(model, cluster, key, seq_len, options)
        backward_t += head_compute * 2 / 3
    compute_t += head_compute
    membound_t += head_membound

    # ZeRO-3 / FSDP: each layer's parameters are all-gathered for the forward and again for the backward, and
    # its gradients reduce-scattered (unless deferred to the step's end: estimate's once-per-step reduction);
    # prefetching hides them under the neighbouring layer's compute
    # one layer's forward and backward passes: what a prefetched ZeRO-3 gather or an offload copy can hide under
    fwd_window = gemm_fwd + attn_fwd + layer_membound / 4
    bwd_window = layer_compute - gemm_fwd - attn_fwd + layer_recompute + layer_membound * 3 / 4
    fsdp = 0.0
    if plan.zero_stage == 3 and plan.dp > 1:
        # the key's dp is the shard degree dp × cp; its members are tp ranks apart (cp inside dp)
        dp_group = comm.place_group(cluster, plan.dp, plan.tp)
        expert_group = moe.expert_data_parallel_group(cluster, plan.dp, plan.tp, plan.ep, plan.etp)
        units = [(n, expert_group if expert else dp_group)
                 for n, expert in fsdp_units(model, plan.tp, options.fsdp_unit, plan.ep, plan.etp)]
        p_bytes, g_bytes, _ = state_bytes_per_param(plan.precision, options.fp32_gradients)
        gather = sum(comm.all_gather_time(cluster, float(n * p_bytes), group) for n, group in units)
        scatter = 0.0 if plan.deferred_reduction else sum(comm.reduce_scatter_time(cluster, float(n * g_bytes), group)
                                                          for n, group in units)
        # while a collective overlaps compute, its NCCL kernels hold SMs: the compute under it runs slower
        slow = load_calibration().network["overlap_slowdown"]
        fwd_comm, bwd_comm = gather, gather + scatter
        per_layer = (max(0.0, fwd_comm - fwd_window) + slow * min(fwd_comm, fwd_window)
                     + max(0.0, bwd_comm - bwd_window) + slow * min(bwd_comm, bwd_window))
        fsdp = layers * per_layer + gather  # the first gather of each pass has nothing to hide under
        if has_first or has_last:
            # embedding / LM head tables are gathered too (as their own FSDP unit)
            table_numel = model.vocab_size * model.hidden_size // plan.tp * (int(has_first) + int(has_last))
            t_gather = comm.all_gather_time(cluster, float(table_numel * p_bytes), dp_group)
            t_scatter = 0.0 if plan.deferred_reduction else comm.reduce_scatter_time(
                cluster, float(table_numel * g_bytes), dp_group)
            fsdp += max(0.0, 2 * t_gather + t_scatter - head_compute)
    offload = 0.0
    if plan.offloaded:
        # each offloaded layer's saved tensors go out over the host link during the next layer's forward and
        # come back during the backward of the layer after it (Transformer Engine's CPU offloading: copies on
        # their own stream, one layer ahead), exposed where the copy outlasts that layer's pass; the copy engine
        # reads them from HBM going out and writes them coming back, bandwidth the layer's kernels lose
        tokens = plan.micro_batch * seq_len // plan.cp
        fused_rmsnorm = uses_fused_rmsnorm(options, not compute.is_cpu(cluster.accelerator))
        stored = tokens * kept_layer_bytes_per_token(model, seq_len, plan.tp, plan.cp, plan.sequence_parallel,
                                                     plan.recompute, plan.precision, options, fused_rmsnorm, plan.etp)
        copy = comm.host_transfer_time(cluster, stored)
        offload = plan.offloaded * (max(0.0, copy - fwd_window) + max(0.0, copy - bwd_window)
                                    + compute.membound_time(cluster.accelerator, 2 * stored))
    return _StageTime(compute=compute_t, recompute=recompute_t, memory_bound=membound_t,
                      tp_comm=layers * layer_tp, cp_comm=layers * layer_cp, fsdp_exposed=fsdp,
                      backward=backward_t, forward=forward_t, ep_comm=layers * layer_ep,
                      etp_comm=layers * layer_etp, offload=offload)


def _mean_layer_costs(model: ModelSpec, cluster: Cluster, key: _StageKey, seq_len: int, layers: int, dense: int,
                      recomputed: int, dense_recomputed: int, options: PredictOptions) -> _LayerCosts:
    """One layer's costs averaged over the rank's `layers`: every term of _stage_time_of but the ZeRO-3 and
    offload overlap windows is linear in the layer count. `dense` of them are an MoE model's layers without
    experts; under partial recompute (`recomputed` >= 0) that many cost as fully recomputed layers, the rest as
    layers that keep their activations, `dense_recomputed` of the recomputed ones being layers without experts."""
    whole = _layer_costs(model, cluster, key, seq_len, options)
    if not layers or (not dense and recomputed < 0):
        return whole
    dense_model = moe.dense_layer_model(model) if dense else model
    if recomputed < 0:
        groups = [(model, key, layers - dense), (dense_model, key, dense)]
    else:
        kept = key._replace(recompute="none")
        groups = [(model, key, recomputed - dense_recomputed),
                  (model, kept, layers - dense - recomputed + dense_recomputed),
                  (dense_model, key, dense_recomputed), (dense_model, kept, dense - dense_recomputed)]
    costs = [(_layer_costs(m, cluster, k, seq_len, options), n) for m, k, n in groups if n]
    return _LayerCosts(*(sum(c[i] * n for c, n in costs) / layers for i in range(len(whole))))


def _recomputed_share(model: ModelSpec, plan: ParallelPlan) -> float:
    """The share of the model's layers a recompute mode re-runs: all of them, but under partial full recompute
    (recompute_layers) the layers it names."""
    if plan.recompute != "full" or not plan.recompute_layers:
        return 1.0
    return sum(recomputed_layers(model, plan, i) for i in range(plan.pp)) / model.num_layers


def _check_offload(plan: ParallelPlan, cluster: Cluster) -> None:
    if plan.activation_offload and cluster.accelerator.host_link_gbs <= 0:
        raise PlanError(f"activation_offload = {plan.activation_offload}, but the catalog gives "
                        f"{cluster.accelerator.name} no host link to offload over.",
                        fix="set activation_offload = 0, or add host_link_gbs (with its datasheet source) to the "
                            "accelerator's catalog entry.", reason="no host link")


def _plan_options(plan: ParallelPlan, options: PredictOptions) -> PredictOptions:
    """The software options the plan runs under: bastion's runtime folds ep over tp ranks as Megatron-Core lays it
    out (etp 1, each tp rank routing its own 1/tp of the tokens, ep groups of consecutive ranks; runtime/mesh.py);
    an fp8 plan runs the flash kernel its fp8 library brings where the stack says so (fp8_attention_kernel)."""
    if options.moe_expert_layout == "bastion" and moe.runtime_layout(plan) != "bastion":
        options = replace(options, moe_expert_layout=moe.runtime_layout(plan))
    if plan.precision == "fp8" and options.fp8_attention_kernel:
        options = replace(options, flash_attention=True, attention_kernel=options.fp8_attention_kernel,
                          fp8_attention_kernel="")
    return options


def _pp_comm(node: Cluster, cluster: Cluster, model: ModelSpec, plan: ParallelPlan, seq_len: int,
             saturated: bool) -> float:
    """Seconds of the pipeline's point-to-point transfers on the critical path (`cluster`: as one rank sees it):
    what every ZeRO stage and recompute mode of the plan pays alike."""
    if plan.pp == 1:
        return 0.0
    pp_group = comm.place_group(cluster, plan.pp, plan.tp * plan.cp * plan.dp)
    tokens = plan.micro_batch * seq_len // plan.cp
    # Megatron's scatter/gather optimisation sends 1/tp of the activation per TP rank
    act_bytes = tokens * model.hidden_size * activation_dtype_bytes(plan.precision) / plan.tp
    hop = comm.p2p_time(cluster, float(act_bytes), pp_group.domains > 1)
    if saturated and node.profile.host_overheads.pipeline_micro_batch_s > 0:
        # a hop's fixed cost: its calls' host work is in the profile's pipeline_micro_batch_s (real pipeline
        # pairs, negligible size); the rest of the send/recv line's latency is waiting for a peer that shares
        # the cores, the shared-core bubble's: only the bytes remain
        hop -= node.profile.collective_wall_time("send_recv", 2, 0.0,
                                                 node.accelerator.core_share(node.gpus_per_node)) or 0.0
    return hop * _pp_hops(plan)


def _pp_hops(plan: ParallelPlan) -> float:
    """Sends and receives on a pipeline rank's critical path per step: 2 × (m × vpp + pp − 1)."""
    return 2.0 * (plan.num_microbatches * plan.vpp + plan.pp - 1) if plan.pp > 1 else 0.0


class _Stages(NamedTuple):
    """The pipeline ranks the predictor costs: every rank's (layers, has the embedding, has the LM head), the
    ranks whose memory or time can be the worst, and each rank's layers without experts."""

    roles: tuple[tuple[int, bool, bool], ...]
    costed: tuple[int, ...]
    dense: tuple[int, ...]


def _stages(model: ModelSpec, plan: ParallelPlan) -> _Stages:
    return _stages_of(model, plan.pp_schedule, plan.pp, plan.vpp, plan.chunk_layers(model))


@lru_cache(maxsize=4096)
def _stages_of(model: ModelSpec, pp_schedule: str, pp: int, vpp: int, counts: tuple[int, ...] | None) -> _Stages:
    roles = schedule.stage_roles(model.num_layers, pp_schedule, pp, vpp, counts)
    dense = tuple(stage_dense_layers(model, pp_schedule, pp, vpp, i, counts) for i in range(pp))
    # a rank's time and model states depend on it only through its role and its layers without experts, and the
    # micro-batches in flight never grow with the rank index: the lowest rank of each (role, dense) is enough
    first_of: dict[tuple[tuple[int, bool, bool], int], int] = {}
    for stage in range(pp):
        first_of.setdefault((roles[stage], dense[stage]), stage)
    return _Stages(roles, tuple(sorted(first_of.values())), dense)


def per_rank(cluster: Cluster) -> Cluster:
    """The cluster as one rank sees it: a host CPU's ranks share its cores and memory bandwidth
    (Accelerator.shared_by); dedicated devices are unchanged."""
    acc = cluster.accelerator
    if acc.host_cores <= 0:
        return cluster
    return replace(cluster, accelerator=acc.shared_by(cluster.gpus_per_node))


class StepFloor(NamedTuple):
    """What every ZeRO stage and recompute mode of a plan pays at least: the step, and per TimeBreakdown term its
    seconds (terms not listed: 0)."""

    step: float
    terms: dict[str, float]


def step_time_lower_bound(model: ModelSpec, cluster: Cluster, plan: ParallelPlan, seq_len: int | None = None,
                          options: PredictOptions | None = None) -> float:
    """A bound `estimate(...).step_time_s` can never go below, for `plan` and every plan that differs from it
    only in zero_stage, recompute, recompute_layers or activation_offload (the planner prunes with it; pruned ==
    unpruned is tested). See `step_floor` for why it holds."""
    return step_floor(model, cluster, plan, seq_len, options).step


def step_floor(model: ModelSpec, cluster: Cluster, plan: ParallelPlan, seq_len: int | None = None,
               options: PredictOptions | None = None) -> StepFloor:
    """The step and the terms of `estimate(...).time` that `plan` and every plan differing from it only in
    zero_stage, recompute, recompute_layers or activation_offload pay at least (tests check every one).

    Why it holds. With no recompute and no ZeRO-3 a rank's per-micro-batch time has the least of every term
    (recompute adds a forward, full recompute more memory-bound, TP, CP and all-to-all work, ZeRO-3 exposed
    gathers, offload exposed copies), so each rank's real total is at least its total here, and the slowest rank's
    at least the largest of these. The step is m times the slowest rank's time, plus the bubble proportional to it,
    plus the pipeline's transfers (the same for every ZeRO stage and recompute mode: `_pp_comm`), plus terms that
    are never negative. Per term: the slowest rank's tensor-, context-parallel, all-to-all and compute seconds are
    at least the least any rank has here; the bubble at least its fraction of m × this slowest total; pp_comm is
    exact. On a host whose ranks share its cores, the busy time plus the bubble that adds
    (`_shared_core_bubble`) grows with both, so the bound's smaller busy time and bubble give a smaller sum; there
    the transfers are inside that sum and no term is bounded alone (the bubble alone need not grow)."""
    options = options or DEFAULT_OPTIONS
    s = seq_len or model.seq_len
    return _step_floor(model.with_seq_len(s), cluster, plan, s, _plan_options(plan, options))


def _step_floor(model: ModelSpec, node: Cluster, plan: ParallelPlan, s: int, options: PredictOptions) -> StepFloor:
    cluster = per_rank(node)
    key = _StageKey(1, plan.tp, plan.cp, 0, plan.micro_batch, "none", plan.sequence_parallel, plan.precision,
                    *_expert_key(plan, options))
    slowest, least = _micro_batch_floor(model, cluster, key, s, options, plan.pp_schedule, plan.pp, plan.vpp,
                                        plan.chunk_layers(model))
    m = plan.num_microbatches
    bubble = schedule.bubble_fraction(plan.pp_schedule, plan.pp, plan.vpp, m) * m * slowest
    if _host_saturated(node):
        if plan.pp > 1:
            bubble = _shared_core_bubble(node, m * slowest, bubble)
        return StepFloor((m * slowest + bubble) * (1 - 1e-12), {})
    pp_comm = _pp_comm(node, cluster, model, plan, s, False)
    # the margin absorbs rounding in a differently ordered sum
    margin = 1 - 1e-12
    terms = {name: m * v * margin for name, v in least.items()}
    terms.update(bubble=bubble * margin, pp_comm=pp_comm * margin)
    return StepFloor((m * slowest + bubble + pp_comm) * margin, terms)


#: the TimeBreakdown terms step_floor bounds per rank -> the _LayerCosts field they sum
_FLOORED_TERMS = {"compute": "compute", "tp_comm": "tp", "cp_comm": "cp", "ep_comm": "ep", "etp_comm": "etp"}


def _micro_batch_floor(model: ModelSpec, cluster: Cluster, key: _StageKey, s: int, options: PredictOptions,
                       pp_schedule: str, pp: int, vpp: int, counts: tuple[int, ...] | None
                       ) -> tuple[float, dict[str, float]]:
    """Per micro-batch: the slowest costed rank's total under `key` (no recompute, no ZeRO-3, no host overheads:
    what _stage_time_of(...).total is there), and per term the least any costed rank has."""
    moe_layer = _layer_costs(model, cluster, key, s, options)
    # a layer without experts and the LM head read no expert field: keyed without them, every ep × etp of a
    # configuration shares their cache entries
    shared = key._replace(ep=1, etp=1, a2a_overlap=0.0)
    dense_layer = (_layer_costs(moe.dense_layer_model(model), cluster, shared, s, options)
                   if has_dense_layers(model) else moe_layer)
    head = _head_costs(model, cluster, shared, s, options)
    moe_total, dense_total = sum(moe_layer[2:]), sum(dense_layer[2:])  # every field but the forward parts
    # per floored term: a layer with experts, one without, the LM head (its GEMMs are compute)
    per_term = [(getattr(moe_layer, cost), getattr(dense_layer, cost), head[0] if term == "compute" else 0.0)
                for term, cost in _FLOORED_TERMS.items()]
    slowest = 0.0
    least = [float("inf")] * len(per_term)
    for experts, dense, has_last in _costed_ranks(model, pp_schedule, pp, vpp, counts):
        slowest = max(slowest, experts * moe_total + dense * dense_total + has_last * (head[0] + head[1]))
        for j, (with_experts, without, lm_head) in enumerate(per_term):
            least[j] = min(least[j], experts * with_experts + dense * without + has_last * lm_head)
    return slowest, dict(zip(_FLOORED_TERMS, least, strict=True))


def work_key(plan: Any) -> tuple:
    """What `micro_batch_work` reads of a plan — a ParallelPlan, or anything with its dp, tp, cp, ep, etp,
    micro_batch, sequence_parallel and precision (the planner's leaves) —: a caller may cache it by this. dp and cp
    count only through whether the expert groups fold over tp ranks (ParallelPlan.folds_experts, which
    _plan_options reads)."""
    folds = expert_grid(plan.dp * plan.cp, plan.tp, plan.ep, plan.etp)[1]
    return plan.tp, plan.cp, plan.ep, plan.etp, plan.micro_batch, plan.sequence_parallel, plan.precision, folds


def micro_batch_work(model: ModelSpec, cluster: Cluster, plan: ParallelPlan, seq_len: int | None = None,
                     options: PredictOptions | None = None) -> float:
    """Seconds of one micro-batch summed over all of `plan`'s pipeline ranks (every layer once, the LM head
    once), with no recompute, no ZeRO-3 and no host work: the sum over the ranks of `step_floor`'s per-rank
    totals. It reads of `plan` only its `work_key`, not its pipeline; `quick_step_floor` makes it a step floor for
    any pipeline."""
    options = _plan_options(plan, options or DEFAULT_OPTIONS)
    s = seq_len or model.seq_len
    model = model.with_seq_len(s)
    rank = per_rank(cluster)
    key = _StageKey(1, plan.tp, plan.cp, 0, plan.micro_batch, "none", plan.sequence_parallel, plan.precision,
                    *_expert_key(plan, options))
    moe_total = sum(_layer_costs(model, rank, key, s, options)[2:])  # every field but the forward parts
    # a layer without experts and the LM head read no expert field: keyed without them, every ep × etp of a
    # configuration shares their cache entries (the planner asks for thousands)
    shared = _StageKey(1, plan.tp, plan.cp, 0, plan.micro_batch, "none", plan.sequence_parallel, plan.precision)
    # the pipeline's ranks hold every layer once: the layers without experts (stage_dense_layers) and the rest
    dense = model.num_layers - model.num_moe_layers if has_dense_layers(model) else 0
    dense_total = sum(_layer_costs(moe.dense_layer_model(model), rank, shared, s, options)[2:]) if dense else 0.0
    return ((model.num_layers - dense) * moe_total + dense * dense_total
            + sum(_head_costs(model, rank, shared, s, options)))


def quick_step_floor(node: Cluster, work: float, pp_schedule: str, pp: int, vpp: int, microbatches: int) -> float:
    """A step `step_floor(...).step` is never above, for a plan whose `micro_batch_work` is `work`, of this
    pipeline and micro-batch count: m × work / pp × (1 + the bubble fraction); no stage layout is read.

    Why it holds. `step_floor`'s step is (m × slowest + bubble + pp_comm) with slowest the largest per-rank total
    of `_micro_batch_floor`, bubble = its fraction × m × slowest, pp_comm ≥ 0; on a host whose ranks share its
    cores, m × slowest + a bubble ≥ 0 (`_shared_core_bubble`). Each layer sits on one pipeline rank and the LM
    head on one, so the ranks' totals add up to `work`: the largest is at least their mean, work / pp. The margin
    covers the different order of the sums."""
    bubble = 0.0 if _host_saturated(node) else max(0.0, schedule.bubble_fraction(pp_schedule, pp, vpp,
                                                                                  microbatches))
    return microbatches * work / pp * (1 + bubble) * (1 - 1e-9)


@lru_cache(maxsize=4096)
def _costed_ranks(model: ModelSpec, pp_schedule: str, pp: int, vpp: int, counts: tuple[int, ...] | None
                  ) -> tuple[tuple[int, int, bool], ...]:
    """(layers with experts, layers without, has the LM head) of each costed rank (_Stages.costed), each once."""
    stages = _stages_of(model, pp_schedule, pp, vpp, counts)
    return tuple(dict.fromkeys((stages.roles[i][0] - stages.dense[i], stages.dense[i], stages.roles[i][2])
                               for i in stages.costed))


def memory_lower_bound(model: ModelSpec, cluster: Cluster, plan: ParallelPlan, seq_len: int | None = None,
                       options: PredictOptions | None = None) -> float:
    """Bytes per device `estimate(...).memory.total` can never go below, for `plan` and every plan that differs
    from it only in recompute, recompute_layers or activation_offload (the planner settles out-of-memory plans with
    it; pruned == unpruned is tested).

    Per rank: the model states, plus the layer inputs of every micro-batch in flight — what full recompute keeps,
    and every other mode keeps more — with the allocator's fragmentation share of them and its fixed reserve."""
    options = options or DEFAULT_OPTIONS
    s = seq_len or model.seq_len
    model = model.with_seq_len(s)
    stages = _stages(model, plan)
    inputs_per_token = activation_bytes_per_token(model, s, plan.tp, plan.sequence_parallel, "full", plan.precision)
    tokens = plan.micro_batch * s / plan.cp
    m = plan.num_microbatches
    # with a host link any layer but each chunk's last may be offloaded (memory.offloaded_layers): only those stay
    offloadable = cluster.accelerator.host_link_gbs > 0

    def kept(i: int) -> float:
        layers = stages.roles[i][0]
        if not offloadable or not layers:
            return 1.0
        return sum(1 for n in stage_chunk_layers(model, plan, i) if n) / layers  # each non-empty chunk's last

    worst = max(sum(stage_states(model, plan, i, options.fp32_gradients, options.runtime_fsdp))
                + (1 + options.fragmentation) * tokens * inputs_per_token
                * schedule.layer_microbatches_in_flight(plan.pp_schedule, plan.pp, plan.vpp, m, i,
                                                        stages.roles[i][0])
                * kept(i)
                for i in stages.costed)
    reserve = 0.0 if compute.is_cpu(cluster.accelerator) else options.runtime_reserve_gib * 2**30
    return (worst + reserve) * (1 - 1e-12)  # the margin absorbs rounding in a differently ordered sum


def _checked(model: ModelSpec, cluster: Cluster, plan: ParallelPlan, seq_len: int | None,
             options: PredictOptions | None) -> tuple[ModelSpec, int, PredictOptions]:
    """The model at the sequence length, the sequence length and the plan's software options, once the plan is
    checked (PlanError)."""
    options = options or DEFAULT_OPTIONS
    s = seq_len or model.seq_len
    model = model.with_seq_len(s)  # learned position tables are sized by the sequence length
    plan.validate(model, cluster, s)
    options = _plan_options(plan, options)
    _check_offload(plan, cluster)
    return model, s, options


def memory_fit(model: ModelSpec, cluster: Cluster, plan: ParallelPlan, seq_len: int | None = None,
               options: PredictOptions | None = None) -> tuple[bool, float]:
    """`estimate`'s (fits, memory.total) without the step time (the planner asks it first: a plan that does not
    fit needs nothing more); raises PlanError where `estimate` does."""
    model, s, options = _checked(model, cluster, plan, seq_len, options)
    acc = per_rank(cluster).accelerator
    total = max(stage_memory(model, plan, s, i, not compute.is_cpu(acc), options).total
                for i in _stages(model, plan).costed)
    return total <= acc.hbm_bytes, total


def estimate(model: ModelSpec, cluster: Cluster, plan: ParallelPlan, seq_len: int | None = None,
             options: PredictOptions | None = None, detail: bool = True) -> Estimate:
    """Predict memory per device and time per optimizer step. Raises PlanError for an inconsistent plan;
    a plan that does not fit in memory is returned with `fits = False`. With `detail=False` (the planner's
    bulk calls) `memory_by_stage` lists only one rank per role; every other figure is the same."""
    model, s, options = _checked(model, cluster, plan, seq_len, options)
    node = cluster
    cluster = per_rank(cluster)
    acc = cluster.accelerator
    m = plan.num_microbatches
    is_gpu = not compute.is_cpu(acc)

    stages = _stages(model, plan)
    roles = stages.roles
    # the fullest and the slowest rank are among the first rank of each role (schedule.representative_stages)
    representatives = stages.costed
    memory_by_stage = [stage_memory(model, plan, s, i, is_gpu, options)
                       for i in (range(plan.pp) if detail else representatives)]
    worst_memory = max(memory_by_stage, key=lambda mb: mb.total)

    stage_times = [_stage_time(model, cluster, plan, s, *roles[i], options, stage=i, dense=stages.dense[i])
                   for i in representatives]
    saturated = _host_saturated(node)
    if saturated:
        fsdp = {i: _runtime_fsdp_comm(node, model, plan, *roles[i]) for i in representatives}
        stage_times = [replace(t, host_overhead=_micro_batch_overhead(node, plan, *roles[i]),
                               fsdp_exposed=fsdp[i][0],
                               tp_comm=t.tp_comm + _tp_ends_comm(cluster, model, plan, s, *roles[i]))
                       for t, i in zip(stage_times, representatives, strict=True)]
    slowest = max(stage_times, key=lambda t: t.total)

    # pipeline: bubble and the point-to-point transfers on the critical path
    bubble = schedule.bubble_fraction(plan.pp_schedule, plan.pp, plan.vpp, m) * m * slowest.total
    pp_comm = _pp_comm(node, cluster, model, plan, s, saturated)
    if plan.pp > 1 and saturated:
        bubble = _shared_core_bubble(node, m * slowest.total + pp_comm, bubble)

    # data parallelism: the collectives `_data_parallel_schedule` runs per step that the stage time does not hold
    # (ZeRO 0-2's; ZeRO-3's reduction where it is deferred to the step's end). Each reduction overlaps the backward
    # it follows, but for the last bucket (DDP's buckets); ZeRO 1/2's gathers the forward that needs them.
    # FSDP2's once-per-step part (its gradient reduction after the last backward where `comm.fsdp_schedule` defers it)
    dp_comm = m * slowest.fsdp_exposed + (max(once for _, once in fsdp.values()) if saturated else 0.0)
    # ZeRO's sharding of the states (not as the runtime holds them in a step): the reductions' bytes below
    # are the sharded gradients times the shard degree
    worst = max(representatives, key=lambda i: sum(stage_states(model, plan, i, options.fp32_gradients)))
    worst_states = stage_states(model, plan, worst, options.fp32_gradients)
    p_bytes, g_bytes, o_bytes = state_bytes_per_param(plan.precision, options.fp32_gradients)
    dp_schedule = _data_parallel_schedule(plan, options)
    if plan.zero_stage < 3:
        reductions = m * dp_schedule.reduces_per_micro_batch + dp_schedule.reduces_once
        gathers = m * dp_schedule.gathers_per_micro_batch + dp_schedule.gathers_once
    else:  # ZeRO-3's gathers (and its reductions per micro-batch) are in the stage time (`_stage_time_of`)
        reductions, gathers = dp_schedule.reduces_once, 0
    if max(plan.shard_degree, plan.expert_data_parallel) > 1 and reductions and not saturated:
        # gradients are reduced over dp × cp (context-parallel ranks hold the same parameters), the routed
        # experts' over the ranks that hold the same experts (Megatron-Core's expert-data-parallel group; folded
        # over tp ranks it is not a subgroup of dp × cp)
        dp_group = comm.place_group(cluster, plan.shard_degree, plan.tp)
        expert_group = moe.expert_data_parallel_group(cluster, plan.shard_degree, plan.tp, plan.ep, plan.etp)
        expert_grads = stage_expert_grad_bytes(model, plan, worst, options.fp32_gradients)
        if plan.zero_stage < 2:
            dense_grads = worst_states[1] - expert_grads
        else:
            dense_grads = (worst_states[1] - expert_grads / expert_group.size) * plan.shard_degree
        bucket = min(options.dp_bucket_bytes, dense_grads or expert_grads)
        last_group = dp_group if dense_grads else expert_group
        if plan.zero_stage == 0:
            reduce = (comm.all_reduce_time(cluster, dense_grads, dp_group)
                      + comm.all_reduce_time(cluster, expert_grads, expert_group))
            gather = 0.0
        else:
            reduce = (comm.reduce_scatter_time(cluster, dense_grads, dp_group)
                      + comm.reduce_scatter_time(cluster, expert_grads, expert_group))
            gather = (comm.all_gather_time(cluster, dense_grads / g_bytes * p_bytes, dp_group)
                      + comm.all_gather_time(cluster, expert_grads / g_bytes * p_bytes, expert_group)
                      ) if gathers else 0.0
        last_bucket = comm.all_reduce_time(cluster, bucket, last_group)
        slow = load_calibration().network["overlap_slowdown"]
        hidden = min(reduce, slowest.backward)
        dp_comm += reductions * (max(reduce - slowest.backward, last_bucket) + slow * hidden)
        if gather and options.overlap_param_gather:
            # the next forward hides the gathers, but for the first bucket's
            first = comm.all_gather_time(cluster, bucket / g_bytes * p_bytes, last_group)
            shown = min(gather, slowest.forward)
            dp_comm += gathers * (max(gather - slowest.forward, first) + slow * shown)
        else:
            dp_comm += gathers * gather

    optimizer = compute.membound_time(acc, worst_states[2] / o_bytes * compute.optimizer_bytes_per_param(
        plan.precision, acc))

    step_overhead = max(_step_overhead(node, model, plan, *roles[i]) for i in representatives)
    sync_wait = 0.0
    if saturated:
        slowest_role = roles[representatives[stage_times.index(slowest)]]
        sync_wait = _shared_core_sync_wait(node, _sync_points(node, model, plan, *slowest_role),
                                           m * slowest.total + step_overhead)
    time = TimeBreakdown(
        compute=m * slowest.compute, recompute=m * slowest.recompute, memory_bound=m * slowest.memory_bound,
        tp_comm=m * slowest.tp_comm, cp_comm=m * slowest.cp_comm, ep_comm=m * slowest.ep_comm,
        etp_comm=m * slowest.etp_comm, dp_comm=dp_comm, pp_comm=pp_comm,
        bubble=bubble, optimizer=optimizer, offload=m * slowest.offload,
        host_overhead=m * slowest.host_overhead + step_overhead,
        step=m * slowest.total + bubble + pp_comm + (dp_comm - m * slowest.fsdp_exposed) + optimizer
        + step_overhead + sync_wait, sync_wait=sync_wait)

    tokens_per_step = plan.global_batch * s
    model_flops = flops.model_flops_per_token(model, s) * tokens_per_step
    hardware_flops = model_flops + flops.recompute_flops_per_token(model, s, plan.recompute,
                                                                  options.selective_recompute) * tokens_per_step \
        * _recomputed_share(model, plan)
    peak = acc.peak_tflops(plan.precision) * 1e12 * plan.num_gpus
    assumptions = [
        MFU_CONVENTION,
        f"rates: {node.rates_source}" + (
            "; GEMM/attention efficiency by size, memory bandwidth, core sharing, collectives (latency + "
            "bandwidth by group size) and host overheads (dispatch per block, DTensor with its redistributions "
            "on real tensor-parallel pairs, FSDP hooks, the pipeline schedule per micro-batch, optimizer per "
            "tensor) measured; tensor-parallel collectives per block counted as the runtime issues them"
            + ("; FSDP2's fixed cost per unit (hooks, collective latency, waiting) measured on real groups, its "
               "collectives adding only their bytes" if node.profile.fsdp_units else "")
            + ("; each elementwise op at the bandwidth measured for its size (cache-resident to DRAM)"
               if acc.elementwise_bandwidth_curve else "")
            if node.profile and not is_gpu else ""),
        (f"attention: fused flash kernel '{options.attention_kernel}' (causal blocks skipped, no s×s scores stored)"
         + (f", at most {options.attention_efficiency_cap:g} of the bf16 peak"
            if options.attention_efficiency_cap is not None else "")) if options.flash_attention
        else "attention: unfused softmax (s×s scores stored and streamed)",
        schedule.bubble_note(plan.pp_schedule) if plan.pp > 1 else "no pipeline: no bubble",
        (profiled_rates_note(acc, bool(node.profile.collectives)) if node.profile else rates_note(acc)) if is_gpu
        else (f"a CPU runs every GEMM and attention at its catalog matmul_efficiency {acc.matmul_efficiency:g}, "
              f"memory-bound work at {acc.hbm_bandwidth_gbs:.3g} GB/s") if not node.profile else "",
        "tensor-parallel collectives are not overlapped with compute" if plan.tp > 1 else "",
        ("selective recompute re-runs every second matmul of a block (wk, wo, w3) and its elementwise ops "
         "(op-level checkpointing)") if plan.recompute == "selective"
        and options.selective_recompute == "every-second-matmul" else "",
        (f"{cluster.gpus_per_node} single-threaded ranks share the host's {acc.host_cores} cores: "
         f"{min(1.0, acc.host_cores / cluster.gpus_per_node):.2g} of a core and {acc.hbm_bandwidth_gbs:.3g} GB/s "
         f"each") if acc.host_cores else "",
        (f"ranks time-sharing the cores wait idle at each synchronisation point and gloo's threads take core time "
         f"(measured per point by the CPU work between syncs): {time.sync_wait * 1e3:.3g} ms a step")
        if time.sync_wait else "",
        ("pipeline ranks idle in the bubble leave their cores to the busy ranks; a hop adds only its bytes to "
         "the schedule's measured per-micro-batch cost") if saturated and plan.pp > 1 else "",
        ("under the pipeline schedule FSDP2 reduces gradients once per step (its sync off for each micro-batch)"
         + ("; ZeRO-3 gathers every micro-batch" if plan.zero_stage == 3 else ", gathers once, its hooks run "
            "every micro-batch")) if saturated and plan.pp > 1 and plan.dp * plan.cp > 1 else "",
        _runtime_fsdp_note(plan, dp_schedule) if options.runtime_fsdp and not saturated
        and plan.shard_degree > 1 else "",
        "gradients held, accumulated and reduced in fp32 (4 bytes each)"
        if options.fp32_gradients and plan.precision != "fp32" else "",
        "loss: fused cross-entropy kernel" if options.fused_cross_entropy
        else "loss: plain PyTorch cross-entropy on fp32 logits",
        (f"partial recompute: the first {plan.recompute_layers} layers of each pipeline chunk recomputed whole, "
         "the others keep their activations") if plan.recompute == "full" and plan.recompute_layers else "",
        (f"activation offload: up to {plan.activation_offload} layers of each chunk (never its last) keep their "
         f"activations in host memory, copied over {acc.host_link_gbs:g} GB/s each way ({acc.host_link_source}) "
         "under the neighbouring layer's compute") if plan.activation_offload else "",
        f"fp8 recipe: {options.fp8_recipe} ({fp8_recipe(options.fp8_recipe).description})"
        if plan.precision == "fp8" else "",
    ]
    experts: dict[str, Any] = {}
    if model.num_experts:
        imbalance, why = moe.imbalance(model, options)
        overlap = options.moe_a2a_overlap
        layout = moe.routing_layout(plan.tp, plan.etp, plan.sequence_parallel, options.moe_expert_layout)
        experts = {"placement": moe.expert_placement(model, node, plan, layout),
                   "layout": options.moe_expert_layout, "routed_token_share": layout.token_share,
                   "all_to_all_s": time.ep_comm, "all_to_all_share": time.ep_comm / time.step,
                   "etp_comm_s": time.etp_comm, "imbalance": imbalance, "imbalance_source": why,
                   "all_to_all_overlap": overlap, "dispatcher": options.moe_dispatcher}
        assumptions += [
            moe.placement_line(experts["placement"]),
            f"MoE load imbalance: the busiest expert gets {imbalance:g} × the mean tokens ({why}; "
            f"predict/data/moe.toml); the slowest rank holds it, its other experts at the mean",
            f"token dispatcher: {options.moe_dispatcher} ({moe.DISPATCHER_NOTES[options.moe_dispatcher]})",
            f"expert all-to-all: {100 * overlap:g}% hidden under compute"
            + " (the software stack's moe_a2a_overlap)"
            + f"; {100 * time.ep_comm / time.step:.1f}% of the step exposed",
            "expert GEMMs at the calibrated efficiency of each expert's own shape (rows = its tokens), grouped GEMM "
            + moe.grouped_gemm_rate(options.grouped_gemm, acc.arch, "fp8" if plan.precision == "fp8" else "bf16")[1],
            "token permutation: each routed copy permuted "
            + ("twice" if moe.permute_passes(plan.ep, options.moe_dispatcher) == 2 else "once")
            + " on each side of the experts (predict/moe.py permute_passes)"]
    return Estimate(model=model.name, cluster=cluster.name, plan=plan, seq_len=s, memory=worst_memory,
                    memory_by_stage=memory_by_stage, time=time, step_time_s=time.step,
                    tokens_per_s=tokens_per_step / time.step, mfu=model_flops / (time.step * peak),
                    hfu=hardware_flops / (time.step * peak), model_flops_per_step=model_flops,
                    hardware_flops_per_step=hardware_flops, hbm_bytes=acc.hbm_bytes,
                    fits=worst_memory.total <= acc.hbm_bytes, assumptions=[a for a in assumptions if a],
                    experts=experts)
