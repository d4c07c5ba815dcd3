"""Apply a ParallelPlan to the meta-device model: a fixed chain of small functions.

Order (the one PyTorch documents, and torchtitan uses):
  1. pipeline split   - cut the layer stack into pp × vpp chunks (the plan's `pipeline_layout`, or the even split);
                        this rank keeps its chunk(s)
  1b. context parallel - (cp > 1) the chunk's attention gathers keys/values over the cp group and masks by global
                        position; positions are the global ones of this rank's tokens (runtime/context_parallel.py)
  1c. expert parallel  - (ep > 1) routed experts become DTensors split on dim 0 over the ep ranks, and each MoE block
                        dispatches its tokens to them with all_to_all (runtime/moe.py); with etp > 1 also split in
                        width over etp of the tp ranks; before FSDP, which then shards the local experts over the remaining
                        data-parallel ranks (runtime/mesh.py; ep groups may also span tp ranks: parallel folding)
  1d. split sequences - (MoE with cp > 1, sp with etp = 1, or ep folded over tp ranks) each rank routes only its
                        shard of every sequence: the MoE blocks learn which ranks hold the other shards (for the
                        sequence-wise aux loss) and, when the tp ranks route different shards, sum the router's
                        and replicated experts' gradients over tp (runtime/moe.py)
  2. tensor parallel  - DTensor column/row split (+ sequence parallel, + loss parallel on the LM head) on each chunk;
                        must come before FSDP so that FSDP shards the already TP-sharded DTensors (2-D)
  3. activation ckpt  - wraps whole blocks (full; the first `recompute_layers` of each chunk when set) or the
                        attention core (selective); wraps TP'd modules
  3b. activation offload - (activation_offload > 0) saved-tensor hooks around the blocks that keep their
                        activations, after the recomputed ones (runtime/offload.py); module hooks, so the wrappers
                        and FSDP's hooks added later leave them in place
  4. torch.compile    - per block (or the whole single-device model), after AC so the wrapper is traced
  5. FSDP2            - outermost, so its all-gather/reduce-scatter hooks run around everything else; over the
                        dp × cp ranks (runtime/mesh.py), so gradients are reduced over cp as well as dp; routed
                        experts get their own FSDP unit over the expert data-parallel ranks
Then the chunks are materialised (to_empty + deterministic init) and, with pp > 1, wrapped in PipelineStages and a
schedule. Pipelining is an alpha API in torch 2.13: it is touched only here (`build_schedule`,
`observe_gradient_reductions`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bastion.errors import PlanError
from bastion.runtime.context_parallel import ContextParallel
from bastion.runtime.float8 import apply_float8, check_fp8_runnable
from bastion.runtime.mesh import RuntimeMesh
from bastion.runtime.model import Attention, LatentAttention, Transformer, build_model, init_weights
from bastion.runtime.moe import ExpertParallelGroup, GroupedExperts, MoE, SequenceSplit, routes_sequence_shard
from bastion.runtime.offload import ActivationOffload, apply_activation_offload
from bastion.runtime.preflight import check_runtime_executes
from bastion.specs.model import ModelSpec
from bastion.specs.plan import ParallelPlan, chunk_layer_counts
from bastion.specs.schedules import PipelineSchedule, chunks_of_stage, get_schedule


@dataclass
class ParallelModel:
    """This rank's share of the model and how to run it."""

    #: model chunks held by this rank, in stage order of `stage_ids`
    parts: list[nn.Module]
    #: global pipeline stage index of each part
    stage_ids: list[int]
    num_stages: int
    #: torch.distributed.pipelining schedule when pp > 1, else None
    schedule: Any | None = None
    #: the schedule's PipelineStages, one per part (pp > 1; empty otherwise)
    stages: list[Any] = field(default_factory=list)
    #: wrap forward in torch.autocast(bf16): bf16 compute without FSDP's mixed-precision policy
    autocast_dtype: torch.dtype | None = None
    #: extra per-run notes (e.g. "bf16 requested, fp32 on CPU")
    notes: list[str] = field(default_factory=list)
    #: the activation-offload hooks of this rank's blocks and the bytes they moved (None: the plan offloads none)
    offload: ActivationOffload | None = None

    @property
    def has_first_stage(self) -> bool:
        return 0 in self.stage_ids

    @property
    def has_last_stage(self) -> bool:
        return self.num_stages - 1 in self.stage_ids

    def parameters(self) -> list[nn.Parameter]:
        return [p for part in self.parts for p in part.parameters()]

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [item for part in self.parts for item in part.named_parameters()]


