"""Hugging Face weight files without torch: bastion's parameter names <-> transformers' Llama / Mixtral /
DeepSeek-V3 / Qwen3 / Qwen3-MoE names, the
tensors a spec must have, and the tensor directory of a `model.safetensors` (or a sharded one with its index), read from the
files' headers and checked before any worker starts.

Mixtral's experts are written as published Mixtral checkpoints (and vLLM) hold them, one tensor per expert
(`block_sparse_moe.experts.J.w1.weight`, its w1/w2/w3 being bastion's gate/down/up); bastion keeps each layer's
experts stacked in one (experts, out, in) tensor, so one bastion name maps to `num_experts` HF names, in order.
DeepSeek-V3 and Qwen3-MoE checkpoints hold theirs the same way (`mlp.experts.J.gate_proj/up_proj/down_proj`;
transformers 5 fuses them into one module on load and splits them again on save).

Names: bastion's RoPE is the rotate-half layout (runtime/model.py `rotate_half`, cos/sin tables repeated over both
halves), which is transformers' `LlamaRotaryEmbedding` + `rotate_half` layout, so q/k projections map unpermuted
(Meta's original interleaved checkpoints are the ones that need a permutation; HF weights already carry it).
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from bastion.errors import ConfigError
from bastion.specs.model import ModelSpec

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
#: tokenizer files copied with an export (those present); tokenizer.json is the one `data prepare` reads
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")

_TOP = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight"}
_LAYER = {"attention.wq.weight": "self_attn.q_proj.weight", "attention.wk.weight": "self_attn.k_proj.weight",
          "attention.wv.weight": "self_attn.v_proj.weight", "attention.wo.weight": "self_attn.o_proj.weight",
          "feed_forward.w1.weight": "mlp.gate_proj.weight", "feed_forward.w3.weight": "mlp.up_proj.weight",
          "feed_forward.w2.weight": "mlp.down_proj.weight", "attention_norm.weight": "input_layernorm.weight",
          "ffn_norm.weight": "post_attention_layernorm.weight"}
_QWEN3_LAYER = {"attention.q_norm.weight": "self_attn.q_norm.weight",
                "attention.k_norm.weight": "self_attn.k_norm.weight"}
#: the per-layer names that differ by architecture: Mixtral's MoE block, DeepSeek-V3's MLA, router (with its
#: selection bias) and shared experts, Qwen3's per-head q/k norms and Qwen3-MoE's router (every other name is
#: Llama's)
_ARCH_LAYER = {
    "qwen3": _QWEN3_LAYER,
    "qwen3_moe": {**_QWEN3_LAYER, "moe.router.weight": "mlp.gate.weight"},
    "mixtral": {"moe.router.weight": "block_sparse_moe.gate.weight"},
    "deepseek_v3": {"attention.wq_a.weight": "self_attn.q_a_proj.weight",
                    "attention.q_norm.weight": "self_attn.q_a_layernorm.weight",
                    "attention.wq_b.weight": "self_attn.q_b_proj.weight",
                    "attention.wkv_a.weight": "self_attn.kv_a_proj_with_mqa.weight",
                    "attention.kv_norm.weight": "self_attn.kv_a_layernorm.weight",
                    "attention.wkv_b.weight": "self_attn.kv_b_proj.weight",
                    "moe.router.weight": "mlp.gate.weight",
                    "moe.router.expert_bias": "mlp.gate.e_score_correction_bias",
                    "moe.shared_experts.w1.weight": "mlp.shared_experts.gate_proj.weight",
                    "moe.shared_experts.w3.weight": "mlp.shared_experts.up_proj.weight",
                    "moe.shared_experts.w2.weight": "mlp.shared_experts.down_proj.weight"},
}
_MLP_EXPERTS = {"moe.experts.w1": "mlp.experts.{j}.gate_proj.weight",
                "moe.experts.w2": "mlp.experts.{j}.down_proj.weight",
                "moe.experts.w3": "mlp.experts.{j}.up_proj.weight"}
#: a stacked expert tensor of bastion -> the per-expert HF name pattern ({j}: the expert), per architecture
_EXPERTS = {
    "mixtral": {"moe.experts.w1": "block_sparse_moe.experts.{j}.w1.weight",
                "moe.experts.w2": "block_sparse_moe.experts.{j}.w2.weight",
                "moe.experts.w3": "block_sparse_moe.experts.{j}.w3.weight"},
    "deepseek_v3": _MLP_EXPERTS,
    "qwen3_moe": _MLP_EXPERTS,
}
_LAYER_NAME = re.compile(r"^layers\.(\d+)\.(.+)$")
#: safetensors dtype names -> bytes per element
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def hf_names(name: str, num_experts: int = 0, arch: str = "llama") -> list[str]:
    """transformers' names of a bastion parameter (its canonical, unwrapped name) in architecture `arch` (llama,
    mixtral, deepseek_v3, qwen3, qwen3_moe): one, or for a stacked expert tensor of a `num_experts` mixture one per expert, in expert
    order."""
    if name in _TOP:
        return [_TOP[name]]
    match = _LAYER_NAME.match(name)
    layer = _ARCH_LAYER.get(arch, {})
    if match and match[2] in layer:
        return [f"model.layers.{match[1]}.{layer[match[2]]}"]
    if match and match[2] in _LAYER:
        return [f"model.layers.{match[1]}.{_LAYER[match[2]]}"]
    experts = _EXPERTS.get(arch, {})
    if match and match[2] in experts and num_experts:
        return [f"model.layers.{match[1]}.{experts[match[2]].format(j=j)}" for j in range(num_experts)]
    raise KeyError(f"bastion parameter {name!r} has no Hugging Face {arch} name")


def is_stacked_experts(name: str) -> bool:
    """Whether a bastion parameter holds a layer's experts stacked on dim 0 (one HF tensor per expert)."""
    match = _LAYER_NAME.match(name)
    return bool(match) and match[2] in _EXPERTS["mixtral"]


