"""Which kernels the training software runs, and what that does to their rates: the flash-attention kernel and
the fp8 recipe, and the experts' grouped GEMM.

The calibrated attention curve is a kernel that uses the card's newest tensor-core instructions. Kernels written
for an older generation (FlashAttention-2 on a Hopper card) stay far below it, and some are slower everywhere
(FlashAttention in Triton, 2022-23). data/attention_kernels.toml lists them with their sources. An fp8 recipe
(data/fp8_recipes.toml) sets how much quantising the GEMM operands costs and the ceiling of its GEMM kernel. A
grouped-GEMM implementation (data/grouped_gemm.toml) runs an MoE layer's experts at a fraction of the dense rate
that its published benchmarks set (predict/moe.py grouped_gemm_rate).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

from bastion.errors import ConfigError
from bastion.predict.calibration import DATA_DIR

#: NVIDIA tensor-core generations, oldest first (a kernel written for one cannot use a later one's instructions)
GENERATIONS = ("ampere", "hopper", "blackwell")
DEFAULT_KERNEL = "sdpa"
_Entry = TypeVar("_Entry")


@dataclass(frozen=True)
class AttentionKernel:
    name: str
    description: str
    source: str
    #: the generation whose instructions the kernel uses ("" = the card's newest)
    written_for: str = ""
    #: at most this fraction of the bf16 peak on a generation newer than `written_for`, on `cap_measured_on`
    newer_arch_cap: float | None = None
    #: the accelerator the cap was measured on (another card scales it by its sustained matmul efficiency)
    cap_measured_on: str = ""
    #: the kernel's ceiling is that of `relative_to` divided by `slowdown`
    relative_to: str = ""
    slowdown: float = 1.0


@cache
def attention_kernels() -> dict[str, AttentionKernel]:
    table = tomllib.loads((DATA_DIR / "attention_kernels.toml").read_text())
    return {name: AttentionKernel(name=name, **fields) for name, fields in table.items()}


def _named(entries: dict[str, _Entry], name: str, what: str) -> _Entry:
    """The data file's entry `name`, or a ConfigError listing the known names."""
    if name not in entries:
        raise ConfigError(f"Unknown {what} '{name}'.", fix=f"use one of: {', '.join(entries)}.")
    return entries[name]


def attention_kernel(name: str) -> AttentionKernel:
    return _named(attention_kernels(), name, "attention kernel")


def _is_newer(arch: str, written_for: str) -> bool:
    if not written_for or arch not in GENERATIONS or written_for not in GENERATIONS:
        return False
    return GENERATIONS.index(arch) > GENERATIONS.index(written_for)


@cache
def kernel_efficiency(name: str, arch: str, calibrated: float, calibrated_peak: float,
                      matmul_efficiency: float | None = None) -> float:
    """The fraction of the bf16 peak kernel `name` reaches on a card of generation `arch` (whose catalog
    matmul_efficiency is `matmul_efficiency`; None = the card a cap was measured on), where the calibrated kernel
    reaches `calibrated` at this shape and `calibrated_peak` at its best (long sequences). A `slowdown` lowers the
    kernel's ceiling, not its short-sequence rate, where launch and occupancy limits bind every kernel alike."""
    kernel = attention_kernel(name)
    if kernel.relative_to:
        eff = kernel_efficiency(kernel.relative_to, arch, calibrated, calibrated_peak, matmul_efficiency)
        ceiling = kernel_efficiency(kernel.relative_to, arch, calibrated_peak, calibrated_peak, matmul_efficiency)
    else:
        eff, ceiling = calibrated, calibrated_peak
    if kernel.newer_arch_cap is not None and _is_newer(arch, kernel.written_for):
        eff = min(eff, kernel.newer_arch_cap * _card_ratio(kernel.cap_measured_on, matmul_efficiency))
    return min(eff, ceiling / kernel.slowdown)


def _card_ratio(measured_on: str, matmul_efficiency: float | None) -> float:
    if not measured_on or matmul_efficiency is None:
        return 1.0
    from bastion.specs.hardware import load_accelerator

    return matmul_efficiency / load_accelerator(measured_on).sustained_matmul_efficiency


@dataclass(frozen=True)
class Fp8Recipe:
    """How an fp8 training recipe scales its GEMM operands (data/fp8_recipes.toml, with the derivations)."""

    name: str
    description: str
    source: str
    #: effective bytes per element of quantising the layer input (m x k), the weight (k x n) and the output
    #: gradient (m x n) of one GEMM, both layouts
    input_bytes: float
    weight_bytes: float
    grad_bytes: float
    #: at most this fraction of the dense fp8 peak on `gemm_cap_arch` (None: the calibrated per-tensor rate)
    gemm_efficiency_cap: float | None = None
    gemm_cap_arch: str = ""


#: the recipe of a stack that does not say: Transformer Engine's default (DelayedScaling)
DEFAULT_FP8_RECIPE = "delayed"


@cache
def fp8_recipes() -> dict[str, Fp8Recipe]:
    table = tomllib.loads((DATA_DIR / "fp8_recipes.toml").read_text())
    return {name: Fp8Recipe(name=name, **fields) for name, fields in table.items()}


def fp8_recipe(name: str) -> Fp8Recipe:
    return _named(fp8_recipes(), name, "fp8 recipe")


#: the grouped-GEMM implementation that runs each expert's GEMM at the dense rate of its shape (PredictOptions'
#: default: Transformer Engine's GroupedLinear)
DENSE_RATE_GROUPED_GEMM = "cublas_per_expert"


@cache
def grouped_gemm_table() -> dict[str, Any]:
    """data/grouped_gemm.toml: the implementations and their published benchmarks."""
    return tomllib.loads((DATA_DIR / "grouped_gemm.toml").read_text())


def grouped_gemm_implementation(name: str) -> dict[str, str]:
    return _named(grouped_gemm_table()["implementations"], name, "grouped_gemm implementation")
