"""What a run measures: model FLOPs, memory probes, parameter hashes (metrics.jsonl itself: rundir/metrics.py).

Conventions:
- model FLOPs follow PaLM (as ../shared/calibration does): 6 · matmul parameters + 12 · layers · q_width · seq
  per token; MFU = model FLOPs per second / (devices · the accelerator's dense peak at the plan's precision).
- mem_gib: CUDA's peak allocated memory on GPUs; on CPU the process's resident set (the closest thing).
- params_sha256: sha256 over (name, little-endian fp32 bytes) of the full unsharded parameters, in the
  canonical order of the plain model, so runs on different plans can be compared.
"""

from __future__ import annotations

import hashlib
import os
import resource
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from bastion.predict.flops import model_flops_per_token  # noqa: F401 - the one count; train.py reads it here
from bastion.runtime.model import build_model, canonical_name
from bastion.specs.model import ModelSpec


# ---- memory --------------------------------------------------------------------------------------------
def current_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _local(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _nbytes(tensor: torch.Tensor) -> int:
    local = _local(tensor)
    return local.numel() * local.element_size()


def param_bytes(parameters: Iterable[torch.Tensor]) -> int:
    return sum(_nbytes(p) for p in parameters)


def model_state_bytes_measured(parameters: list[nn.Parameter], optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes this rank holds for parameters, gradients and optimizer moments (AdamW exp_avg + exp_avg_sq).

    The scalar `step` counters of AdamW (4 bytes per tensor) are not optimizer state in the predictor's sense
    and are left out.
    """
    params = sum(_nbytes(p) for p in parameters)
    grads = sum(_nbytes(p.grad) for p in parameters if p.grad is not None)
    optim = 0
    for state in optimizer.state.values():
        for key, value in state.items():
            if key != "step" and isinstance(value, torch.Tensor):
                optim += _nbytes(value)
    return {"params": params, "grads": grads, "optimizer": optim}


class SavedActivationProbe:
    """Counts the bytes autograd keeps for backward (saved tensors minus parameters), deduplicated by storage.

    Used on one micro-batch to measure activation memory against the prediction.
    """

    def __init__(self) -> None:
        #: storage pointer -> the storage (kept to read its size after forward)
        self.storages: dict[int, Any] = {}
        self.wrapper_bytes = 0

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        from torch.distributed.tensor import DTensor

        local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
        if local.device.type != "meta" and local.numel():
            try:
                storage = local.untyped_storage()
                self.storages.setdefault(storage.data_ptr(), storage)
            except RuntimeError:  # wrapper subclasses without a real storage: count their elements
                self.wrapper_bytes += local.numel() * local.element_size()
        return tensor

    def hooks(self) -> Any:
        return torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)

    def activation_bytes(self, parameters: Iterable[torch.Tensor]) -> int:
        """Saved bytes that are not parameter storage, read after forward.

        Parameters are recognised by storage, since autograd saves weights as views (weight.t()). FSDP2 frees
        the unsharded parameters it all-gathered (zero 3) by resizing their storage to 0, so they count 0.
        """
        param_storages = set()
        for param in parameters:
            local = _local(param)
            try:
                param_storages.add(local.untyped_storage().data_ptr())
            except RuntimeError:
                continue
        return self.wrapper_bytes + sum(storage.nbytes() for ptr, storage in self.storages.items()
                                        if ptr not in param_storages)


# ---- parameter hashing ----------------------------------------------------------------------------------
def full_parameters(named_params: list[tuple[str, nn.Parameter]]) -> dict[str, torch.Tensor]:
    """Unsharded fp32 CPU copies of this rank's parameters (collective over each DTensor's mesh)."""
    from torch.distributed.tensor import DTensor

    out: dict[str, torch.Tensor] = {}
    for name, param in named_params:
        full = param.full_tensor() if isinstance(param, DTensor) else param.detach()
        out[canonical_name(name)] = full.detach().float().cpu().clone()
    return out


def params_sha256(spec: ModelSpec, full: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name, _ in build_model(spec).named_parameters():
        digest.update(name.encode())
        digest.update(full[name].contiguous().numpy().astype("<f4").tobytes())
    return digest.hexdigest()