def _attention_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    h = spec.hidden_size
    if not spec.is_mla:
        norms = ({"attention.q_norm.weight": (spec.head_dim,), "attention.k_norm.weight": (spec.head_dim,)}
                 if spec.qk_norm else {})
        return {"attention.wq.weight": (spec.q_width, h), "attention.wk.weight": (spec.kv_width, h),
                "attention.wv.weight": (spec.kv_width, h), "attention.wo.weight": (h, spec.q_width), **norms}
    heads, q_head = spec.num_heads, spec.qk_nope_head_dim + spec.qk_rope_head_dim
    shapes: dict[str, tuple[int, ...]] = (
        {"attention.wq_a.weight": (spec.q_lora_rank, h), "attention.q_norm.weight": (spec.q_lora_rank,),
         "attention.wq_b.weight": (heads * q_head, spec.q_lora_rank)} if spec.q_lora_rank
        else {"attention.wq.weight": (heads * q_head, h)})
    shapes.update({"attention.wkv_a.weight": (spec.kv_lora_rank + spec.qk_rope_head_dim, h),
                   "attention.kv_norm.weight": (spec.kv_lora_rank,),
                   "attention.wkv_b.weight": (heads * (spec.qk_nope_head_dim + spec.v_head_dim), spec.kv_lora_rank),
                   "attention.wo.weight": (h, spec.v_width)})
    return shapes


