"""Time of the on-device work: GEMMs at shape-dependent efficiency, attention by sequence length, and the
memory-bound operations from HBM bandwidth.

The curves are the H200 measurements (calibration.py) carried to another accelerator by calibration.device_scale
(its own published rates, else the catalog's `matmul_efficiency` / the H200's 0.787), and by the device's HBM
bandwidth for memory-bound work.
"""

from __future__ import annotations

from functools import lru_cache

from bastion.predict.calibration import (
    H200_HBM_GBS,
    attention_efficiency_measured,
    device_scale,
    gemm_efficiency_measured,
    interpolate_log,
    load_calibration,
    profiled_attention_efficiency,
    profiled_gemm_efficiency,
)
from bastion.predict.kernels import DEFAULT_FP8_RECIPE, DEFAULT_KERNEL, fp8_recipe, kernel_efficiency
from bastion.specs.hardware import Accelerator
from bastion.specs.model import ModelSpec

#: an efficiency is never taken above this fraction of a datasheet peak, however the scaling lands
MAX_EFFICIENCY = 0.95


def compute_dtype_bytes(precision: str) -> int:
    return {"fp32": 4, "fp8": 1}.get(precision, 2)


def is_cpu(acc: Accelerator) -> bool:
    """A host CPU standing in for an accelerator (the CPU test runs)."""
    return acc.arch == "cpu"


def cpu_curve_efficiency(curve: tuple[tuple[float, ...], ...], x: float, column: int, default: float) -> float:
    """A machine profile's measured efficiency at `x` (log-interpolated in column 0, clamped at the ends), or
    `default` when the profile measured none."""
    if not curve:
        return default
    return interpolate_log(x, [row[0] for row in curve], [row[column] for row in curve])


def _matmul_peak_flops(acc: Accelerator, precision: str) -> float:
    return acc.peak_tflops(precision) * 1e12


@lru_cache(maxsize=65536)
def gemm_time(acc: Accelerator, precision: str, m: int, k: int, n: int, recipe: str = DEFAULT_FP8_RECIPE) -> float:
    """Seconds for one (m×k)·(k×n) matrix multiply: the calibrated compute rate, or the time to stream the three
    operands from HBM when the shape is too small to be compute-bound (roofline). An fp8 GEMM runs at most at
    its `recipe`'s kernel ceiling (kernels.Fp8Recipe.gemm_efficiency_cap)."""
    if m <= 0 or k <= 0 or n <= 0:
        return 0.0
    if is_cpu(acc):
        # the GPU curve's small-shape losses come from filling ~100 SMs with tiles; a few CPU cores have none of
        # that, so a CPU runs every shape at its catalog efficiency (bounded by memory traffic below), or at the
        # efficiency a machine profile measured for GEMMs of this size
        eff = cpu_curve_efficiency(acc.gemm_efficiency_curve, 2.0 * m * k * n, 1, acc.matmul_efficiency)
    else:
        curve = "fp8" if precision == "fp8" else "bf16"
        if acc.gemm_shape_efficiency and curve == "bf16":  # a machine profile measured this card's GEMMs
            eff = min(MAX_EFFICIENCY, profiled_gemm_efficiency(acc.gemm_shape_efficiency, m, k, n))
        else:
            eff = min(MAX_EFFICIENCY, gemm_efficiency_measured(curve, m, k, n) * device_scale(acc, curve))
        kernel = fp8_recipe(recipe) if precision == "fp8" else None
        if kernel is not None and kernel.gemm_efficiency_cap is not None and kernel.gemm_cap_arch == acc.arch:
            eff = min(eff, kernel.gemm_efficiency_cap)
    compute = 2.0 * m * k * n / (_matmul_peak_flops(acc, precision) * eff)
    traffic = (m * k + k * n + m * n) * compute_dtype_bytes(precision) / (acc.hbm_bandwidth_gbs * 1e9)
    return max(compute, traffic)


