"""Reading a DCP checkpoint without running code from it.

DCP's `FileSystemReader` unpickles the checkpoint's `.metadata` with `pickle.load`, which runs whatever the
pickle names: anyone able to write a checkpoint (a shared volume) could run code as the training job. Here the
metadata goes through a restricted unpickler that constructs only DCP's metadata classes and the torch values
they hold (dtypes, `torch.Size`, layouts), and the result is checked for the shape bastion's checkpoints have:
tensors only (a bytes entry would make DCP `torch.load(weights_only=False)` a blob of the checkpoint), stored in
plain files of the checkpoint directory itself. Tensor data is read by DCP with `torch.load(weights_only=True)`.

`metadata_problem(path)` is the verdict used when choosing a checkpoint (a reason sets it aside like a corrupt
one); `SafeFileSystemReader` and `TensorsOnlyLoadPlanner` make `dcp.load` itself hold to the same rules on every
rank. Works on torch 2.11 and 2.13 (the reader API both share: `read_metadata(*args, **kwargs)` with an
optional `rank` keyword).
"""

from __future__ import annotations

import io
import pathlib
import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)

METADATA_FILE = ".metadata"

#: (module, name) globals a DCP `.metadata` pickle may name; torch dtypes are admitted separately
_ALLOWED: dict[tuple[str, str], Any] = {
    **{("torch.distributed.checkpoint.metadata", name): getattr(dcp_metadata, name)
       for name in ("Metadata", "MetadataIndex", "StorageMeta", "TensorStorageMetadata", "BytesStorageMetadata",
                    "ChunkStorageMetadata", "TensorProperties", "_MEM_FORMAT_ENCODING")},
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): _StorageInfo,
    ("torch", "Size"): torch.Size,
    ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
    # StorageMeta.checkpoint_id: the path the checkpoint was saved under (Python >= 3.13 pickles pathlib._local)
    **{(module, name): getattr(pathlib, name)
       for module in ("pathlib", "pathlib._local") for name in ("PosixPath", "PurePosixPath")},
}


class UntrustedMetadata(ValueError):
    """A `.metadata` that names something a DCP checkpoint of bastion's never holds."""


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and not name.startswith("_") and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UntrustedMetadata(f"{METADATA_FILE} names {module}.{name}, which DCP metadata never holds "
                                f"(a pickle that would run code?)")

    def persistent_load(self, pid: Any) -> Any:
        raise UntrustedMetadata(f"{METADATA_FILE} refers to a persistent object, which DCP metadata never holds")


def _check_shape(metadata: Any) -> None:
    """Raise UntrustedMetadata unless `metadata` is what DCP writes for a tensors-only checkpoint."""
    if not isinstance(metadata, Metadata):
        raise UntrustedMetadata(f"{METADATA_FILE} holds a {type(metadata).__name__}, not DCP Metadata")
    entries = metadata.state_dict_metadata
    if not isinstance(entries, dict):
        raise UntrustedMetadata(f"{METADATA_FILE} has no table of saved values")
    for fqn, entry in entries.items():
        if not isinstance(entry, TensorStorageMetadata):  # bytes entries are loaded with weights_only=False
            raise UntrustedMetadata(f"{METADATA_FILE} entry {str(fqn)[:80]!r} is a {type(entry).__name__}, "
                                    f"not a tensor (bastion's checkpoints hold tensors only)")
        if not (isinstance(fqn, str) and isinstance(entry.properties, TensorProperties)
                and isinstance(entry.properties.dtype, torch.dtype) and isinstance(entry.size, torch.Size)
                and isinstance(entry.chunks, list)
                and all(isinstance(c, ChunkStorageMetadata) and isinstance(c.offsets, torch.Size)
                        and isinstance(c.sizes, torch.Size) for c in entry.chunks)):
            raise UntrustedMetadata(f"{METADATA_FILE} entry {str(fqn)[:80]!r} is not a well-formed tensor entry")
    storage = metadata.storage_data
    if not isinstance(storage, dict):
        raise UntrustedMetadata(f"{METADATA_FILE} does not say where the tensors are stored")
    for index, info in storage.items():
        if not (isinstance(index, MetadataIndex) and isinstance(info, _StorageInfo)):
            raise UntrustedMetadata(f"{METADATA_FILE} has a malformed storage entry")
        name = info.relative_path
        if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
            raise UntrustedMetadata(f"{METADATA_FILE} stores data at {str(name)[:80]!r}, outside the checkpoint")
        if getattr(info, "transform_descriptors", None):  # compression etc.: bastion never writes them
            raise UntrustedMetadata(f"{METADATA_FILE} asks for stream transforms {info.transform_descriptors!r}")
    if metadata.storage_meta is not None and not isinstance(metadata.storage_meta, StorageMeta):
        raise UntrustedMetadata(f"{METADATA_FILE} has a malformed storage_meta")


def load_metadata(data: bytes) -> Metadata:
    """DCP metadata from the bytes of a `.metadata` file, constructing only what DCP metadata holds."""
    try:
        metadata = _MetadataUnpickler(io.BytesIO(data)).load()
    except UntrustedMetadata:
        raise
    except Exception as exc:  # truncated or garbled: unpickling raises nearly anything
        raise UntrustedMetadata(f"{METADATA_FILE} is not readable DCP metadata ({type(exc).__name__})") from exc
    _check_shape(metadata)
    return metadata


def metadata_problem(path: Path) -> str | None:
    """None if the checkpoint at `path` has DCP metadata that loads under these rules, else the reason."""
    try:
        load_metadata((Path(path) / METADATA_FILE).read_bytes())
    except OSError as exc:
        return f"{METADATA_FILE} cannot be read ({exc.strerror or exc})"
    except UntrustedMetadata as exc:
        return f"untrusted checkpoint: {exc}"
    return None


class SafeFileSystemReader(FileSystemReader):
    """DCP's file-system reader, reading `.metadata` through the restricted unpickler."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if kwargs.get("rank") is not None:  # DCP's fallback to per-rank metadata, which bastion never writes
            raise UntrustedMetadata("bastion's checkpoints have no per-rank metadata")
        metadata = load_metadata((Path(self.path) / METADATA_FILE).read_bytes())
        if metadata.storage_meta is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class TensorsOnlyLoadPlanner(DefaultLoadPlanner):
    """DCP's load planner, refusing the one load that unpickles (a bytes entry, `torch.load(weights_only=False)`)."""

    def load_bytes(self, read_item: Any, value: Any) -> None:
        raise UntrustedMetadata(f"the checkpoint holds a pickled value for {read_item.dest_index.fqn!r}; "
                                f"bastion's checkpoints hold tensors only")