def bastion_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every tensor of the spec's model's state (a Llama, a Mixtral, a DeepSeek-V3, a Qwen3 or a Qwen3-MoE:
    parameters, and the router's selection bias) under its canonical name, in the model's order, with its shape."""
    h, f, v = spec.hidden_size, spec.ffn_hidden_size, spec.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"tok_embeddings.weight": (v, h)}
    for i in range(spec.num_layers):
        layer: dict[str, tuple[int, ...]] = {**_attention_shapes(spec), "attention_norm.weight": (h,),
                                             "ffn_norm.weight": (h,)}
        if spec.is_moe_layer(i):
            e, ef = spec.num_experts, spec.expert_width
            layer["moe.router.weight"] = (e, h)
            if spec.router_bias_update_rate:
                layer["moe.router.expert_bias"] = (e,)
            layer.update({"moe.experts.w1": (e, ef, h), "moe.experts.w2": (e, h, ef), "moe.experts.w3": (e, ef, h)})
            if spec.num_shared_experts:
                sf = spec.num_shared_experts * ef
                layer.update({"moe.shared_experts.w1.weight": (sf, h), "moe.shared_experts.w3.weight": (sf, h),
                              "moe.shared_experts.w2.weight": (h, sf)})
        else:
            layer.update({"feed_forward.w1.weight": (f, h), "feed_forward.w3.weight": (f, h),
                          "feed_forward.w2.weight": (h, f)})
        shapes.update({f"layers.{i}.{k}": s for k, s in layer.items()})
    shapes["norm.weight"] = (h,)
    if not spec.tied_embeddings:
        shapes["output.weight"] = (v, h)
    return shapes


def expected_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name of the spec's architecture and its shape, in the model's order."""
    from bastion.interop.hf_config import architecture

    arch = architecture(spec)
    out: dict[str, tuple[int, ...]] = {}
    for name, shape in bastion_shapes(spec).items():
        names = hf_names(name, spec.num_experts, arch)
        out.update(dict.fromkeys(names, shape[1:] if is_stacked_experts(name) else shape))
    return out


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file, as its header describes it."""

    file: str
    dtype: str
    shape: tuple[int, ...]


def require_safetensors() -> None:
    """A guidance error when the optional `safetensors` package is missing (checked before any worker starts)."""
    try:
        import safetensors  # noqa: F401  (torch-free: the Rust reader only)
    except ImportError as exc:
        raise ConfigError("Hugging Face weights need the `safetensors` package, which is not installed.",
                          fix="install the optional interop dependencies: pip install 'bastion[interop]'.") \
            from exc


def _bad(path: Path, why: str) -> ConfigError:
    return ConfigError(f"{path} is not a readable safetensors file: {why}.",
                       fix="re-download or re-export the weights (the file is truncated or corrupt).")


def read_header(path: Path) -> dict[str, TensorEntry]:
    """The tensors of one safetensors file, checked against the file's size (a truncated file is refused)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _bad(path, "shorter than a header")
            (length,) = struct.unpack("<Q", prefix)
            if length > size - 8 or length > 100_000_000:
                raise _bad(path, f"its header claims {length} bytes, the file has {size}")
            header = json.loads(f.read(length))
    except OSError as exc:
        raise ConfigError(f"Cannot read {path}: {exc.strerror or exc}.", fix="check the path and permissions.") \
            from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad(path, "its header is not JSON") from exc
    if not isinstance(header, dict):
        raise _bad(path, "its header is not a table of tensors")
    data_bytes = size - 8 - length
    entries: dict[str, TensorEntry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
            numel = 1
            for d in shape:
                numel *= d
            expected = numel * _DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError) as exc:
            raise _bad(path, f"tensor {name!r} has a malformed entry") from exc
        if not (0 <= start <= end <= data_bytes and end - start == expected):
            raise _bad(path, f"tensor {name!r} lies outside the file or has the wrong byte count")
        entries[name] = TensorEntry(path.name, dtype, shape)
    return entries


def weight_files(hf_dir: Path) -> list[Path]:
    """The safetensors files of a HF model directory (the index's shards, or model.safetensors)."""
    index = hf_dir / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{index} is not a safetensors index (no weight_map): {exc}.",
                              fix="re-download or re-export the weights.") from exc
        bad = [n for n in names if not isinstance(n, str) or "/" in n or n in ("", ".", "..")]
        if bad:
            raise ConfigError(f"{index} points at {bad[0]!r}, outside the model directory.",
                              fix="use an index whose shards are files of the directory itself.")
        return [hf_dir / n for n in names]
    if (hf_dir / SINGLE_FILE).is_file():
        return [hf_dir / SINGLE_FILE]
    if list(hf_dir.glob("*.bin")) or list(hf_dir.glob("*.pt")):
        raise ConfigError(f"{hf_dir} holds PyTorch pickle weights (.bin/.pt), not safetensors.",
                          fix="convert them to safetensors (transformers: model.save_pretrained(dir, "
                              "safe_serialization=True)); bastion never unpickles weights.")
    raise ConfigError(f"{hf_dir} has no {SINGLE_FILE} or {INDEX_FILE}.",
                      fix="point --init-from at a Hugging Face model directory (config.json + safetensors).")