def attention_peak_flops(acc: Accelerator, precision: str) -> float:
    """Attention runs in bf16 under fp8 training (flash kernels), in fp32 under fp32."""
    return acc.peak_tflops("fp32" if precision == "fp32" else "bf16") * 1e12


@lru_cache(maxsize=65536)
def flash_attention_time(acc: Accelerator, precision: str, flops_fwd: float, seq_len: int, head_dim: int,
                         pass_: str, efficiency_cap: float | None = None, kernel: str = DEFAULT_KERNEL) -> float:
    """Seconds of causal flash attention given its forward FLOPs; pass_ `fwd` (forward only) or `fwdbwd`
    (forward + backward = 3.5 × the forward FLOPs, as measured). `kernel` names the flash kernel
    (kernels.py); `efficiency_cap` bounds the fraction of the peak it reaches
    (PredictOptions.attention_efficiency_cap)."""
    if is_cpu(acc):
        # the profile's curve is keyed by seq_len · head_dim (runtime/calibrate.py fit_profile): one model's layouts
        # differ in both, and a per-row work measure keeps tiny's and small's points apart
        eff = cpu_curve_efficiency(acc.attention_efficiency_curve, float(seq_len * head_dim), 1 if pass_ == "fwd" else 2,
                                   acc.matmul_efficiency)
    else:
        eff = _gpu_attention_efficiency(acc, seq_len, head_dim, pass_)
        if kernel != DEFAULT_KERNEL:
            best = _gpu_attention_efficiency(acc, 1 << 30, head_dim, pass_)
            eff = kernel_efficiency(kernel, acc.arch, eff, best, acc.sustained_matmul_efficiency)
    if efficiency_cap is not None:
        eff = min(eff, efficiency_cap)
    flops = flops_fwd * (3.5 if pass_ == "fwdbwd" else 1.0)
    return flops / (attention_peak_flops(acc, precision) * eff)


def _gpu_attention_efficiency(acc: Accelerator, seq_len: int, head_dim: int, pass_: str) -> float:
    """The flash kernel's fraction of the bf16 peak on a GPU: a machine profile's measurement where it has one,
    else the H200 curve at the device's level."""
    if acc.attention_layout_efficiency:
        return min(MAX_EFFICIENCY, profiled_attention_efficiency(acc.attention_layout_efficiency, seq_len, head_dim,
                                                                 pass_))
    return min(MAX_EFFICIENCY, attention_efficiency_measured(seq_len, head_dim, pass_) * device_scale(acc, "attention"))


def fp8_cast_bytes(m: int, k: int, n: int, recipe: str = DEFAULT_FP8_RECIPE) -> float:
    """Effective bytes of quantising one (m×k)·(k×n) GEMM's operands to fp8 in training under `recipe`: the
    input and the weight for the forward, the output gradient for the backward, each in both layouts
    (data/fp8_recipes.toml)."""
    kernel = fp8_recipe(recipe)
    return m * k * kernel.input_bytes + k * n * kernel.weight_bytes + m * n * kernel.grad_bytes


def ring_merge_bytes_per_token(q_width: int, kv_width: int, cp: int) -> tuple[float, float]:
    """Effective bytes per token of ring attention's merges in one layer, forward + backward (Transformer
    Engine's flash-attention output correction): after each of the cp - 1 steps past the first, the forward
    rescales and adds the step's output into the running one (read both, write one: 3 × 2 bytes per element of
    the output) and the backward adds the step's dQ into the running dQ and the step's dK, dV into the
    accumulators that travel on (3 × 2 bytes per element each); at the ~90% of the peak bandwidth of a streaming
    elementwise kernel, as membound.toml's residual_bytes. `q_width`, `kv_width`: this rank's (after tp).
    Returns (forward, backward)."""
    merges = (cp - 1) * 6 / 0.9
    return merges * q_width, merges * (q_width + 2 * kv_width)


