"""Activation offload in one process: the hooked blocks' saved tensors make the round trip through host copies
with bit-identical gradients, and the bytes moved are the predictor's `offloaded_bytes_per_step`."""

from __future__ import annotations

import pytest
import torch

from bastion.predict.memory import offloaded_bytes_per_step
from bastion.predict.software import software_stack
from bastion.runtime.metrics import SavedActivationProbe
from bastion.runtime.model import build_model, init_weights
from bastion.runtime.offload import ActivationOffload, apply_activation_offload
from bastion.runtime.parallelize import apply_activation_checkpointing, cross_entropy_loss
from bastion.specs.model import load_model
from bastion.specs.plan import ParallelPlan


def _gradients(name: str, plan: ParallelPlan, offload: ActivationOffload | None) -> dict[str, torch.Tensor]:
    spec = load_model(name)
    model = build_model(spec)
    apply_activation_checkpointing(model, plan.recompute, plan.recompute_layers)
    if offload is not None:
        apply_activation_offload(model, plan, offload)
    model.to_empty(device="cpu")
    init_weights(model, spec, 0)
    tokens = torch.randint(0, spec.vocab_size, (plan.global_batch, spec.seq_len + 1),
                           generator=torch.Generator().manual_seed(0))
    for rows in tokens.split(plan.micro_batch):
        (cross_entropy_loss(model(rows[:, :-1]), rows[:, 1:]) / plan.grad_accumulation).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


#: tiny-moe: the predictor counts every layer's activations as an MoE layer's (its dense first layer keeps 32
#: bytes a token less) and leaves out the routing's small tensors (the chosen experts' int64 ids, kept as a view
#: of the whole sorted scores, the permutation indices, the gate weights: 116.5 bytes a token of an MoE layer at
#: hidden 64, top-2 of 8), 1% of what tiny-moe's offloaded layers move
MOE_TOLERANCE = 0.015


@pytest.mark.parametrize(("name", "fields", "tolerance"), [
    ("tiny", dict(activation_offload=2), 0),
    ("tiny", dict(activation_offload=5, recompute="full", recompute_layers=1), 0),  # layers 1 and 2
    ("tiny", dict(activation_offload=1, recompute="selective"), 0),
    ("tiny-moe", dict(activation_offload=3), MOE_TOLERANCE),
])
def test_offloaded_blocks_train_identically_and_move_the_predicted_bytes(name: str, fields: dict,
                                                                         tolerance: float) -> None:
    plan = ParallelPlan(micro_batch=2, global_batch=4, precision="fp32", **fields)
    offload = ActivationOffload(torch.device("cpu"))
    expected = _gradients(name, plan, None)
    got = _gradients(name, plan, offload)
    for key, grad in expected.items():
        assert torch.equal(got[key], grad), key
    predicted = offloaded_bytes_per_step(load_model(name), plan, load_model(name).seq_len, 0, False,
                                         software_stack("bastion").options)
    assert predicted > 0 and offload.take_bytes_moved() == pytest.approx(predicted, rel=tolerance, abs=0)


def test_offloaded_blocks_keep_nothing_on_the_device_between_forward_and_backward() -> None:
    spec = load_model("tiny")
    plan = ParallelPlan(micro_batch=1, global_batch=1, precision="fp32", activation_offload=3)

    def saved(offload: ActivationOffload | None) -> int:
        model = build_model(spec)
        if offload is not None:
            apply_activation_offload(model, plan, offload)
        model.to_empty(device="cpu")
        init_weights(model, spec, 0)
        probe = SavedActivationProbe()  # the outer hooks see only what the offload hooks leave in place
        with probe.hooks():
            model(torch.zeros(1, spec.seq_len, dtype=torch.long))
        return probe.activation_bytes([*model.parameters(), model.rope])

    offload = ActivationOffload(torch.device("cpu"))
    assert saved(None) - saved(offload) == offload.take_bytes_moved() > 0


def test_compiled_blocks_still_offload_what_they_save() -> None:
    """parallelize compiles each block (never the whole model) under offload: a compiled block runs its hooks
    around its graph, whose saved tensors (fewer: fused elementwise ops) go to host memory all the same."""
    from bastion.runtime.parallelize import apply_compile

    spec = load_model("tiny")
    plan = ParallelPlan(micro_batch=2, global_batch=2, precision="fp32", activation_offload=2)

    def compiled_gradients(offload: ActivationOffload | None) -> dict[str, torch.Tensor]:
        model = build_model(spec)
        if offload is not None:
            apply_activation_offload(model, plan, offload)
        apply_compile(model, whole_model=False)
        model.to_empty(device="cpu")
        init_weights(model, spec, 0)
        tokens = torch.randint(0, spec.vocab_size, (2, spec.seq_len + 1), generator=torch.Generator().manual_seed(0))
        cross_entropy_loss(model(tokens[:, :-1]), tokens[:, 1:]).backward()
        return {name: p.grad for name, p in model.named_parameters()}

    offload = ActivationOffload(torch.device("cpu"))
    expected, got = compiled_gradients(None), compiled_gradients(offload)
    assert all(torch.equal(got[key], grad) for key, grad in expected.items())
    assert 0 < offload.take_bytes_moved() < offloaded_bytes_per_step(spec, plan, spec.seq_len, 0, False,
                                                                     software_stack("bastion").options)