def tensor_directory(hf_dir: Path) -> dict[str, TensorEntry]:
    """Every tensor of a HF model directory and where it lies, from the safetensors headers."""
    entries: dict[str, TensorEntry] = {}
    for path in weight_files(hf_dir):
        if not path.is_file():
            raise ConfigError(f"{path} is missing (named by {INDEX_FILE}).", fix="download every shard.")
        entries.update(read_header(path))
    return entries


def check_weights_match(hf_dir: Path, spec: ModelSpec) -> dict[str, TensorEntry]:
    """The directory's tensors cover the spec's Llama with the right shapes and float types; else a ConfigError
    naming the first difference. Returns the directory (HF name -> entry)."""
    entries = tensor_directory(hf_dir)
    for name, shape in expected_shapes(spec).items():
        entry = entries.get(name)
        if entry is None:
            raise ConfigError(f"{hf_dir} has no tensor {name}, which model '{spec.name}' needs.",
                              fix="use weights saved for this config (config.json and the safetensors files of "
                                  "one model).")
        if entry.shape != shape:
            raise ConfigError(f"{hf_dir}: {name} has shape {list(entry.shape)}, model '{spec.name}' needs "
                              f"{list(shape)}.", fix="the weights do not belong to this config; use the "
                                                     "config.json saved with them.")
        if entry.dtype not in _FLOAT_DTYPES:
            raise ConfigError(f"{hf_dir}: {name} is {entry.dtype}, not a float tensor.",
                              fix="use unquantised weights (F32, BF16 or F16).")
    return entries


def check_init_from(hf_dir: Path, spec: ModelSpec) -> None:
    """`--init-from HF_DIR` can initialise `spec`: its config describes the same model (sequence length aside)
    and its safetensors hold every tensor with the right shape. Reads headers only."""
    from dataclasses import asdict

    from bastion.interop.hf_config import spec_from_hf_config
    from bastion.specs._files import read_mapping

    if not hf_dir.is_dir():
        raise ConfigError(f"--init-from {hf_dir} is not a directory.",
                          fix="give a Hugging Face model directory (config.json + model.safetensors).")
    if not (hf_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"--init-from {hf_dir} has no {CONFIG_FILE}.",
                          fix="give the directory `save_pretrained` wrote (it holds config.json).")
    theirs = spec_from_hf_config(read_mapping(hf_dir / CONFIG_FILE), str(hf_dir / CONFIG_FILE))
    ignore = ("name", "source", "seq_len")
    mine, other = asdict(spec), asdict(theirs)
    differences = [k for k in mine if k not in ignore and mine[k] != other[k]]
    if differences:
        shown = ", ".join(f"{k} {mine[k]} vs {other[k]}" for k in differences[:4])
        raise ConfigError(f"--init-from {hf_dir} holds another model than --model builds ({shown}).",
                          fix=f"train with --model {hf_dir / CONFIG_FILE} (the config saved with the weights).")
    check_weights_match(hf_dir, spec)
    require_safetensors()