def membound_time(acc: Accelerator, effective_bytes: float, op_bytes: float = 0.0) -> float:
    """Seconds for memory-bound work of `effective_bytes` (bytes as if streamed at the full HBM bandwidth), done
    by elementwise ops that each move about `op_bytes` (0: unknown, streamed). On a host CPU whose machine profile
    measured the elementwise_bandwidth_curve, an op that small runs from the caches at that curve's bandwidth;
    a GPU, a profile without the curve or an unknown size stream at hbm_bandwidth_gbs."""
    rate = acc.hbm_bandwidth_gbs * 1e9
    if op_bytes > 0 and is_cpu(acc):
        rate *= cpu_curve_efficiency(acc.elementwise_bandwidth_curve, op_bytes, 1, 1.0)
    return effective_bytes / rate


def elementwise_op_bytes(tokens: int, width: float, precision: str) -> float:
    """Bytes one eager elementwise op over a (tokens × width) activation moves: two operands read, one written
    (what runtime/calibrate.py measure_elementwise_working_sets times)."""
    return 3.0 * tokens * width * (4 if precision == "fp32" else 2)


@lru_cache(maxsize=4096)
def layer_membound_parts(model: ModelSpec, tp: int, sequence_parallel: bool, precision: str,
                         dropout: bool) -> tuple[tuple[float, float], tuple[float, float]]:
    """One layer's memory-bound work, forward + backward, as ((effective bytes per token, width of the
    activation its ops run over) of the hidden-state ops, (the same) of the MLP activation). The two norms, two
    residual adds and dropout work on the full hidden state, split by tp only under sequence parallelism; the
    MLP activation is split by tp."""
    cal = load_calibration().membound
    h, f = model.hidden_size, model.ffn_hidden_size
    norm = interpolate_log(float(h), [float(x) for x in cal["norm_hidden"]], [float(x) for x in cal["norm_bytes"]])
    replicated = (2 * norm + cal["residual_bytes"] + (cal["dropout_bytes"] if dropout else 0.0)) * h
    act = (cal["swiglu_bytes"] if model.ffn_type == "swiglu" else cal["gelu_bytes"]) * f
    dtype = 2.0 if precision == "fp32" else 1.0
    hidden_split = tp if sequence_parallel else 1
    return (replicated / hidden_split * dtype, h / hidden_split), (act / tp * dtype, f / tp)


def layer_membound_bytes_per_token(model: ModelSpec, tp: int, sequence_parallel: bool, precision: str,
                                   dropout: bool) -> float:
    """Effective bytes per token of one layer's memory-bound work, forward + backward (layer_membound_parts)."""
    return sum(per_token for per_token, _ in layer_membound_parts(model, tp, sequence_parallel, precision, dropout))


def cross_entropy_bytes_per_token(model: ModelSpec, tp: int, fused: bool) -> float:
    """Effective bytes per token of the loss (forward + backward) over this rank's 1/tp of the vocabulary."""
    cal = load_calibration().membound
    per_entry = cal["fused_cross_entropy_bytes"] if fused else cal["cross_entropy_bytes"]
    return per_entry * model.vocab_size / tp


def optimizer_bytes_per_param(precision: str, acc: Accelerator | None = None) -> float:
    """Effective bytes per parameter of an optimizer step: AdamW's (a machine profile's measurement on `acc`,
    else the H200's), plus the low-precision copy of the weights outside fp32."""
    cal = load_calibration().membound
    adamw = acc.adamw_bytes_per_param if acc is not None and acc.adamw_bytes_per_param > 0 else cal["adamw_bytes"]
    return adamw + (0.0 if precision == "fp32" else cal["mixed_precision_copy_bytes"])


def unfused_softmax_bytes_per_score(dropout: bool) -> float:
    cal = load_calibration().membound
    return cal["unfused_softmax_bytes"] + (cal["unfused_dropout_bytes"] if dropout else 0.0)


def memory_bandwidth_ratio(acc: Accelerator) -> float:
    """This device's HBM bandwidth relative to the calibration card's (for reports)."""
    return acc.hbm_bandwidth_gbs / H200_HBM_GBS
