"""A Hugging Face `config.json` <-> a ModelSpec, for the architectures bastion's runtime builds: Llama, Mixtral,
DeepSeek-V3, Qwen3 and Qwen3-MoE.

Bastion's dense decoder (runtime/model.py) is Llama's: RMSNorm, SwiGLU MLP (SiLU gate), rotate-half RoPE with
plain frequencies, GQA, no biases, optionally tied embeddings. Its mixture of experts (runtime/moe.py) with a
softmax router, top-k weights renormalised, no shared experts and every layer routed is Mixtral's block
(MixtralSparseMoeBlock). With multi-head latent attention, a sigmoid router whose bias steers the choice only,
shared experts and leading dense layers it is DeepSeek-V3's (DeepseekV3ForCausalLM with one expert group and a
routed scaling factor of 1, RoPE in the rotate-half layout: `rope_interleave = false`). With per-head q/k
RMSNorms (`qk_norm`) the dense decoder is Qwen3's (Qwen3ForCausalLM) and the mixture Qwen3-MoE's
(Qwen3MoeForCausalLM: softmax router, top-k renormalised or not, no shared experts, leading dense layers as
`mlp_only_layers` = 0..k-1, every k-th layer routed as `decoder_sparse_step`). A config asking for
anything else (another architecture, biases, RoPE scaling, sliding
windows, another activation, dropout) is refused with what to change, never imported with a silently different
model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bastion.errors import ConfigError
from bastion.specs.model import ModelSpec

#: the `model_type`s (and their `architectures` class) bastion maps
SUPPORTED = {"llama": "LlamaForCausalLM", "mixtral": "MixtralForCausalLM", "deepseek_v3": "DeepseekV3ForCausalLM",
             "qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}
#: the architectures whose attention normalises every query and key head (ModelSpec.qk_norm)
QK_NORM = ("qwen3", "qwen3_moe")
_REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
_LLAMA_DEFAULT_SEQ = 2048


def is_hf_config(data: dict[str, Any]) -> bool:
    """Whether a JSON mapping is a Hugging Face model config rather than a bastion model file."""
    return "model_type" in data or "architectures" in data


def _rope(data: dict[str, Any], what: str) -> float:
    """The RoPE base of a transformers 5 (`rope_parameters`) or 4.x (`rope_theta`, `rope_scaling`) config."""
    params = data.get("rope_parameters") or {}
    scaling = data.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise ConfigError(f"{what} uses RoPE scaling '{kind}'; bastion's runtime implements plain RoPE only.",
                          fix="use a model without rope_scaling (rope_type 'default'), e.g. a Llama 2 or a "
                              "config you write yourself.")
    return float(params.get("rope_theta", data.get("rope_theta", 10000.0)))


def _refuse_unsupported(data: dict[str, Any], what: str) -> None:
    model_type = data.get("model_type")
    architectures = data.get("architectures") or []
    if model_type not in SUPPORTED:
        raise ConfigError(f"{what} is a '{model_type}' model ({', '.join(architectures) or 'no architectures'}); "
                          f"bastion imports {', '.join(sorted(SUPPORTED))} configs only.",
                          fix="give a Llama-style config (model_type \"llama\", LlamaForCausalLM), or a bastion "
                              "model file (see `bastion models`).")
    wrong = [a for a in architectures if a != SUPPORTED[model_type]]
    if wrong:
        raise ConfigError(f"{what} names architecture {wrong[0]}; bastion builds {SUPPORTED[model_type]} only.",
                          fix=f"use a {SUPPORTED[model_type]} checkpoint.")
    settings = {"hidden_act": ("silu", data.get("hidden_act", "silu")),
                "attention_bias": (False, bool(data.get("attention_bias", False))),
                "mlp_bias": (False, bool(data.get("mlp_bias", False))),
                "attention_dropout": (0.0, float(data.get("attention_dropout", 0.0) or 0.0))}
    if model_type == "mixtral":
        settings.update({"sliding_window": (None, data.get("sliding_window")),
                         "router_jitter_noise": (0.0, float(data.get("router_jitter_noise", 0.0) or 0.0))})
    if model_type == "deepseek_v3":
        groups = int(data.get("n_group", 1) or 1)
        settings.update({"rope_interleave": (False, bool(data.get("rope_interleave", True))),
                         "routed_scaling_factor": (1.0, float(data.get("routed_scaling_factor", 1.0))),
                         "topk_group": (groups, int(data.get("topk_group", groups) or groups)),
                         "topk_method": ("noaux_tc", data.get("topk_method", "noaux_tc"))})
    if model_type in QK_NORM:
        # transformers builds sliding-window layers only with use_sliding_window; layer_types names each layer
        sliding = [t for t in data.get("layer_types") or [] if t != "full_attention"]
        settings.update({"use_sliding_window": (False, bool(data.get("use_sliding_window", False))),
                         "layer_types": ("full_attention only", sliding[0] if sliding else "full_attention only")})
    if model_type == "qwen3_moe" and _leading_dense_layers(data, what) is None:
        raise ConfigError(f"{what} sets mlp_only_layers = {data['mlp_only_layers']}; bastion keeps a dense MLP only "
                          f"in the first k layers (mlp_only_layers = [0, ..., k-1]) or every decoder_sparse_step-th "
                          f"layer routed.", fix="use a model whose dense layers lead the stack.")
    for name, (supported, value) in settings.items():
        if value != supported:
            raise ConfigError(f"{what} sets {name} = {value!r}; bastion's runtime supports {supported!r} "
                              f"only.", fix=f"use a model with {name} = {supported!r}.")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ConfigError(f"{what} is missing {', '.join(missing)}.",
                          fix=f"a Llama config needs {', '.join(_REQUIRED)}.")
    if model_type == "mixtral" and not (data.get("num_local_experts") and data.get("num_experts_per_tok")):
        raise ConfigError(f"{what} is a Mixtral config without num_local_experts / num_experts_per_tok.",
                          fix="use the config.json saved with the Mixtral weights.")
    if model_type == "qwen3_moe" and not (_qwen3_experts(data) and data.get("num_experts_per_tok")
                                          and data.get("moe_intermediate_size")):
        raise ConfigError(f"{what} is a Qwen3-MoE config without num_experts / num_experts_per_tok / "
                          f"moe_intermediate_size.", fix="use the config.json saved with the Qwen3-MoE weights.")


def _qwen3_experts(data: dict[str, Any]) -> int:
    # published configs write num_experts; transformers 5 saves it under its attribute name num_local_experts
    return int(data.get("num_experts") or data.get("num_local_experts") or 0)


def _leading_dense_layers(data: dict[str, Any], what: str) -> int | None:
    """The k of a Qwen3-MoE whose `mlp_only_layers` are the first k layers (bastion's dense_layers); None when they
    are any other set."""
    layers = data.get("mlp_only_layers") or []
    if not isinstance(layers, list) or not all(isinstance(i, int) for i in layers):
        raise ConfigError(f"{what}: mlp_only_layers must be a list of layer indices, got {layers!r}.",
                          fix="use the config.json saved with the weights.")
    return len(layers) if sorted(layers) == list(range(len(layers))) else None


def spec_from_hf_config(data: dict[str, Any], what: str, name: str | None = None) -> ModelSpec:
    """The ModelSpec of a Hugging Face config of a SUPPORTED architecture (a ConfigError with guidance for anything
    else)."""
    _refuse_unsupported(data, what)
    try:
        heads = int(data["num_attention_heads"])
        head_dim = data.get("head_dim") or int(data["hidden_size"]) // heads
        moe: dict[str, Any] = {}
        if data.get("model_type") == "deepseek_v3":
            heads_kv = heads
            head_dim = int(data["qk_nope_head_dim"]) + int(data["qk_rope_head_dim"])
            moe = dict(num_experts=int(data["n_routed_experts"]), top_k=int(data["num_experts_per_tok"]),
                       moe_ffn_hidden_size=int(data["moe_intermediate_size"]),
                       num_shared_experts=int(data.get("n_shared_experts") or 0),
                       dense_layers=int(data.get("first_k_dense_replace") or 0), router="sigmoid",
                       router_norm_topk=bool(data.get("norm_topk_prob", True)),
                       router_bias_update_rate=float(data.get("bastion_router_bias_update_rate", 0.001)),
                       q_lora_rank=int(data.get("q_lora_rank") or 0), kv_lora_rank=int(data["kv_lora_rank"]),
                       qk_rope_head_dim=int(data["qk_rope_head_dim"]),
                       qk_nope_head_dim=int(data["qk_nope_head_dim"]), v_head_dim=int(data["v_head_dim"]),
                       num_kv_heads=heads_kv)
        if data.get("model_type") == "qwen3_moe":
            moe = dict(num_experts=_qwen3_experts(data), top_k=int(data["num_experts_per_tok"]),
                       moe_ffn_hidden_size=int(data["moe_intermediate_size"]), router="softmax",
                       # transformers' default is false; the published Qwen3-MoE configs set true
                       router_norm_topk=bool(data.get("norm_topk_prob", False)),
                       dense_layers=_leading_dense_layers(data, what) or 0,
                       moe_layer_freq=int(data.get("decoder_sparse_step") or 1),
                       aux_loss_coeff=float(data.get("router_aux_loss_coef", 0.0) or 0.0))
        if data.get("model_type") == "mixtral":
            moe = dict(num_experts=int(data["num_local_experts"]), top_k=int(data["num_experts_per_tok"]),
                       moe_ffn_hidden_size=int(data["intermediate_size"]), router="softmax", router_norm_topk=True,
                       aux_loss_coeff=float(data.get("router_aux_loss_coef", 0.0) or 0.0))
        return ModelSpec(**moe,
            name=name or Path(what).parent.name or what, num_layers=int(data["num_hidden_layers"]),
            hidden_size=int(data["hidden_size"]), num_heads=heads, ffn_hidden_size=int(data["intermediate_size"]),
            vocab_size=int(data["vocab_size"]), seq_len=int(data.get("max_position_embeddings") or
                                                            _LLAMA_DEFAULT_SEQ),
            **({} if "num_kv_heads" in moe else {"num_kv_heads": int(data.get("num_key_value_heads") or heads)}),
            head_dim=int(head_dim), ffn_type="swiglu",
            tied_embeddings=bool(data.get("tie_word_embeddings", False)), position_embedding="rope", bias=False,
            norm_eps=float(data.get("rms_norm_eps", 1e-6)), rope_theta=_rope(data, what),
            qk_norm=data.get("model_type") in QK_NORM, source=f"hf:{what}")
    except KeyError as exc:
        raise ConfigError(f"{what} is missing {exc.args[0]}.",
                          fix="use the config.json saved with the weights.") from exc
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise ConfigError(f"{what} holds a value of the wrong type: {exc}.",
                          fix="give integer sizes and numeric rms_norm_eps / rope_theta.") from exc


def architecture(spec: ModelSpec) -> str:
    """The `model_type` a spec exports as: deepseek_v3 (MLA); with per-head q/k norms qwen3 (dense) or qwen3_moe;
    else llama (dense) or mixtral (MoE)."""
    if spec.is_mla:
        return "deepseek_v3"
    if spec.qk_norm:
        return "qwen3_moe" if spec.num_experts else "qwen3"
    return "mixtral" if spec.num_experts else "llama"


def check_exportable(spec: ModelSpec) -> None:
    """The spec is one `spec_from_hf_config` could have made (a Llama or a Mixtral); else a ConfigError."""
    reasons = []
    if spec.ffn_type != "swiglu":
        reasons.append(f"ffn_type '{spec.ffn_type}' (Llama is swiglu)")
    if spec.position_embedding != "rope":
        reasons.append(f"position_embedding '{spec.position_embedding}' (Llama is rope)")
    if spec.bias:
        reasons.append("biases and LayerNorm (Llama has neither)")
    if architecture(spec) == "deepseek_v3":
        deepseek = {"experts (a dense MLA model)": spec.num_experts > 0, "shared experts": spec.num_shared_experts > 0,
                    "a softmax router": spec.router == "sigmoid", "MoE only every k-th layer": spec.moe_layer_freq == 1,
                    "a capacity limit": spec.capacity_factor == 0}
        reasons += [f"no {what} (DeepSeek-V3 has them)" if what in ("experts (a dense MLA model)", "shared experts")
                    else f"{what} (DeepSeek-V3 has none)" for what, ok in deepseek.items() if not ok]
    elif architecture(spec) == "qwen3_moe":
        qwen = {"shared experts": spec.num_shared_experts == 0, "a sigmoid router": spec.router == "softmax",
                "a router bias": spec.router_bias_update_rate == 0, "a capacity limit": spec.capacity_factor == 0}
        reasons += [f"{what} (Qwen3-MoE has none)" for what, ok in qwen.items() if not ok]
    elif spec.num_experts:
        mixtral = {"shared experts": spec.num_shared_experts == 0, "leading dense layers": spec.dense_layers == 0,
                   "MoE only every k-th layer": spec.moe_layer_freq == 1, "a sigmoid router": spec.router == "softmax",
                   "top-k weights not renormalised": spec.router_norm_topk,
                   "a router bias": spec.router_bias_update_rate == 0, "a capacity limit": spec.capacity_factor == 0,
                   "an expert width other than ffn_hidden_size": spec.expert_width == spec.ffn_hidden_size}
        reasons += [f"{what} (Mixtral has none)" for what, ok in mixtral.items() if not ok]
    if reasons:
        raise ConfigError(f"model '{spec.name}' has no Hugging Face Llama, Mixtral, DeepSeek-V3, Qwen3 or "
                          f"Qwen3-MoE equivalent: {'; '.join(reasons)}.",
                          fix="export a Llama-style model (swiglu, rope, no bias, dense), e.g. the llama presets, or "
                              "a Mixtral-style mixture of experts (softmax top-k router, no shared experts, every "
                              "layer routed), or a Qwen3 one (qk_norm = true).")


def hf_config_from_spec(spec: ModelSpec) -> dict[str, Any]:
    """config.json for the spec's architecture (`architecture`; fp32 weights), readable by transformers 4.x and
    5.x."""
    check_exportable(spec)
    kind = architecture(spec)
    moe: dict[str, Any] = {}
    if kind == "deepseek_v3":
        moe = {"n_routed_experts": spec.num_experts, "num_experts_per_tok": spec.top_k,
               "moe_intermediate_size": spec.expert_width, "n_shared_experts": spec.num_shared_experts,
               "first_k_dense_replace": spec.dense_layers, "norm_topk_prob": spec.router_norm_topk,
               "n_group": 1, "topk_group": 1, "routed_scaling_factor": 1.0, "topk_method": "noaux_tc",
               "q_lora_rank": spec.q_lora_rank or None, "kv_lora_rank": spec.kv_lora_rank,
               "qk_rope_head_dim": spec.qk_rope_head_dim, "qk_nope_head_dim": spec.qk_nope_head_dim,
               "v_head_dim": spec.v_head_dim, "rope_interleave": False,
               # the bias update's speed is a training setting transformers ignores; kept for a re-import
               "bastion_router_bias_update_rate": spec.router_bias_update_rate}
    if kind == "mixtral":
        moe = {"num_local_experts": spec.num_experts, "num_experts_per_tok": spec.top_k,
               "router_aux_loss_coef": spec.aux_loss_coeff, "output_router_logits": False, "sliding_window": None,
               "router_jitter_noise": 0.0}
    if kind in QK_NORM:
        moe = {"use_sliding_window": False, "sliding_window": None, "max_window_layers": spec.num_layers}
    if kind == "qwen3_moe":
        moe.update({"num_experts": spec.num_experts, "num_experts_per_tok": spec.top_k,
                    "moe_intermediate_size": spec.expert_width, "norm_topk_prob": spec.router_norm_topk,
                    "mlp_only_layers": list(range(spec.dense_layers)), "decoder_sparse_step": spec.moe_layer_freq,
                    "router_aux_loss_coef": spec.aux_loss_coeff, "output_router_logits": False})
    return {
        **moe, "architectures": [SUPPORTED[kind]], "model_type": kind,
        "vocab_size": spec.vocab_size, "hidden_size": spec.hidden_size, "intermediate_size": spec.ffn_hidden_size,
        "num_hidden_layers": spec.num_layers, "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads, "hidden_act": "silu",
        # DeepSeek-V3's head_dim is the rotary width (its RoPE table is built from it)
        "head_dim": spec.qk_rope_head_dim if kind == "deepseek_v3" else spec.head_dim,
        "max_position_embeddings": spec.seq_len, "rms_norm_eps": spec.norm_eps,
        # 5.x reads rope_parameters, 4.x rope_theta / rope_scaling
        "rope_parameters": {"rope_type": "default", "rope_theta": spec.rope_theta}, "rope_theta": spec.rope_theta,
        "rope_scaling": None, "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
        "tie_word_embeddings": spec.tied_embeddings, "initializer_range": 0.02, "use_cache": True,
        "dtype": "float32", "torch_dtype": "float32",
    }


#: the special-token ids a config carries (bastion's spec does not: they belong to the tokenizer)
TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def token_ids(config: dict[str, Any]) -> dict[str, Any]:
    """The special-token ids a HF config sets (to carry from an --init-from model into its export)."""
    return {key: config[key] for key in TOKEN_ID_KEYS if config.get(key) is not None}


def generation_config(config: dict[str, Any]) -> dict[str, Any]:
    """generation_config.json: the token ids generation needs, as the model config gives them."""
    return {"_from_model_config": True, **token_ids(config)}