def cross_entropy_loss(logits_BSV: torch.Tensor, targets_BS: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy in fp32 (works on DTensor logits under loss_parallel)."""
    return F.cross_entropy(logits_BSV.flatten(0, 1).float(), targets_BS.flatten(0, 1))


# ---- 1. pipeline split ---------------------------------------------------------------------------------
def stage_ids_for_rank(plan: ParallelPlan, pp_rank: int) -> list[int]:
    """Global stage indices a pipeline rank holds: one, `vpp` interleaved (r, r+pp, ...), or a V (r, 2pp-1-r),
    as the schedule's layout says (specs/schedules.py)."""
    if plan.pp == 1:
        return [0]
    return chunks_of_stage(plan.pp_schedule, plan.pp, plan.vpp, pp_rank)


def split_stage(model: Transformer, stage_id: int, num_stages: int,
                layer_counts: tuple[int, ...] | None = None) -> Transformer:
    """A copy of the (meta) model that keeps only the layers, embedding and head of one stage. `layer_counts`:
    the layers of every chunk (the plan's `chunk_layers`: an explicit, possibly uneven `pipeline_layout`);
    None: the even split, or the first and last stages one layer short when the embedding and the head take a
    layer's slot (specs.plan.chunk_layer_counts)."""
    counts = layer_counts or chunk_layer_counts(model.spec.num_layers, num_stages)
    if counts is None or len(counts) != num_stages or sum(counts) != model.spec.num_layers:
        raise ValueError(f"{model.spec.num_layers} layers cannot be split into {num_stages} stages as {counts}")
    start = sum(counts[:stage_id])
    keep = {str(i) for i in range(start, start + counts[stage_id])}
    stage = copy.deepcopy(model)
    for name in list(stage.layers.keys()):
        if name not in keep:
            del stage.layers[name]
    if stage_id != 0:
        stage.tok_embeddings = None
        stage.pos_embeddings = None
    if stage_id != num_stages - 1:
        stage.norm = None
        stage.output = None
    return stage


# ---- 1b. context parallel ----------------------------------------------------------------------------------
def apply_context_parallel(module: Transformer, rmesh: RuntimeMesh) -> None:
    """Attach this rank's cp view to the chunk and its attention modules (before any wrapper hides them)."""
    context = ContextParallel(group=rmesh.cp_group, size=rmesh.plan.cp, rank=rmesh.cp_rank)
    module.cp = context
    for sub in module.modules():
        if isinstance(sub, Attention):
            sub.cp = context


# ---- 1c. expert parallel -----------------------------------------------------------------------------------
def apply_expert_parallel(module: Transformer, rmesh: RuntimeMesh) -> None:
    """Split every routed-expert tensor on dim 0 over the ep ranks and give each MoE block its ep group; with
    etp > 1 also each expert's inner width over the etp ranks (w1/w3 on dim 1, w2 on dim 2: colwise, rowwise),
    one 2-D (ep, etp) DTensor, which FSDP2 then shards over the expert data-parallel ranks (EP + TP). The etp
    ranks hold different rows when the tp ranks route their own sequence shards (folded ep, runtime/moe.py)."""
    from torch.distributed.tensor import Shard, distribute_tensor

    plan = rmesh.plan
    group = None
    if plan.ep > 1:
        ep_mesh = rmesh.ep_mesh
        group = ExpertParallelGroup(group=ep_mesh.get_group(), size=ep_mesh.size(), rank=rmesh.ep_rank)
    mesh = rmesh.expert_shard_mesh
    for sub in module.modules():
        if isinstance(sub, MoE):
            sub.ep = group
            sub.experts.etp_mesh = rmesh.etp_mesh
            sub.experts.etp_gathers_rows = plan.etp > 1 and routes_sequence_shard(plan)
            for name, param in list(sub.experts.named_parameters(recurse=False)):
                width_dim = 2 if name == "w2" else 1
                placements = ([Shard(0)] if plan.ep > 1 else []) + ([Shard(width_dim)] if plan.etp > 1 else [])
                sub.experts.register_parameter(name, nn.Parameter(distribute_tensor(param, mesh, placements)))


# ---- 1d. split sequences (MoE) ------------------------------------------------------------------------------
def apply_moe_sequence_split(module: Transformer, rmesh: RuntimeMesh) -> None:
    """Tell every MoE block over which ranks its sequences are split: the cp group, and the tp group when each tp
    rank routes its own sequence-parallel shard (whose router and routed experts then sum gradients over tp)."""
    plan = rmesh.plan
    groups, averaged = ([rmesh.cp_group], plan.cp) if plan.cp > 1 else ([], 1)
    tp_shards = routes_sequence_shard(plan)
    if tp_shards:
        groups.append(rmesh.tp_mesh.get_group())
    split = SequenceSplit(groups=groups, shards=averaged * (plan.tp if tp_shards else 1), averaged=averaged)
    for sub in module.modules():
        if isinstance(sub, MoE):
            sub.sequence_split = split
            if tp_shards:
                sub.router.grad_sum_mesh = rmesh.tp_mesh
                # experts replicated over tp sum there too; folded over the tp ranks they are distinct experts,
                # whose gradients the combine all_to_all already brings in from every rank that routed to them
                sub.experts.grad_sum_mesh = None if plan.folds_experts else rmesh.tp_mesh


# ---- 2. tensor parallel (+ sequence parallel, + loss parallel) -------------------------------------------
def _head_split_projections(block: nn.Module) -> tuple[str, ...]:
    """The attention projections whose outputs are per-head (colwise under tp): q, k, v; or MLA's query (up)
    projection and per-head key/value up projection (its down projections and norms stay replicated)."""
    if isinstance(block.attention, LatentAttention):
        return ("wq_b" if block.attention.q_latent else "wq", "wkv_b")
    return ("wq", "wk", "wv")


def _moe_tensor_parallel_plan(block: nn.Module, sequence_parallel: bool, routes_shard: bool) -> dict[str, Any]:
    """An MoE block's TP plan: router and routed experts replicated over tp (etp = 1: each tp rank routes the
    tokens it holds and runs its ep group's experts on them) or split in width by apply_expert_parallel (etp > 1);
    the shared experts split like a dense MLP. Under sp: with etp = 1 each rank routes its own sequence shard and
    only the shared experts gather the sequence (as a dense MLP does); with etp > 1 (not folded) the block gathers
    the whole sequence (every etp rank must hold the same rows) and hands back this rank's shard of the output
    (Megatron's all-gather before and reduce-scatter after the experts, here an all-reduce and a slice). Folded
    over the tp ranks (`routes_shard`, any etp) each rank routes its own sequence shard as with etp = 1 (the etp
    ranks gather their rows inside the experts, runtime/moe.py); without sp the block takes this rank's slice of
    the replicated activation, runs as under sp, and gathers its output back (a slice and an all-gather; backward
    an all-gather and a slice)."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        PrepareModuleInputOutput,
        RowwiseParallel,
    )

    shared_out = Shard(1) if routes_shard else Replicate()  # the shared experts' output, added to the routed one
    plan: dict[str, Any] = {}
    if routes_shard:
        if sequence_parallel:
            plan["moe"] = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Shard(1),),
                                             use_local_output=True)
        else:
            plan["moe"] = PrepareModuleInputOutput(
                input_layouts=(Replicate(),), desired_input_layouts=(Shard(1),), use_local_input=True,
                output_layouts=(Shard(1),), desired_output_layouts=(Replicate(),), use_local_output=True)
        if block.moe.shared_experts is not None:
            plan["moe.shared_experts"] = PrepareModuleInput(input_layouts=(Shard(1),),
                                                            desired_input_layouts=(Replicate(),))
    elif sequence_parallel:
        plan["moe"] = PrepareModuleInputOutput(
            input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),), use_local_input=True,
            output_layouts=(Replicate(),), desired_output_layouts=(Shard(1),), use_local_output=True)
    if block.moe.shared_experts is not None:
        plan.update({"moe.shared_experts.w1": ColwiseParallel(),
                     "moe.shared_experts.w2": RowwiseParallel(output_layouts=shared_out)})
        if block.moe.shared_experts.w3 is not None:
            plan["moe.shared_experts.w3"] = ColwiseParallel()
    return plan


def apply_tensor_parallel(module: Transformer, rmesh: RuntimeMesh, sequence_parallel: bool) -> None:
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    tp_mesh = rmesh.tp_mesh
    # between blocks the residual stream is sequence-sharded (SP) or replicated
    stream = Shard(1) if sequence_parallel else Replicate()
    top: dict[str, Any] = {}
    if module.tok_embeddings is not None:
        top["tok_embeddings"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=stream)
    if module.norm is not None and sequence_parallel:
        top["norm"] = SequenceParallel()
    if module.output is not None:
        # loss parallel: logits stay vocab-sharded (Shard(-1)); cross-entropy runs under loss_parallel()
        top["output"] = ColwiseParallel(input_layouts=stream, output_layouts=Shard(-1), use_local_output=False)
    if top:
        parallelize_module(module, tp_mesh, top)
    for block in module.layers.values():
        plan: dict[str, Any] = {f"attention.{name}": ColwiseParallel() for name in _head_split_projections(block)}
        plan["attention.wo"] = RowwiseParallel(output_layouts=stream)
        block.attention.tp_mesh = tp_mesh  # MLA's shared rotary key, Qwen3's q/k norm weights: gradients summed
        if sequence_parallel:
            plan.update({
                "attention_norm": SequenceParallel(),
                # MLA's down projections are plain replicated Linears: they take the gathered sequence as a local
                # tensor, as without sp (their consumers' colwise inputs sum its gradient over tp)
                "attention": PrepareModuleInput(input_layouts=(Shard(1), None),
                                                desired_input_layouts=(Replicate(), None),
                                                use_local_output=isinstance(block.attention, LatentAttention)),
                "ffn_norm": SequenceParallel(),
            })
        if block.moe is not None:
            plan.update(_moe_tensor_parallel_plan(block, sequence_parallel, routes_sequence_shard(rmesh.plan)))
        else:
            plan.update({"feed_forward.w1": ColwiseParallel(), "feed_forward.w2": RowwiseParallel(output_layouts=stream)})
            if block.feed_forward.w3 is not None:
                plan["feed_forward.w3"] = ColwiseParallel()
            if sequence_parallel:
                plan["feed_forward"] = PrepareModuleInput(input_layouts=(Shard(1),),
                                                          desired_input_layouts=(Replicate(),))
        parallelize_module(block, tp_mesh, plan)


# ---- 3. activation checkpointing -------------------------------------------------------------------------
def apply_activation_checkpointing(module: Transformer, mode: str, full_layers: int = 0) -> None:
    """`selective`: the attention core of every block; `full`: whole blocks, the first `full_layers` of this chunk
    (Megatron's --recompute-method block --recompute-num-layers), every block when 0."""
    if mode == "selective":
        for block in module.layers.values():
            block.attention.recompute_core = True
    elif mode == "full":
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        names = list(module.layers.keys())  # this chunk's layers in model order
        for name in names[:full_layers] if full_layers else names:
            module.layers[name] = checkpoint_wrapper(module.layers[name], preserve_rng_state=False)


# ---- 4. compile ------------------------------------------------------------------------------------------
def apply_compile(module: Transformer, whole_model: bool) -> None:
    # nn.Module.compile() compiles in place, so parameter names (and the checkpoint keys) do not change
    if whole_model:
        module.compile()
        return
    for block in module.layers.values():
        block.compile()


# ---- 5. FSDP2 --------------------------------------------------------------------------------------------
def apply_fsdp(module: Transformer, rmesh: RuntimeMesh, zero_stage: int, param_dtype: torch.dtype | None) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    reshard = zero_stage == 3
    for block in module.layers.values():
        if rmesh.expert_mesh is not None:  # first, so the block's unit leaves the expert tensors to it
            for sub in block.modules():
                if isinstance(sub, GroupedExperts):
                    fully_shard(sub, mesh=rmesh.expert_dp_mesh, reshard_after_forward=reshard, mp_policy=mp_policy)
        fully_shard(block, mesh=rmesh.dp_mesh, reshard_after_forward=reshard, mp_policy=mp_policy)
    fully_shard(module, mesh=rmesh.dp_mesh, reshard_after_forward=reshard, mp_policy=mp_policy)


def defers_gradient_reduction(plan: ParallelPlan) -> bool:
    """Whether the training loop keeps a step's gradients whole and unreduced on every rank until its last
    micro-batch, which reduces them once (`set_gradient_reduction`), as DDP's no_sync, Megatron and DeepSpeed's
    ZeRO-1 do: ZeRO 0, and ZeRO 1, which shards the optimizer state alone (the ZeRO paper's P_os; runtime/mesh.py).
    ZeRO 2 reduce-scatters after every micro-batch's backward, which is what keeps its gradients sharded; ZeRO 3
    too. A pipeline schedule defers the reduction itself, for every stage (PipelineStage's
    backward_maybe_with_nosync); predict/comm.py's fsdp_schedule models both."""
    return plan.dp * plan.cp > 1 and plan.zero_stage <= 1


def set_gradient_reduction(module: nn.Module, reduce: bool) -> None:
    """Whether the next backward reduces `module`'s gradients over the data-parallel ranks (FSDP2's gradient sync)
    and reshards its parameters after: off, gradients accumulate unsharded and the parameters stay gathered for
    the next micro-batch (as a pipeline stage does between micro-batches). FSDP2 applies both to every unit
    under `module` — the blocks, the routed experts' own units — and the reduction, when it comes, covers the
    gradients accumulated so far."""
    module.set_requires_gradient_sync(reduce)
    module.set_reshard_after_backward(reduce)


# ---- pipeline schedule ------------------------------------------------------------------------------------
def schedule_class(entry: PipelineSchedule, device: torch.device) -> type:
    """The class that runs a registered schedule on this torch and device — a torch.distributed.pipelining name,
    or `package.module.Class` for one of your own — or a PlanError saying why it cannot run here."""
    import importlib

    from torch.distributed import pipelining

    refusal = entry.refusal(torch.__version__, device.type)
    if refusal is not None:
        raise refusal
    module_name, _, class_name = entry.torch_class.rpartition(".")
    found = getattr(importlib.import_module(module_name) if module_name else pipelining, class_name, None)
    if found is None:
        raise PlanError(f"pp_schedule '{entry.name}' needs {entry.torch_class}, which torch {torch.__version__} "
                        f"does not have.", fix="use 1f1b or interleaved-1f1b.", reason="schedule unavailable")
    return found


def build_schedule(parts: list[nn.Module], stage_ids: list[int], num_stages: int, plan: ParallelPlan,
                   rmesh: RuntimeMesh, loss_fn: Callable) -> tuple[Any, list[Any]]:
    """The schedule that runs `parts` and its PipelineStages, one per part."""
    from torch.distributed import pipelining

    found = schedule_class(get_schedule(plan.pp_schedule), rmesh.device)
    # group= by keyword: torch 2.13 added positional parameters before it
    stages = [pipelining.PipelineStage(part, stage_index=sid, num_stages=num_stages, device=rmesh.device,
                                       group=rmesh.pp_group) for part, sid in zip(parts, stage_ids, strict=True)]
    n_micro = plan.grad_accumulation
    if issubclass(found, pipelining.schedules.PipelineScheduleSingle):
        return found(stages[0], n_microbatches=n_micro, loss_fn=loss_fn), stages
    return found(stages, n_microbatches=n_micro, loss_fn=loss_fn), stages


@contextlib.contextmanager
def observe_gradient_reductions(model: ParallelModel, observe: Callable[[nn.Module], None]) -> Iterator[None]:
    """Within it, `observe(part)` runs for each pipeline stage of `model` right before the schedule reduces that
    stage's gradients, once per step after the stage's last backward: PipelineStage.perform_reduce_grad (torch
    2.13), which turns FSDP2's gradient sync and resharding after backward back on and runs its post-backward,
    the schedule having turned both off for every backward before (backward_maybe_with_nosync). There the stage
    holds the most of a step: its gradients accumulated whole and, under every ZeRO stage, its parameters
    gathered. A torch whose stages have no perform_reduce_grad observes nothing."""
    observed = [stage for stage in model.stages if hasattr(stage, "perform_reduce_grad")]
    for stage in observed:
        reduce = stage.perform_reduce_grad

        def observed_reduce(*args: Any, _reduce: Callable = reduce, _part: nn.Module = stage.submod,
                            **kwargs: Any) -> Any:
            observe(_part)
            return _reduce(*args, **kwargs)

        stage.perform_reduce_grad = observed_reduce  # on the instance: the class's method comes back on del
    try:
        yield
    finally:
        for stage in observed:
            del stage.perform_reduce_grad


# ---- the chain --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParallelizeConfig:
    """Options of the parallelism chain that are not part of the plan."""

    #: compile each block (or the whole model on a single device) with torch.compile
    compile: bool = False
    #: seed of the deterministic parameter init
    seed: int = 0
    #: torchao recipe of an fp8 plan (runtime/float8.py)
    fp8_recipe: str = "tensorwise"
    #: tests only: run an fp8 plan with torchao's emulation on CPU instead of refusing it
    fp8_emulate: bool = False


def parallelize(spec: ModelSpec, plan: ParallelPlan, rmesh: RuntimeMesh, config: ParallelizeConfig
                ) -> ParallelModel:
    """Build this rank's model chunks for the plan, initialised bit-identically to the single-device model."""
    check_runtime_executes(spec, plan)
    device = rmesh.device
    on_gpu = device.type == "cuda"
    notes: list[str] = []
    fp8 = plan.precision == "fp8"
    if fp8 and not config.fp8_emulate:
        check_fp8_runnable(device, plan.tp)  # refused rather than trained in another precision
    bf16 = plan.precision in ("bf16", "fp16", "fp8")
    if bf16 and not on_gpu:
        notes.append(f"plan precision {plan.precision}: running fp32 on CPU (bitwise-comparable runs)")
    compute_dtype = torch.bfloat16 if (bf16 and on_gpu) else None
    if plan.precision == "fp16" and on_gpu:
        notes.append("plan precision fp16: running bf16 compute with fp32 master weights")
    if fp8:
        notes.append(f"plan precision fp8: torchao Float8 linear layers ({config.fp8_recipe} scaling"
                     + (", emulated on CPU" if config.fp8_emulate else "") + "), the LM head and experts in bf16")
    use_fsdp = plan.dp * plan.cp > 1  # gradients are reduced over the dp × cp ranks (runtime/mesh.py)
    num_stages = plan.pp * (plan.vpp if plan.pp > 1 else 1)
    stage_ids = stage_ids_for_rank(plan, rmesh.pp_rank)
    full = build_model(spec)
    offload = ActivationOffload(device) if plan.activation_offload else None
    parts: list[nn.Module] = []
    for sid in stage_ids:
        part = split_stage(full, sid, num_stages, plan.chunk_layers(spec)) if num_stages > 1 else full
        if plan.cp > 1:
            apply_context_parallel(part, rmesh)
        if plan.ep > 1 or plan.etp > 1:
            apply_expert_parallel(part, rmesh)
        if spec.num_experts and (plan.cp > 1 or routes_sequence_shard(plan)):
            apply_moe_sequence_split(part, rmesh)
        if fp8:
            apply_float8(part, config.fp8_recipe, emulate=config.fp8_emulate)
        if plan.tp > 1:
            apply_tensor_parallel(part, rmesh, plan.sequence_parallel)
        apply_activation_checkpointing(part, plan.recompute, plan.recompute_layers)
        if offload is not None:
            apply_activation_offload(part, plan, offload)
        if config.compile:
            # per block under offload: a whole-model graph traces the blocks' offload hooks away (measured: nothing
            # moved); a compiled block still runs its own hooks around its graph
            apply_compile(part, whole_model=plan.num_gpus == 1 and offload is None)
        if use_fsdp:
            apply_fsdp(part, rmesh, plan.zero_stage, compute_dtype)
        part.to_empty(device=device)
        init_weights(part, spec, config.seed)
        part.train()
        parts.append(part)
    model = ParallelModel(parts=parts, stage_ids=stage_ids, num_stages=num_stages, notes=notes,
                          autocast_dtype=compute_dtype if not use_fsdp else None, offload=offload)
    # the aux loss's gradient per micro-batch: the loop divides each micro-batch's loss by their number; a
    # pipeline schedule divides the gradients by it at the end instead (scale_grads)
    for part in parts:
        for sub in part.modules():
            if isinstance(sub, MoE):
                sub.aux_grad_scale = 1.0 if plan.pp > 1 else 1.0 / plan.grad_accumulation
    if plan.pp > 1:
        model.schedule, model.stages = build_schedule(parts, stage_ids, num_stages, plan, rmesh, cross_entropy_loss)
    return model
