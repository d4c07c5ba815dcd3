"""Hugging Face weights in and out of the runtime: `load_hf_weights` (train --init-from) and `export_hf`
(`bastion export --format hf`). Names, shapes and configs are interop/ (torch-free); this is the tensor work.

Loading: every rank reads, per parameter, only the slice its local shard holds (the DTensor's chunk, as DCP
computes it, read with safetensors' `get_slice`): no rank ever holds a full copy of the model, and a plain
(unsharded) parameter reads its whole tensor. Exporting reads the DCP checkpoint directly, one output shard at a
time (DCP fills exactly the tensors asked for), through the same restricted reader resuming uses.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bastion.errors import CheckpointError, ConfigError
from bastion.interop import hf_files
from bastion.interop.hf_config import architecture, generation_config, hf_config_from_spec
from bastion.runtime.model import canonical_name
from bastion.specs.model import ModelSpec

#: transformers' default shard limit ("5GB")
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9


def _safetensors() -> Any:
    hf_files.require_safetensors()
    import safetensors
    import safetensors.torch  # noqa: F401  (save_file)

    return safetensors


# ---- in: HF safetensors -> this rank's parameters ------------------------------------------------------
def _local_region(param: torch.Tensor) -> tuple[torch.Tensor, tuple[slice, ...] | None]:
    """The tensor to fill and the slice of the full tensor it holds (None: all of it)."""
    from torch.distributed.tensor import DTensor

    if not isinstance(param, DTensor):
        return param, None
    chunks = param.__create_chunk_list__()  # the local shard's offsets and sizes (DCP's own protocol)
    if len(chunks) != 1:
        raise RuntimeError(f"a DTensor with {len(chunks)} local chunks is not supported")
    chunk = chunks[0]
    return param.to_local(), tuple(slice(o, o + s) for o, s in zip(chunk.offsets, chunk.sizes, strict=True))


@torch.no_grad()
def load_hf_weights(parts: Sequence[nn.Module], hf_dir: str | Path) -> int:
    """Fill the parameters of this rank's model chunks from a HF model directory (checked by
    `hf_files.check_init_from` beforehand). Returns the number of tensors this rank read from."""
    safetensors = _safetensors()
    hf_dir = Path(hf_dir)
    directory = hf_files.tensor_directory(hf_dir)
    arch = json.loads((hf_dir / hf_files.CONFIG_FILE).read_text()).get("model_type", "llama")
    handles: dict[str, Any] = {}
    loaded = 0
    try:
        for part in parts:
            for name, param in _state_tensors(part):
                canonical = canonical_name(name)
                stacked = hf_files.is_stacked_experts(canonical)
                keys = hf_files.hf_names(canonical, param.shape[0] if stacked else 0, arch)
                entries = [directory.get(key) for key in keys]
                if None in entries:
                    missing = keys[entries.index(None)]
                    raise ConfigError(f"{hf_dir} has no tensor {missing}.",
                                      fix="use the weights saved with the config.")
                local, region = _local_region(param)
                if local.numel() == 0:  # an uneven FSDP shard can be empty on the last ranks
                    continue
                want = tuple(param.shape[1:]) if stacked else tuple(param.shape)
                for key, entry in zip(keys, entries, strict=True):
                    if tuple(entry.shape) != want:
                        raise ConfigError(f"{hf_dir}: {key} has shape {list(entry.shape)}, the model needs "
                                          f"{list(want)}.", fix="use the config.json saved with the weights.")
                    if entry.file not in handles:
                        handles[entry.file] = safetensors.safe_open(str(hf_dir / entry.file), framework="pt")
                if stacked:  # this rank's experts (dim 0 of the region), each read as its own slice
                    experts = range(param.shape[0]) if region is None else range(*region[0].indices(param.shape[0]))
                    inner = (slice(None),) * (param.dim() - 1) if region is None else region[1:]
                    value = torch.stack([handles[entries[j].file].get_slice(keys[j])[inner] for j in experts])
                else:
                    handle = handles[entries[0].file]
                    value = handle.get_tensor(keys[0]) if region is None else handle.get_slice(keys[0])[region]
                local.copy_(value.to(local.dtype))
                loaded += 1
    finally:
        handles.clear()
    return loaded


def _state_tensors(part: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The parameters, and the persistent buffers that are model state (the router's selection bias), of a
    chunk: what a checkpoint keeps and a HF directory holds."""
    buffers = [(n, b) for n, b in part.named_buffers() if n.endswith("router.expert_bias")]
    return [*part.named_parameters(), *buffers]


