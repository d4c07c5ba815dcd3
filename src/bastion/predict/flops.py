"""FLOP counts of a decoder-only transformer, per token, and the model-FLOPs convention MFU is reported in.

Convention for MFU (stated in every estimate): model FLOPs per token = 6·N + 6·L·h_q·s, where N is the matrix
parameters a token passes through (all layers + the LM head, no embedding lookups) and the attention term counts
the score and value products a causal decoder needs: each token attends to the tokens before it, half of the s×s
products (NeMo's flops formulas, `causal_self_attn`). PaLM's 12·L·h_q·s counts the masked half as well, work that
a flash kernel skips and no device performs: with it, a long-sequence estimate (attention-bound, the kernel at
~60-80% of the peak on half the products) reported an MFU above 100%. Divided by the dense peak of the plan's
precision. HFU adds the recomputed forward passes (also causal).
"""

from __future__ import annotations

from bastion.specs.model import ModelSpec


def attention_matmul_params(model: ModelSpec) -> int:
    """Weight-matrix parameters of one layer's attention projections. MLA: the query down/up projections (or the
    one query projection), the joint key/value down-projection to the latent and the shared rotary key, the
    per-head key/value up-projection and the output projection (its two latent RMSNorms are not matmuls)."""
    h = model.hidden_size
    if model.is_mla:
        norms = model.q_lora_rank + model.kv_lora_rank
        return model.mla_params_per_layer() - norms
    return h * model.q_width + 2 * h * model.kv_width + model.q_width * h


def layer_matmul_params(model: ModelSpec, moe: bool | None = None) -> int:
    """Weight-matrix parameters of one layer a token passes through (no norms, no biases, no router); `moe`: a
    layer with experts (default: when the model has them) or one of an MoE model's dense layers."""
    h = model.hidden_size
    moe = bool(model.num_experts) if moe is None else moe
    if moe:
        ffn, experts = model.expert_width, model.top_k + model.num_shared_experts
    else:
        ffn, experts = model.ffn_hidden_size, 1
    return attention_matmul_params(model) + experts * model.ffn_matrices * h * ffn


def layers_matmul_params(model: ModelSpec) -> int:
    """layer_matmul_params summed over every layer (an MoE model's dense layers with their dense MLP)."""
    moe_layers = model.num_moe_layers if model.num_experts else model.num_layers
    return (moe_layers * layer_matmul_params(model)
            + (model.num_layers - moe_layers) * layer_matmul_params(model, moe=False))


def layer_gemm_flops_per_token(model: ModelSpec) -> float:
    """Forward GEMM FLOPs of one layer per token (2 per multiply-add)."""
    return 2.0 * layer_matmul_params(model)


def attention_flops_per_token(model: ModelSpec, seq_len: int, causal: bool) -> float:
    """Forward FLOPs of QKᵀ (query/key head width) and (softmax)·V (value head width) per token of one layer;
    a causal kernel that skips masked blocks (flash attention) does half. MLA: heads of 192 for QKᵀ, 128 for V."""
    full = 2.0 * seq_len * (model.q_width + model.v_width)
    return full / 2 if causal else full


def head_flops_per_token(model: ModelSpec) -> float:
    """Forward FLOPs of the LM head (logits) per token."""
    return 2.0 * model.vocab_size * model.hidden_size


def model_flops_per_token(model: ModelSpec, seq_len: int) -> float:
    """Training FLOPs per token of a causal decoder: 6·N_matmul + 6·L·h_q·s (forward + backward = 3 forwards, no
    recompute; the attention of a token covers the tokens before it)."""
    n_matmul = layers_matmul_params(model) + model.vocab_size * model.hidden_size
    return 6.0 * n_matmul + 3.0 * model.num_layers * attention_flops_per_token(model, seq_len, causal=True)


def every_second_matmul_params(model: ModelSpec) -> int:
    """Weights of the matmuls op-level selective checkpointing recomputes: the 2nd, 4th and 6th of a block in
    forward order (wq, wk, wv, wo, w1, w3, w2): wk, wo and, with a gated MLP, w3 (fc2 for a GELU MLP)."""
    h, ffn = model.hidden_size, model.expert_width
    experts = model.top_k + model.num_shared_experts if model.num_experts else 1
    return h * model.kv_width + model.q_width * h + experts * ffn * h


def recompute_flops_per_token(model: ModelSpec, seq_len: int, recompute: str,
                              selective: str = "attention-core") -> float:
    """Extra FLOPs per token spent recomputing forward passes (model-FLOPs convention, causal attention);
    `selective` is what the software's selective mode re-runs (PredictOptions.selective_recompute)."""
    attention = attention_flops_per_token(model, seq_len, causal=True)
    if recompute == "full":
        return 2.0 * layers_matmul_params(model) + model.num_layers * attention
    if recompute == "selective":
        if selective == "every-second-matmul":
            return model.num_layers * 2.0 * every_second_matmul_params(model)
        return model.num_layers * attention
    return 0.0
