"""Measured vs predicted memory on CPU, single process: model states exactly, activations within 10%.

Activations are measured as the bytes autograd keeps for backward over one micro-batch (saved-tensor hooks,
deduplicated by storage, parameters left out).
"""

from __future__ import annotations

import pytest
import torch

from bastion.predict import estimate
from bastion.predict.memory import activation_bytes_per_token, loss_saved_bytes_per_token
from bastion.runtime.metrics import SavedActivationProbe, model_state_bytes_measured
from bastion.runtime.model import build_model, init_weights
from bastion.runtime.parallelize import cross_entropy_loss
from bastion.specs.hardware import load_cluster
from bastion.specs.model import load_model
from bastion.specs.plan import ParallelPlan


def _materialised(spec):
    model = build_model(spec)
    model.to_empty(device="cpu")
    init_weights(model, spec, 0)
    return model


def _saved_bytes(model, spec, micro_batch):
    """Saved-for-backward bytes of one micro-batch's forward, and the loss to run backward from."""
    tokens = torch.randint(0, spec.vocab_size, (micro_batch, spec.seq_len + 1))
    probe = SavedActivationProbe()
    with probe.hooks():
        loss = cross_entropy_loss(model(tokens[:, :-1]), tokens[:, 1:])
    return probe.activation_bytes(model.parameters()), loss


def _estimate(spec, micro_batch):
    plan = ParallelPlan(micro_batch=micro_batch, global_batch=micro_batch, precision="fp32")
    return estimate(spec, load_cluster("cpu:1"), plan)


@pytest.mark.parametrize(("name", "micro_batch"), [("tiny", 1), ("tiny", 4), ("small", 1)])
def test_activation_bytes_match_the_predictor(name, micro_batch):
    spec = load_model(name)
    est = _estimate(spec, micro_batch)
    saved, _ = _saved_bytes(_materialised(spec), spec, micro_batch)
    # the criterion: the predicted activations and logits (the latter a peak that also counts the
    # logits and their gradient at the loss) against what the step keeps
    predicted = est.memory.activations + est.memory.logits
    assert abs(saved / predicted - 1) < 0.10, f"measured {saved} vs predicted {predicted}"
    # saved tensors alone: the layers, the head and the loss's log-softmax output; what is left is the RoPE
    # table and the token ids (well under 1%)
    tokens = micro_batch * spec.seq_len
    predicted_saved = est.memory.activations + tokens * loss_saved_bytes_per_token(spec, 1, "fp32")
    assert saved >= predicted_saved
    assert saved / predicted_saved - 1 < 0.01, f"measured {saved} vs predicted saved {predicted_saved}"


def test_tiny_model_state_bytes_equal_the_predictor():
    spec = load_model("tiny")
    model = _materialised(spec)
    _, loss = _saved_bytes(model, spec, 2)
    loss.backward()
    optimizer = torch.optim.AdamW(model.parameters())
    optimizer.step()
    est = _estimate(spec, 2)
    states = model_state_bytes_measured(list(model.parameters()), optimizer)
    assert states == {"params": est.memory.params, "grads": est.memory.grads, "optimizer": est.memory.optimizer}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", ["tiny", "small"])
def test_one_layer_saves_exactly_the_enumerated_tensors(name, precision):
    # CPU eager: composite RMSNorm (keeps an fp32 copy of its input, 1/rms and the fp32 x·(1/rms)), flash SDPA
    # (q, k, v, output = wo's input, fp32 log-sum-exp), SwiGLU's four ffn-wide tensors
    spec = load_model(name)
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    model = _materialised(spec).to(dtype)
    x = torch.randn(2, spec.seq_len, spec.hidden_size, dtype=dtype, requires_grad=True)
    probe = SavedActivationProbe()
    with probe.hooks():
        model.layers["0"](x, model.rope)
    # the RoPE table is a buffer shared by every layer (cos and sin are constants: the products keep only them)
    saved = probe.activation_bytes([*model.parameters(), model.rope])
    per_token = activation_bytes_per_token(spec, spec.seq_len, 1, False, "none", precision, fused_rmsnorm=False)
    assert saved == per_token * 2 * spec.seq_len
