"""Measured vs predicted memory on CPU, single process: model states exactly, activations within 10%."""

from __future__ import annotations

import pytest
import torch

from bastion.predict import estimate
from bastion.runtime.metrics import SavedActivationProbe, model_state_bytes_measured
from bastion.runtime.model import build_model, init_weights
from bastion.runtime.parallelize import cross_entropy_loss
from bastion.specs.hardware import load_cluster
from bastion.specs.model import load_model
from bastion.specs.plan import ParallelPlan


def _one_step(spec, micro_batch):
    model = build_model(spec)
    model.to_empty(device="cpu")
    init_weights(model, spec, 0)
    tokens = torch.randint(0, spec.vocab_size, (micro_batch, spec.seq_len + 1))
    probe = SavedActivationProbe()
    with probe.hooks():
        loss = cross_entropy_loss(model(tokens[:, :-1]), tokens[:, 1:])
    saved = probe.activation_bytes(model.parameters())
    loss.backward()
    optimizer = torch.optim.AdamW(model.parameters())
    optimizer.step()
    return saved, model_state_bytes_measured(list(model.parameters()), optimizer)


@pytest.mark.parametrize("micro_batch", [1, 4])
def test_tiny_activation_and_model_state_bytes_match_the_predictor(micro_batch):
    spec = load_model("tiny")
    plan = ParallelPlan(micro_batch=micro_batch, global_batch=micro_batch, precision="fp32")
    est = estimate(spec, load_cluster("cpu:1"), plan)
    saved, states = _one_step(spec, micro_batch)
    # the predictor keeps the LM head's logits apart from the layers' activations; the probe sees both
    predicted = est.memory.activations + est.memory.logits
    assert abs(saved / predicted - 1) < 0.10, f"measured {saved} vs predicted {predicted}"
    assert states == {"params": est.memory.params, "grads": est.memory.grads, "optimizer": est.memory.optimizer}
