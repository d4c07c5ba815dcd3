"""Tiny random `transformers` Llama, Mixtral, DeepSeek-V3, Qwen3 and Qwen3-MoE models built locally (no network),
for the Hugging Face interop tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: a small Llama with GQA, a non-default RoPE base and norm epsilon, so each mapped setting matters
TINY_LLAMA = {"vocab_size": 96, "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 48, "max_position_embeddings": 32,
              "rms_norm_eps": 1e-6, "rope_parameters": {"rope_type": "default", "rope_theta": 5000.0}}


#: a small Mixtral: 4 experts, top-2, on TINY_LLAMA's attention
TINY_MIXTRAL = {**TINY_LLAMA, "num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": None,
                "router_aux_loss_coef": 0.01}


#: a small Qwen3: TINY_LLAMA's shape with a head_dim (16) other than hidden_size / heads (8), as Qwen3 allows
TINY_QWEN3 = {**TINY_LLAMA, "head_dim": 16}


#: a small Qwen3-MoE: 4 experts of width 16, top-2 renormalised, the first layer dense (mlp_only_layers)
TINY_QWEN3_MOE = {**TINY_QWEN3, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
                  "norm_topk_prob": True, "mlp_only_layers": [0], "decoder_sparse_step": 1,
                  "router_aux_loss_coef": 0.01}


#: a small DeepSeek-V3: MLA with both latents, first layer dense, 8 routed experts (top-2) and one shared expert,
#: one expert group, RoPE in the rotate-half layout
TINY_DEEPSEEK = {"vocab_size": 96, "hidden_size": 32, "intermediate_size": 64, "moe_intermediate_size": 16,
                 "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4,
                 "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 1, "first_k_dense_replace": 1,
                 "n_group": 1, "topk_group": 1, "routed_scaling_factor": 1.0, "norm_topk_prob": True,
                 "q_lora_rank": 16, "kv_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 16,
                 "v_head_dim": 16, "max_position_embeddings": 32, "rms_norm_eps": 1e-6, "rope_interleave": False,
                 "rope_parameters": {"rope_type": "default", "rope_theta": 5000.0}, "attn_implementation": "eager"}


def make_deepseek(directory: Path, seed: int = 0, **overrides: Any):
    """A random DeepseekV3ForCausalLM (its routers' selection bias random too) saved into `directory`."""
    import torch
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    config = DeepseekV3Config(**{**TINY_DEEPSEEK, **overrides})
    torch.manual_seed(seed)
    model = DeepseekV3ForCausalLM(config).eval().float()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.1 * torch.randn_like(param))
            elif name.endswith("gate.weight"):  # transformers starts routers at zero: no routing to compare
                param.copy_(0.2 * torch.randn_like(param))
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.copy_(0.05 * torch.randn_like(buffer))
    model.save_pretrained(directory)
    return model


def make_llama(directory: Path, seed: int = 0, **overrides: Any):
    """A random LlamaForCausalLM (norm weights random too) saved with `save_pretrained` into `directory`;
    returns the model in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return _make(LlamaConfig(**{**TINY_LLAMA, **overrides}), LlamaForCausalLM, directory, seed)


def make_mixtral(directory: Path, seed: int = 0, **overrides: Any):
    """A random MixtralForCausalLM saved into `directory` (as make_llama)."""
    from transformers import MixtralConfig, MixtralForCausalLM

    return _make(MixtralConfig(**{**TINY_MIXTRAL, **overrides}), MixtralForCausalLM, directory, seed)


def make_qwen3(directory: Path, seed: int = 0, **overrides: Any):
    """A random Qwen3ForCausalLM (its per-head q/k norm weights random too) saved into `directory`."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return _make(Qwen3Config(**{**TINY_QWEN3, **overrides}), Qwen3ForCausalLM, directory, seed)


def make_qwen3_moe(directory: Path, seed: int = 0, **overrides: Any):
    """A random Qwen3MoeForCausalLM saved into `directory`."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    return _make(Qwen3MoeConfig(**{**TINY_QWEN3_MOE, **overrides}), Qwen3MoeForCausalLM, directory, seed)


def _make(config: Any, model_class: Any, directory: Path, seed: int):
    import torch

    torch.manual_seed(seed)
    model = model_class(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.1 * torch.randn_like(param))
            elif name.endswith("mlp.gate.weight"):  # Qwen3-MoE's routers start at zero: no routing to compare
                param.copy_(0.2 * torch.randn_like(param))
    model.save_pretrained(directory)
    return model


def hf_logits(directory: Path, tokens):
    """Logits of the model `transformers` loads from `directory` (fp32)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(tokens).logits


def tokens_for(vocab_size: int, batch: int = 2, seq: int = 24, seed: int = 1):
    import torch

    return torch.randint(0, vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))
