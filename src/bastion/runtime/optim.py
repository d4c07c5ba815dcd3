"""How one step updates the weights: AdamW, the warmup + cosine LR schedule and global-norm gradient clipping.

Everything here is per parameter group or per gradient, independent of the loop that calls it (runtime/trainer.py).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from bastion.runtime.mesh import RuntimeMesh
from bastion.runtime.parallelize import ParallelModel
from bastion.runtime.train_config import TrainConfig


# ---- optimizer and schedule ------------------------------------------------------------------------------
def build_optimizer(model: ParallelModel, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    from torch.distributed.tensor import DTensor

    plain_cuda = device.type == "cuda" and not any(isinstance(p, DTensor) for p in model.parameters())
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=config.lr, betas=tuple(config.betas), eps=config.eps,
                             fused=True if plain_cuda else None)


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float, decay: str = "cosine") -> float:
    """Warmup, then `decay` (cosine, linear or constant) to min_ratio: the multiplier of the peak lr for optimizer
    step `step` (0-based)."""
    warmup = min(warmup_steps, max(1, total_steps // 10))
    if step < warmup:
        return (step + 1) / warmup
    if decay == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    shape = 1 - progress if decay == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return min_ratio + (1 - min_ratio) * shape


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, config.steps, config.warmup_steps, config.min_lr_ratio,
                                          config.lr_decay))


def scheduler_state(scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    """The LR schedule's position as JSON (what a checkpoint's state.json keeps under "scheduler")."""
    return _jsonable(scheduler.state_dict())


def _jsonable(value: Any) -> Any:
    """LR-scheduler state as JSON (tensors to numbers, callables dropped: they are rebuilt from the config)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if callable(value):
        return None
    return value


# ---- gradient clipping across dp, tp and pp ----------------------------------------------------------------
@torch.no_grad()
def align_gradient_placements(model: ParallelModel) -> None:
    """Give every DTensor gradient its parameter's placements.

    Under sequence parallelism the gradient of a replicated norm weight comes out Partial (each TP rank saw part
    of the sequence), and DTensor gives a vocab-sharded embedding's gradient Replicate (runtime/model.py's
    Embedding hands it back sharded); reducing/slicing here makes the norm, the clipping and the optimizer see
    the true gradient, and its memory the predicted size.
    """
    from torch.distributed.tensor import DTensor

    for param in model.parameters():
        grad = param.grad
        if isinstance(grad, DTensor) and tuple(grad.placements) != tuple(param.placements):
            param.grad = grad.redistribute(param.device_mesh, param.placements)


@torch.no_grad()
def clip_grad_norm(model: ParallelModel, max_norm: float, rmesh: RuntimeMesh) -> float:
    """Global L2 norm over every gradient of the whole model, then scale all gradients by min(1, max/norm).

    Sharded DTensor gradients contribute the sum of squares of their local shards, reduced over the mesh
    dimensions they are sharded (or partial) on; replicated ones count once. Pipeline stages then add their
    sums over the pp group so every rank clips with the same norm.
    """
    from torch.distributed.tensor import DTensor

    groups: dict[tuple, list[torch.Tensor]] = {}
    reduce_over: dict[tuple, list[dist.ProcessGroup]] = {}
    for param in model.parameters():
        grad = param.grad
        if grad is None:
            continue
        if isinstance(grad, DTensor):
            key = (id(grad.device_mesh), tuple(grad.placements))
            if key not in reduce_over:
                reduce_over[key] = [grad.device_mesh.get_group(i) for i, placement in enumerate(grad.placements)
                                    if not placement.is_replicate()]  # Shard, _StridedShard (FSDP×TP)
            groups.setdefault(key, []).append(grad.to_local())
        else:
            groups.setdefault(("plain",), []).append(grad)
    total_sq = torch.zeros((), dtype=torch.float32, device=rmesh.device)
    for key, grads in groups.items():
        norms = torch._foreach_norm([g.float() for g in grads], 2)
        sq = torch.stack(norms).pow(2).sum()
        for group in reduce_over.get(key, []):
            dist.all_reduce(sq, group=group)
        total_sq += sq
    if rmesh.plan.pp > 1:
        dist.all_reduce(total_sq, group=rmesh.pp_group)
    # replicated gradients (plain data parallel, TP-replicated norms) are not reduced above, so a replica whose
    # gradients went non-finite on its own (a bit flip, an injected fault) would be judged alone: it would roll
    # back while the others step on, and the next collective would deadlock. Every rank sees a NaN/inf anywhere.
    anywhere = total_sq.clone()
    dist.all_reduce(anywhere)
    total_sq = torch.where(torch.isfinite(anywhere), total_sq, anywhere)
    total = total_sq.sqrt()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for grads in groups.values():
        torch._foreach_mul_(grads, coef)
    return float(total)
