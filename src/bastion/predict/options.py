"""Knobs of the performance model that are properties of the training software, not of the plan."""

from __future__ import annotations

from dataclasses import dataclass

from bastion.predict.kernels import DEFAULT_FP8_RECIPE, DENSE_RATE_GROUPED_GEMM
from bastion.specs._hashing import cached_hash

SELECTIVE_RECOMPUTE = ("attention-core", "every-second-matmul")
#: how an MoE layer's tokens reach their experts' ranks (PredictOptions.moe_dispatcher, predict/moe.py)
MOE_DISPATCHERS = ("alltoall", "allgather", "deepep", "hybridep")


@dataclass(frozen=True)
class PredictOptions:
    """How the training code behaves where the ParallelPlan does not say."""

    __hash__ = cached_hash

    #: attention runs as a fused flash kernel (no s×s score matrix is stored; causal blocks are skipped).
    #: False models the unfused softmax attention of Megatron-LM before 2022.
    flash_attention: bool = True
    #: which flash kernel (data/attention_kernels.toml): `sdpa` reaches the calibrated rate (the card's newest
    #: instructions); `flash-attn-2` stays at ~35% of the peak on Hopper and later; `flash-attn-triton` (2022-23)
    #: is slower still
    attention_kernel: str = "sdpa"
    #: the flash kernel an fp8 plan's attention runs where the stack's fp8 comes with a library that brings its own
    #: ("" = as any other plan): NeMo Megatron 2023's fp8 needs Transformer Engine, whose DotProductAttention is
    #: a flash kernel while the same release's bf16 configs run Megatron's unfused attention
    fp8_attention_kernel: str = ""
    #: the flash kernel never exceeds this fraction of the card's bf16 peak (None: the calibrated rate of torch
    #: 2.11's SDPA, scaled by matmul_efficiency). For kernels that do not use the card's newest tensor-core
    #: instructions: FlashAttention-2 on Hopper reaches about 0.35 (Shah et al. 2024, FlashAttention-3, abstract),
    #: llm-foundry's 2023 kernels (Triton flash attention, later flash-attn 2) imply about 0.33 on A100 and 0.17
    #: on H100 (tests/validation).
    attention_efficiency_cap: float | None = None
    #: what the plan's `selective` recompute re-runs: `attention-core` (Megatron-LM, Korthikanti et al. 2022, and
    #: bastion's runtime: the attention core's scores/softmax) or `every-second-matmul` (torchtitan's op-level
    #: selective checkpointing: it saves the outputs of the 1st, 3rd, ... matmul of a block and of the attention
    #: kernel, and recomputes the other matmuls — wk, wo, w3 — and every elementwise op)
    selective_recompute: str = "attention-core"
    #: the model trains with dropout (GPT-3/Megatron style: masks on attention probabilities and after each block)
    dropout: bool = False
    #: RMSNorm is one fused kernel that keeps only its input and the fp32 1/rms per token for backward (torch's
    #: CUDA `_fused_rms_norm`, Apex, Megatron). False: PyTorch's composite path (on CPU in torch 2.13), which
    #: keeps an fp32 copy of the input (the input itself in fp32), the 1/rms and the fp32 normalised x·(1/rms).
    #: None: fused on GPUs, composite on CPUs. LayerNorm is always one kernel (input, mean, 1/std).
    fused_rmsnorm: bool | None = None
    #: the loss is a fused (or chunked) cross-entropy kernel that reads the logits once and writes their gradient
    #: in place (Megatron's vocab-parallel loss, flash-attn's xentropy, Liger); False = plain PyTorch: the logits
    #: upcast to fp32, log-softmax saved, a separate gradient tensor (what bastion's own runtime does)
    fused_cross_entropy: bool = False
    #: what ZeRO-3 gathers at once: `layer` (FSDP2 wrapping each transformer block: torchtitan, bastion's runtime)
    #: or `module` (each weight matrix as it is about to run: DeepSpeed ZeRO-3's sub-module fetching) — more,
    #: smaller collectives, and only one matrix (plus the prefetched one) unsharded at a time
    fsdp_unit: str = "layer"
    #: how context-parallel attention gets the other ranks' keys and values: `all-gather` (bastion's runtime and
    #: Llama 3: gather K,V of the whole sequence before attention, not overlapped; the backward all-reduces their
    #: gradients; each rank keeps the gathered K,V for backward) or `ring` (ring attention as in Megatron/Transformer
    #: Engine: K,V chunks pass around the ring while the chunk in hand is computed; only local K,V are kept)
    context_parallel: str = "all-gather"
    #: ZeRO-1/2: the parameters updated on each shard are all-gathered during the next forward, layer by layer,
    #: under its compute (FSDP2 with reshard_after_forward=False — bastion's runtime —, Megatron's distributed
    #: optimizer with --overlap-param-gather, NeMo's default). False: gathered in one exposed block after the
    #: optimizer step (DeepSpeed ZeRO-1/2)
    overlap_param_gather: bool = True
    #: what an fp8 matmul keeps of its input for the weight gradient: 1 byte per element (Transformer Engine
    #: saves the fp8-cast input, as NeMo / Megatron-LM / llm-foundry run fp8) or the bf16 input (torchao's
    #: float8 training, which casts again in backward)
    fp8_saved_inputs: bool = False
    #: how fp8 matmuls scale their operands (data/fp8_recipes.toml): `delayed` (Transformer Engine's default,
    #: amax history), `current` / `tensorwise` (per-tensor scale of the current tensor: an amax pass first),
    #: `rowwise` (a scale per row, quantised once per axis), `blockwise` (DeepSeek-V3 1x128 / 128x128 tiles),
    #: `mxfp8` (Blackwell's 32-element blocks) — their quantisation traffic and GEMM kernel ceilings differ
    fp8_recipe: str = DEFAULT_FP8_RECIPE
    #: torch.compile of each transformer block (`bastion train --compile`, torchtitan's compile): the block's
    #: elementwise ops fuse (its memory-bound time x data/membound.toml's compiled_layer_membound_fraction, from
    #: the H200 layer runs) and SwiGLU keeps no silu output (39 -> 32 bytes per token x hidden measured there)
    compiled: bool = False
    #: SwiGLU as one fused kernel that recomputes silu in backward and keeps only its two inputs (Transformer
    #: Engine, Megatron's bias_swiglu, Liger); False: PyTorch eager keeps silu's output too
    fused_swiglu: bool = False
    #: under sequence parallelism, what the column-parallel matmuls (QKV, the MLP's first) keep of their input
    #: for the weight gradient: False = the rank's sequence shard, all-gathered again in backward (Megatron-LM's
    #: LinearWithGradAccumulationAndAsyncCommunication, Korthikanti et al. 2022 Sec. 4.2.2); True = the whole
    #: all-gathered input (PyTorch's DTensor SequenceParallel + ColwiseParallel: the gather is an op before the
    #: matmul, whose saved input is its output; measured with saved-tensor hooks in bastion's runtime)
    sp_gathered_inputs: bool = False
    #: fraction of the expert-parallel all-to-all (dispatch and combine) the software hides under compute: 0 =
    #: none (bastion's runtime and Megatron-Core's token dispatchers run it between the layer's other
    #: kernels); Megatron-Core >= 0.14 (2025-09) hides it under another micro-batch's compute with the opt-in
    #: --overlap-moe-expert-parallel-comm (Megatron-Core MoE README, "What's New", v0.14); DeepSeek's own DualPipe
    #: hides all of it (DeepSeek-V3 report, Sec. 3.2.1: the all-to-all of one micro-batch runs under the computation
    #: of another) — the `deepseek-dualpipe` stack. A schedule alone does not: torch's ScheduleDualPipeV runs a
    #: paired forward and backward one after the other unless the model supplies the overlapping. A user's
    #: `moe_a2a_overlap` fact (predict/frameworks.py) sets 1 (on) or 0 (off)
    moe_a2a_overlap: float = 0.0
    #: where the experts sit and which tokens a tp rank routes (predict/moe.py): "megatron" (Megatron-Core's parallel
    #: folding: MoE with tp runs sequence parallel, each tp rank routes its 1/tp; ep members etp ranks apart) or
    #: "bastion" (bastion's runtime: ep carved from dp × cp, members tp ranks apart; a tp rank routes its 1/tp only
    #: under sp with etp = 1, otherwise every token of the micro-batch)
    moe_expert_layout: str = "megatron"
    #: the token dispatcher (predict/moe.py): `alltoall` (one all-to-all per dispatch and combine, every routed
    #: copy sent to its expert's rank: NCCL's all_to_all_single as torchtitan's default expert parallelism and
    #: bastion's runtime run it, Megatron-Core's `alltoall` dispatcher), `allgather` (Megatron-Core's `allgather`
    #: dispatcher, its argument default: every rank gathers the whole ep group's tokens and reduce-scatters the
    #: outputs), `deepep` / `hybridep` (DeepEP's normal kernels, NVIDIA's Hybrid-EP: a token crosses the
    #: scale-out network once per remote scale-up domain holding one of its experts and is forwarded over NVLink
    #: there). Framework releases imply one (data/frameworks.toml); a user's explicit fact overrides it
    moe_dispatcher: str = "alltoall"
    #: the implementation of the experts' grouped GEMMs (data/grouped_gemm.toml, predict/moe.py grouped_gemm_rate):
    #: `cublas_per_expert` (Transformer Engine's GroupedLinear: one cuBLAS GEMM per expert, at the dense rate of its
    #: shape) or `torch_grouped_mm` (PyTorch's CUTLASS grouped kernel: torchtitan, bastion's runtime), at the
    #: fraction of the dense rate its published benchmarks reach on the card's tensor-core generation
    grouped_gemm: str = DENSE_RATE_GROUPED_GEMM
    #: the busiest expert's routed tokens / the mean in one micro-batch (1 = perfectly balanced); None: from the
    #: model's balancing mechanism (predict/data/moe.toml), as every estimate states
    moe_imbalance: float | None = None
    #: data parallelism runs as bastion's runtime runs FSDP2: how often each unit is gathered and its gradients
    #: reduced in a step follows comm.py's `fsdp_schedule` (ZeRO-2 reduce-scatters every micro-batch without
    #: a pipeline; a pipeline schedule defers every stage's reduction to the step's end). False: ZeRO 0-2 reduce
    #: gradients once per step after the last micro-batch (DDP's no_sync, Megatron's distributed optimizer,
    #: DeepSpeed) and gather ZeRO-1/2 parameters once; ZeRO-3 gathers and reduce-scatters every micro-batch
    runtime_fsdp: bool = False
    #: under mixed precision gradients are held, accumulated and reduced in fp32 (4 bytes each, not 2): bastion's
    #: runtime keeps fp32 parameters (autocast on one device; FSDP2's fp32 shards with
    #: MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32), runtime/parallelize.py apply_fsdp), so a
    #: gradient is fp32 once reduced or accumulated over micro-batches
    fp32_gradients: bool = False
    #: bytes a ZeRO-0/1/2 data-parallel gradient bucket holds (PyTorch DDP's default bucket_cap_mb = 25)
    dp_bucket_bytes: float = 25e6
    #: device memory the CUDA context, cuBLAS/NCCL workspaces take before the first tensor, GiB (GPUs only)
    runtime_reserve_gib: float = 1.0
    #: fraction of the transient memory (activations, logits, buffers) the caching allocator loses to fragmentation
    fragmentation: float = 0.10

    def __post_init__(self) -> None:
        from bastion.predict.kernels import attention_kernel

        attention_kernel(self.attention_kernel)  # a ConfigError with the known names if it is not one
        if self.fp8_attention_kernel:
            attention_kernel(self.fp8_attention_kernel)
        from bastion.predict.kernels import fp8_recipe, grouped_gemm_implementation

        fp8_recipe(self.fp8_recipe)  # likewise
        if not 0.0 <= self.moe_a2a_overlap <= 1.0 or (self.moe_imbalance is not None and self.moe_imbalance < 1.0):
            from bastion.errors import ConfigError

            raise ConfigError(f"moe_a2a_overlap must be in [0, 1] and moe_imbalance >= 1, got "
                              f"{self.moe_a2a_overlap:g} and {self.moe_imbalance}.",
                              fix="give the hidden fraction of the all-to-all, and the busiest expert's tokens / "
                                  "the mean.")
        if self.moe_dispatcher not in MOE_DISPATCHERS:
            from bastion.errors import ConfigError

            raise ConfigError(f"Unknown moe_dispatcher '{self.moe_dispatcher}'.",
                              fix=f"use one of: {', '.join(MOE_DISPATCHERS)}.")
        grouped_gemm_implementation(self.grouped_gemm)  # likewise
        if self.moe_expert_layout not in ("megatron", "bastion"):
            from bastion.errors import ConfigError

            raise ConfigError(f"moe_expert_layout must be 'megatron' or 'bastion', got {self.moe_expert_layout!r}.",
                              fix="use 'megatron' (Megatron-Core) or 'bastion' (bastion's runtime).")
        if self.selective_recompute not in SELECTIVE_RECOMPUTE:
            from bastion.errors import ConfigError

            raise ConfigError(f"Unknown selective_recompute '{self.selective_recompute}'.",
                              fix=f"use one of: {', '.join(SELECTIVE_RECOMPUTE)}.")


#: today's production stack (Megatron-Core / NeMo / Megatron-Bridge with Transformer Engine): flash attention at
#: the calibrated rate, ring context parallelism, a fused cross-entropy, a fused SwiGLU, and fp8 matmuls that keep
#: their fp8-cast inputs for backward. `production` in data/software.toml, which names the other stacks.
PRODUCTION_STACK = PredictOptions(flash_attention=True, fused_cross_entropy=True, fused_swiglu=True,
                                  fp8_saved_inputs=True, context_parallel="ring")
