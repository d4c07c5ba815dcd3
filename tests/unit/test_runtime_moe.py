"""The MoE block: equals a per-token reference, routes ties deterministically, its aux loss is per sequence and
reaches the router through backward; the runtime's parameters are the predictor's shapes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from bastion.runtime.model import build_model, count_parameters, init_weights
from bastion.runtime.moe import MoE
from bastion.specs.model import load_model


def _moe(spec, seed=0):
    with torch.device("meta"):
        block = MoE(spec)
    block.to_empty(device="cpu")
    init_weights(block, spec, seed)
    block.reset_stats()
    return block


def test_runtime_parameters_are_the_predictors_shapes():
    from bastion.predict.memory import layer_param_shapes

    spec = load_model("tiny-moe")
    model = build_model(spec)
    assert count_parameters(model) == spec.total_params()
    params = dict(model.named_parameters())
    for index, moe in ((0, False), (1, True)):
        expected = {f"layers.{index}.{p.name}": p.shape for p in layer_param_shapes(spec, moe)}
        found = {n: tuple(p.shape) for n, p in params.items() if n.startswith(f"layers.{index}.")}
        assert found == expected


def test_block_equals_a_per_token_reference():
    spec = load_model("tiny-moe")
    block = _moe(spec)
    x = torch.randn(2, 5, spec.hidden_size)
    with torch.no_grad():
        out = block(x)
        expert = block.experts
        tokens = x.reshape(-1, spec.hidden_size)
        scores = torch.softmax(tokens @ block.router.weight.T, dim=-1)
        expected = []
        for t, token in enumerate(tokens):
            top = torch.topk(scores[t], spec.top_k).indices
            weights = scores[t][top] / scores[t][top].sum()
            y = sum(w * ((F.silu(token @ expert.w1[e].T) * (token @ expert.w3[e].T)) @ expert.w2[e].T)
                    for w, e in zip(weights, top.tolist(), strict=True))
            expected.append(y + block.shared_experts(token))
    torch.testing.assert_close(out.reshape(-1, spec.hidden_size), torch.stack(expected), rtol=1e-5, atol=1e-6)
    assert not block.calls  # no grad: not a training forward
    block(x)
    assert int(block.calls[-1][0].sum()) == 10 * spec.top_k


def test_ties_go_to_the_lower_expert_index():
    spec = load_model("tiny-moe")
    block = _moe(spec)
    with torch.no_grad():
        block.router.weight.zero_()  # every expert scores the same
    _, chosen, weights = block.router(torch.randn(7, spec.hidden_size))
    assert chosen.tolist() == [[0, 1]] * 7
    assert torch.equal(weights, torch.full((7, 2), 0.5))


@pytest.mark.parametrize("router", ["softmax", "sigmoid"])
def test_aux_loss_is_per_sequence_and_reaches_the_router(router):
    spec = dataclasses.replace(load_model("tiny-moe"), router=router, aux_loss_coeff=0.1)
    block = _moe(spec)
    x = torch.randn(4, 6, spec.hidden_size)
    whole = block._aux_loss(*_route(block, x))
    halves = (block._aux_loss(*_route(block, x[:2])) + block._aux_loss(*_route(block, x[2:]))) / 2
    torch.testing.assert_close(whole, halves)
    # backward through the injector equals backward of (output + aux) done by hand
    block.zero_grad()
    block(x).sum().backward()
    injected = block.router.weight.grad.clone()
    block.zero_grad()
    block.aux_loss_coeff = 0.0
    out = block(x)
    block.aux_loss_coeff = 0.1
    (out.sum() + block._aux_loss(*_route(block, x))).backward()
    torch.testing.assert_close(injected, block.router.weight.grad)
    assert block.calls[0][1] > 0 and block.calls[1][1] is None


def _route(block, x):
    scores, chosen, _ = block.router(x.reshape(-1, x.shape[-1]))
    return scores.view(x.shape[0], x.shape[1], -1), chosen.view(x.shape[0], x.shape[1], -1)


def test_routing_bias_steers_the_choice_not_the_weights_and_moves_towards_balance():
    spec = dataclasses.replace(load_model("tiny-moe"), router="sigmoid", router_bias_update_rate=0.25)
    block = _moe(spec)
    assert "router.expert_bias" in block.state_dict()  # checkpointed with the model
    x = torch.randn(7, spec.hidden_size)
    scores, chosen, _ = block.router(x)
    with torch.no_grad():
        block.router.expert_bias.copy_(torch.tensor([0.0] * 6 + [5.0, 5.0]))
    biased_scores, biased, weights = block.router(x)
    assert torch.equal(biased_scores, scores) and [sorted(row) for row in biased.tolist()] == [[6, 7]] * 7
    assert chosen.tolist() != biased.tolist()
    expected = scores.gather(1, biased) / scores.gather(1, biased).sum(dim=-1, keepdim=True)
    torch.testing.assert_close(weights, expected)
    # the overloaded experts 6 and 7 lose a rate's worth, the idle ones gain it, the one at the mean stays
    block.router.update_bias(torch.tensor([0, 0, 0, 0, 0, 14.0, 49.0, 49.0]))
    assert block.router.expert_bias.tolist() == [0.25] * 5 + [0.0, 4.75, 4.75]
    assert "router.expert_bias" not in _moe(load_model("tiny-moe")).state_dict()  # no rate: no buffer
