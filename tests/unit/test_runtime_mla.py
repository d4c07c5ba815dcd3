"""Multi-head latent attention equals Hugging Face's DeepseekV3Attention (logits of a whole tiny model, fp32),
keeps the spec's parameter count, and splits heads under tensor parallelism."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bastion.runtime.model import LatentAttention, build_model, count_parameters, init_weights
from bastion.specs.model import load_model


def _hf_dense_deepseek(spec):
    """A random HF DeepseekV3ForCausalLM of the spec's shape, every layer dense (first_k_dense_replace), RoPE in
    the rotate-half layout the runtime uses (rope_interleave = False), norms random too."""
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    torch.manual_seed(0)
    config = DeepseekV3Config(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.ffn_hidden_size,
        moe_intermediate_size=spec.expert_width, num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_heads,
        first_k_dense_replace=spec.num_layers, n_routed_experts=8, n_group=1, topk_group=1, num_experts_per_tok=2,
        q_lora_rank=spec.q_lora_rank or None, kv_lora_rank=spec.kv_lora_rank,
        qk_rope_head_dim=spec.qk_rope_head_dim, qk_nope_head_dim=spec.qk_nope_head_dim,
        v_head_dim=spec.v_head_dim, max_position_embeddings=spec.seq_len, rms_norm_eps=spec.norm_eps,
        rope_interleave=False, rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta},
        tie_word_embeddings=False, attn_implementation="eager")
    model = DeepseekV3ForCausalLM(config).eval().float()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.1 * torch.randn_like(param))
    return model


#: runtime name (inside a layer) -> HF name; the runtime keeps torchtitan's names
_LAYER_NAMES = {"attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                "attention.wq": "self_attn.q_proj", "attention.wq_a": "self_attn.q_a_proj",
                "attention.q_norm": "self_attn.q_a_layernorm", "attention.wq_b": "self_attn.q_b_proj",
                "attention.wkv_a": "self_attn.kv_a_proj_with_mqa", "attention.kv_norm": "self_attn.kv_a_layernorm",
                "attention.wkv_b": "self_attn.kv_b_proj", "attention.wo": "self_attn.o_proj",
                "feed_forward.w1": "mlp.gate_proj", "feed_forward.w3": "mlp.up_proj",
                "feed_forward.w2": "mlp.down_proj"}


def _hf_name(name: str) -> str:
    top = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
    if name in top:
        return top[name]
    _, index, rest = name.split(".", 2)
    module, _, leaf = rest.rpartition(".")
    return f"model.layers.{index}.{_LAYER_NAMES[module]}.{leaf}"


@pytest.mark.parametrize("q_lora_rank", [32, 0])
def test_logits_equal_hugging_face_deepseek_v3(q_lora_rank):
    pytest.importorskip("transformers.models.deepseek_v3")
    spec = dataclasses.replace(load_model("tiny-mla"), num_experts=0, top_k=0, num_shared_experts=0,
                               dense_layers=0, aux_loss_coeff=0.0, q_lora_rank=q_lora_rank, norm_eps=1e-6,
                               rope_theta=5000.0)
    hf = _hf_dense_deepseek(spec)
    ours = build_model(spec)
    ours.to_empty(device="cpu")
    init_weights(ours, spec, 0)  # fills the RoPE table; every weight is then HF's
    hf_state = hf.state_dict()
    with torch.no_grad():
        for name, param in ours.named_parameters():
            param.copy_(hf_state[_hf_name(name)])
    assert count_parameters(ours) == spec.total_params() == sum(p.numel() for p in hf.parameters())
    tokens = torch.randint(0, spec.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), hf(tokens).logits, rtol=1e-5, atol=1e-5)


def test_tiny_mla_is_the_spec_and_tensor_parallelism_splits_its_heads():
    from bastion.runtime.parallelize import _head_split_projections

    spec = load_model("tiny-mla")
    model = build_model(spec)
    assert count_parameters(model) == spec.total_params()
    block = model.layers["1"]
    assert isinstance(block.attention, LatentAttention) and block.moe is not None
    assert _head_split_projections(block) == ("wq_b", "wkv_b")
    assert _head_split_projections(build_model(load_model("tiny")).layers["0"]) == ("wq", "wk", "wv")
    assert model.rope.shape[-1] == spec.qk_rope_head_dim