# ---- out: a DCP checkpoint -> HF safetensors ----------------------------------------------------------
def _checkpoint_tensors(path: Path, spec: ModelSpec) -> dict[str, Any]:
    """bastion name -> the checkpoint's TensorStorageMetadata of every model tensor, in HF order; the set must
    be the spec's."""
    from bastion.runtime import checkpoint_trust

    try:
        metadata = checkpoint_trust.load_metadata((path / checkpoint_trust.METADATA_FILE).read_bytes())
    except (OSError, checkpoint_trust.UntrustedMetadata) as exc:
        raise CheckpointError(f"The checkpoint at {path} cannot be read: {exc}.",
                              fix="export a committed checkpoint written by `bastion train`.") from exc
    saved = {k.removeprefix("model."): v for k, v in metadata.state_dict_metadata.items() if k.startswith("model.")}
    wanted = hf_files.bastion_shapes(spec)
    unplaced = [name for name in saved if name not in wanted]
    if unplaced:
        raise CheckpointError(f"The checkpoint at {path} holds {unplaced[0]}, which its Hugging Face architecture "
                              f"({architecture(spec)}) has no place for.",
                              fix="export a checkpoint of a Llama-, Mixtral-, DeepSeek-V3-, Qwen3- or "
                                  "Qwen3-MoE-style model.")
    if set(saved) != set(wanted) or any(tuple(saved[k].size) != s for k, s in wanted.items()):
        raise CheckpointError(f"The checkpoint at {path} does not hold the tensors of its model '{spec.name}'.",
                              fix="export a checkpoint written by `bastion train` (its state.json and tensors "
                                  "belong together).")
    return {name: saved[name] for name in wanted}


def _shards(tensors: dict[str, Any], max_shard_bytes: int, dtype: torch.dtype | None) -> list[list[str]]:
    groups: list[list[str]] = [[]]
    size = 0
    for name, meta in tensors.items():
        numel = 1
        for d in meta.size:
            numel *= d
        nbytes = numel * (dtype or meta.properties.dtype).itemsize
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    return groups


def _read_shard(path: Path, tensors: dict[str, Any], names: list[str]) -> dict[str, torch.Tensor]:
    import torch.distributed.checkpoint as dcp

    from bastion.runtime import checkpoint_trust

    state = {f"model.{n}": torch.empty(tuple(tensors[n].size), dtype=tensors[n].properties.dtype) for n in names}
    dcp.load(state, checkpoint_id=str(path), storage_reader=checkpoint_trust.SafeFileSystemReader(path),
             planner=checkpoint_trust.TensorsOnlyLoadPlanner(), no_dist=True)
    return {n: state[f"model.{n}"] for n in names}


def export_hf(checkpoint: Path, spec: ModelSpec, out: Path, tokenizer_files: Sequence[Path] = (),
              max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, dtype: torch.dtype | None = None,
              token_ids: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write `out` as a HF model directory (its architecture: `hf_config.architecture`) from a committed checkpoint: safetensors (sharded with an index above
    `max_shard_bytes`), config.json (with `token_ids`: bos/eos/pad), generation_config.json and the given
    tokenizer files. Written into a
    temporary sibling directory and renamed into place: `out` is complete or absent. Returns what was written."""
    safetensors = _safetensors()
    config = {**hf_config_from_spec(spec), **(token_ids or {})}
    if dtype is not None:
        config["dtype"] = config["torch_dtype"] = str(dtype).removeprefix("torch.")
    tensors = _checkpoint_tensors(checkpoint, spec)
    groups = _shards(tensors, max_shard_bytes, dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    try:
        weight_map: dict[str, str] = {}
        total = 0
        for index, names in enumerate(groups):
            file = hf_files.SINGLE_FILE if len(groups) == 1 else \
                f"model-{index + 1:05d}-of-{len(groups):05d}.safetensors"
            shard = {}
            for name, value in _read_shard(checkpoint, tensors, names).items():
                value = value if dtype is None else value.to(dtype)
                keys = hf_files.hf_names(name, spec.num_experts, architecture(spec))
                pieces = value.unbind(0) if hf_files.is_stacked_experts(name) else (value,)
                for key, piece in zip(keys, pieces, strict=True):
                    shard[key] = piece.contiguous()
                total += value.numel() * value.element_size()
            safetensors.torch.save_file(shard, str(temp / file), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, file))
            del shard
        if len(groups) > 1:
            index_doc = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (temp / hf_files.INDEX_FILE).write_text(json.dumps(index_doc, indent=2, sort_keys=True) + "\n")
        (temp / hf_files.CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (temp / hf_files.GENERATION_CONFIG_FILE).write_text(
            json.dumps(generation_config(config), indent=2, sort_keys=True) + "\n")
        for source in tokenizer_files:
            shutil.copyfile(source, temp / source.name)
        names = {p.name for p in tokenizer_files}
        if "tokenizer.json" in names and "tokenizer_config.json" not in names:  # what AutoTokenizer reads first
            (temp / "tokenizer_config.json").write_text(
                json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}, indent=2) + "\n")
        if out.exists():  # an empty directory (checked by the caller): rename replaces it
            out.rmdir()
        os.rename(temp, out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return {"out": str(out), "files": sorted(set(weight_map.values())), "tensors": len(weight_map),
            "bytes": total, "tokenizer": [p.name for p in tokenizer_files]}


def torch_dtype(name: str) -> torch.dtype:
    """`--dtype float32|bfloat16|float16` as the torch dtype the export writes."""
    return getattr(torch, name)
