"""fp8 training through torchao's Float8 linear layers: what a plan with `precision = "fp8"` runs.

The transformer blocks' linear layers (attention projections, dense MLPs, MLA's projections) become
`torchao.float8.Float8Linear`: their inputs, weights and output gradients are cast to fp8 with dynamic scales
(tensorwise: one scale per tensor; rowwise: one per row, axiswise; rowwise_with_gw_hp: rowwise with the weight
gradient's GEMM kept in bf16) and multiplied with `torch._scaled_mm`; weights stay in high precision (the FSDP2
master copy), so checkpoints and the optimizer are unchanged. The LM head, the embedding, the router and the
routed experts (stacked parameters, not nn.Linear) keep bf16, as torchtitan leaves them. A layer whose
dimensions are not multiples of 16 (what `_scaled_mm` needs) keeps bf16 too.

Where it cannot run, a plan is refused rather than trained in another precision: fp8 GEMMs need a CUDA device
of compute capability 8.9 or higher (Ada, Hopper, Blackwell) and the optional `torchao` package. Tensor
parallelism with fp8 (torchao's Float8ColwiseParallel / Float8RowwiseParallel) is not wired yet, and is refused.
`emulate=True` (tests only) runs torchao's emulation on CPU: the same casts and scales, high-precision matmuls.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bastion.errors import PlanError
from bastion.runtime.train_config import FP8_RECIPES

#: the module names (last part) that stay in high precision even when they are nn.Linear
KEEP_HIGH_PRECISION = ("output",)
#: _scaled_mm's alignment: both GEMM dimensions of a converted layer are multiples of this
ALIGNMENT = 16


def fp8_unavailable_reason(device: torch.device, tp: int) -> str | None:
    """Why a plan with precision fp8 cannot run here (None: it can)."""
    if device.type != "cuda":
        return "fp8 matrix multiplies need a CUDA GPU (compute capability 8.9+); this run is on CPU"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return (f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) has no fp8 tensor "
                f"cores; fp8 needs 8.9+ (L40S, H100, H200, B200)")
    if tp > 1:
        return "fp8 with tensor parallelism is not run yet (torchao's Float8 tensor-parallel styles are not wired)"
    try:
        import torchao.float8  # noqa: F401
    except ImportError:
        return "fp8 training runs through the optional `torchao` package, which is not installed"
    return None


def check_fp8_runnable(device: torch.device, tp: int) -> None:
    reason = fp8_unavailable_reason(device, tp)
    if reason:
        fix = ("pip install torchao (a version made for your torch), then rerun" if "torchao" in reason
               else "use precision = \"bf16\" in the plan on this machine, or run the fp8 plan on Hopper/Blackwell "
                    "GPUs with tp = 1")
        raise PlanError(f"The plan asks for fp8, but {reason}; bastion does not silently train it in another "
                        f"precision.", fix=fix, reason="precision unsupported")


def check_fp8_runnable_here(tp: int) -> None:
    """check_fp8_runnable for the device this machine's workers will use (its first GPU, else the CPU)."""
    check_fp8_runnable(torch.device("cuda:0" if torch.cuda.is_available() else "cpu"), tp)


def convertible(module: nn.Module, name: str) -> bool:
    """Whether the linear layer `name` becomes fp8: a transformer block's nn.Linear with aligned dimensions."""
    if not isinstance(module, nn.Linear) or name.split(".")[-1] in KEEP_HIGH_PRECISION:
        return False
    return module.in_features % ALIGNMENT == 0 and module.out_features % ALIGNMENT == 0


def apply_float8(part: nn.Module, recipe: str = "tensorwise", emulate: bool = False) -> int:
    """Swap the part's convertible linear layers for torchao Float8Linear (before FSDP wraps them); returns how
    many were converted."""
    if recipe not in FP8_RECIPES:
        raise PlanError(f"Unknown fp8 recipe '{recipe}'.", fix=f"use one of {', '.join(FP8_RECIPES)}.",
                        reason="bad field")
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    config: Any = Float8LinearConfig.from_recipe_name(recipe)
    if emulate:
        import dataclasses

        config = dataclasses.replace(config, emulate=True)
    converted: list[str] = []

    def keep(module: nn.Module, name: str) -> bool:
        if convertible(module, name):
            converted.append(name)
            return True
        return False

    convert_to_float8_training(part, config=config, module_filter_fn=keep)
    return len(converted)
