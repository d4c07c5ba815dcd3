"""Activation offload (ParallelPlan.activation_offload): what chosen transformer blocks save for backward goes to
host memory during their forward and comes back for their backward.

The mechanism is autograd's own, `torch.autograd.graph.saved_tensors_hooks` (what `save_on_cpu` uses), entered
around each chosen block's forward by module hooks. Which blocks: `predict.memory.offloaded_chunk_layers`, the
predictor's rule, so the runtime moves exactly what the predictor assumes. Beyond `save_on_cpu`:
- parameters (matmuls save their weights) and the RoPE table every block reads stay where they are: they are not
  activations, and live on the device for the whole step anyway;
- each storage moves once per forward (a norm's output that the q, k and v projections all save is one tensor)
  and counts in full, as the predictor's enumeration counts it (tests/unit/test_runtime_memory.py), so the bytes
  moved are comparable with `predict.memory.offloaded_bytes_per_step`;
- the moved storages stay referenced until the block's forward ends, so no later tensor of that forward can reuse
  an address that is the key of a copy already made (and an asynchronous copy never reads freed memory).
On CUDA the host copies are pinned and the copies asynchronous on the current stream; on CPU the copy is a plain
host-to-host copy (the same code path, so a CPU run checks it), counted as moved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bastion.predict.memory import offloaded_chunk_layers
from bastion.specs.plan import ParallelPlan


@dataclass
class _ForwardCopies:
    """One forward of one block: the host copy of every storage it saved, by the device storage's address."""

    device: torch.device
    host: dict[int, torch.UntypedStorage] = field(default_factory=dict)
    #: device storages referenced while the forward runs (cleared at its end)
    sources: dict[int, torch.UntypedStorage] = field(default_factory=dict)
    #: storages back on the device for the backward, each copied once
    restored: dict[int, torch.UntypedStorage] = field(default_factory=dict)

    def restore(self, key: int, non_blocking: bool) -> torch.UntypedStorage:
        storage = self.restored.get(key)
        if storage is None:
            # the same call on CPU (where it hands back the host storage itself), so CPU runs check it
            storage = self.host[key].to(device=self.device, non_blocking=non_blocking)
            self.restored[key] = storage
        return storage


@dataclass(frozen=True)
class _Packed:
    """A saved tensor as the offload hook keeps it: a view of a host-copied storage, and its DTensor layout."""

    copies: _ForwardCopies
    key: int
    dtype: torch.dtype
    size: torch.Size
    stride: tuple[int, ...]
    offset: int
    #: the DTensor's spec when autograd saved a DTensor (tensor parallelism), else None
    dtensor_spec: Any = None


class ActivationOffload:
    """This rank's offload hooks and the bytes they moved to host memory."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pin_memory = device.type == "cuda"  # page-locked host buffers only where a device copies from them
        #: bytes copied to host memory since the last `take_bytes_moved`
        self.bytes_moved = 0

    def take_bytes_moved(self) -> int:
        moved, self.bytes_moved = self.bytes_moved, 0
        return moved

    def attach(self, block: nn.Module) -> None:
        """Offload what `block` saves for backward in each of its forwards (`block(x, rope)`)."""
        _BlockHooks(self, block)


class _BlockHooks:
    def __init__(self, offload: ActivationOffload, block: nn.Module) -> None:
        self.offload = offload
        self.block = block
        self.copies: _ForwardCopies | None = None
        self.kept: set[int | None] = set()  # storages that stay: the block's parameters and the RoPE table
        self.context: Any = None
        block.register_forward_pre_hook(self.enter)
        block.register_forward_hook(self.exit, always_call=True)

    def enter(self, _module: nn.Module, args: tuple[Any, ...]) -> None:
        self.copies = _ForwardCopies(self.offload.device)
        self.kept = {_address(arg) for arg in args[1:] if isinstance(arg, torch.Tensor)}
        self.context = torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)
        self.context.__enter__()

    def exit(self, _module: nn.Module, _args: tuple[Any, ...], _output: Any) -> None:
        self.context.__exit__(None, None, None)
        self.context = None
        if self.copies is not None:
            self.copies.sources.clear()
        self.copies = None

    def _is_kept(self, key: int) -> bool:
        if key not in self.kept:  # FSDP2 unshards a unit's parameters in its own pre-forward: look again
            self.kept |= {_address(p) for p in self.block.parameters()}
        return key in self.kept

    def pack(self, tensor: torch.Tensor) -> Any:
        from torch.distributed.tensor import DTensor

        local = _wait(tensor._local_tensor if isinstance(tensor, DTensor) else tensor)
        try:
            storage = local.untyped_storage()
            key = storage.data_ptr()
        except (RuntimeError, NotImplementedError):  # a wrapper subclass without a storage of its own: stays
            return tensor
        copies = self.copies
        if copies is None or local.device.type == "meta" or not storage.nbytes() or self._is_kept(key):
            return tensor
        if key not in copies.host:
            host = torch.empty(storage.nbytes(), dtype=torch.uint8, pin_memory=self.offload.pin_memory)
            host.untyped_storage().copy_(storage, non_blocking=self.offload.pin_memory)
            copies.host[key] = host.untyped_storage()
            copies.sources[key] = storage
            self.offload.bytes_moved += storage.nbytes()
        return _Packed(copies, key, local.dtype, local.size(), local.stride(), local.storage_offset(),
                       tensor._spec if isinstance(tensor, DTensor) else None)

    def unpack(self, packed: Any) -> torch.Tensor:
        if not isinstance(packed, _Packed):
            return packed
        storage = packed.copies.restore(packed.key, self.offload.pin_memory)
        local = torch.empty(0, dtype=packed.dtype, device=packed.copies.device)
        local.set_(storage, packed.offset, packed.size, packed.stride)
        if packed.dtensor_spec is None:
            return local
        from torch.distributed.tensor import DTensor

        spec = packed.dtensor_spec
        with torch.no_grad():
            return DTensor.from_local(local, spec.mesh, spec.placements, run_check=False, shape=spec.shape,
                                      stride=spec.stride)


def _wait(local: torch.Tensor) -> torch.Tensor:
    """The plain tensor under a functional collective's not-yet-waited result (DTensor's sequence-parallel
    reduce-scatter hands its output on as one)."""
    from torch.distributed._functional_collectives import AsyncCollectiveTensor

    return local.trigger_wait() if isinstance(local, AsyncCollectiveTensor) else local


def _address(tensor: torch.Tensor) -> int | None:
    """The address of the storage under a tensor (a DTensor's local one); None for a tensor without storage."""
    from torch.distributed.tensor import DTensor

    try:
        return _wait(tensor._local_tensor if isinstance(tensor, DTensor) else tensor).untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None


def apply_activation_offload(module: nn.Module, plan: ParallelPlan, offload: ActivationOffload) -> None:
    """Attach the offload hooks to this chunk's offloaded blocks (predict.memory.offloaded_chunk_layers: after
    the recomputed ones, never the chunk's last)."""
    names = list(module.layers.keys())  # this chunk's layers in model order
    for position in offloaded_chunk_layers(plan, len(names)):
        offload.attach(module.layers[names[position]])
