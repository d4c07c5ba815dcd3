"""The MoE equivalence checker (helpers/routing.py) on synthetic records: it passes identical routing and one
near-tie flip matched by a reference making the same choice, and fails everything else: a loss drift with
identical routing, two tokens' choices moved, two single flips in different layers, a second difference after
the flip, a flipped run held to the plain reference's losses."""

from __future__ import annotations

import pytest

from helpers.routing import RoutedReference, RoutingFlip, check_routed_run, routing_flip

TOLERANCE = 1e-5
#: 6 steps of 3 MoE layers × 8 experts, 1024 routed choices per layer and step
PLAIN_ROUTING = [[[128] * 8 for _ in range(3)] for _ in range(6)]
PLAIN_LOSSES = [5.5, 5.1, 4.8, 4.6, 4.5, 4.4]
AUX_LOSSES = [0.0201, 0.0203, 0.0199, 0.0198, 0.0202, 0.0200]
#: one token's choice in MoE layer 1 moved from expert 5 to expert 6 at step 2
FLIP = RoutingFlip(step=2, layer=1, from_expert=5, to_expert=6)


def _moved(routing: list, step: int, layer: int, changes: dict[int, int]) -> list:
    """`routing` with the counts of `step` (1-based) in `layer` changed by `changes` (expert -> difference)."""
    copy = [[list(counts) for counts in layers] for layers in routing]
    for expert, difference in changes.items():
        copy[step - 1][layer][expert] += difference
    return copy


#: after the flip the routing follows its own course: the flipped token chose otherwise in layer 2 too, and step
#: 3 differs from the plain run's by more than one choice
FLIPPED_ROUTING = _moved(_moved(_moved(PLAIN_ROUTING, 2, 1, {5: -1, 6: 1}), 2, 2, {0: -1, 3: 1}), 3, 1,
                         {0: 3, 1: -3})
FLIPPED_LOSSES = [5.5, 5.100004, 4.80002, 4.60003, 4.50002, 4.40004]


def _reference_of(flip: RoutingFlip | None) -> RoutedReference:
    """A plain reference and one forcing FLIP (what helpers.equivalence.routed_reference computes for real)."""
    if flip is None:
        return RoutedReference(PLAIN_LOSSES, AUX_LOSSES, PLAIN_ROUTING, {}, {})
    assert flip == FLIP, f"asked to force {flip}"
    return RoutedReference(FLIPPED_LOSSES, AUX_LOSSES, FLIPPED_ROUTING, {}, {})


def _check(losses: list[float], routing: list) -> tuple[RoutedReference, RoutingFlip | None, float]:
    return check_routed_run(losses, AUX_LOSSES, routing, _reference_of, TOLERANCE)


def test_identical_routing_is_held_to_the_plain_reference() -> None:
    reference, flip, loss_diff = _check([loss + 4e-7 for loss in PLAIN_LOSSES], PLAIN_ROUTING)
    assert flip is None and reference.losses == PLAIN_LOSSES and loss_diff == pytest.approx(4e-7)


def test_a_loss_drift_with_identical_routing_fails() -> None:
    drifted = PLAIN_LOSSES[:4] + [PLAIN_LOSSES[4] + 1.9e-5, PLAIN_LOSSES[5]]
    with pytest.raises(AssertionError, match="loss differs"):
        _check(drifted, PLAIN_ROUTING)


def test_an_aux_loss_drift_with_identical_routing_fails() -> None:
    with pytest.raises(AssertionError, match="aux loss"):
        check_routed_run(PLAIN_LOSSES, AUX_LOSSES[:5] + [AUX_LOSSES[5] * (1 + 5.5e-5)], PLAIN_ROUTING,
                         _reference_of, TOLERANCE)


def test_one_flipped_choice_is_held_to_the_reference_making_the_same_choice() -> None:
    reference, flip, loss_diff = _check([loss + 3e-7 for loss in FLIPPED_LOSSES], FLIPPED_ROUTING)
    assert flip == FLIP and reference.losses == FLIPPED_LOSSES and loss_diff == pytest.approx(3e-7)


def test_a_flipped_run_that_matches_the_plain_losses_instead_fails() -> None:
    """The flip changes the loss (FLIPPED_LOSSES): a run whose routing flipped but whose losses did not move
    computed something else."""
    with pytest.raises(AssertionError, match="loss differs"):
        _check(PLAIN_LOSSES, FLIPPED_ROUTING)


def test_two_tokens_choices_moved_at_once_fail() -> None:
    for changes in ({5: -2, 6: 2}, {5: -1, 6: 1, 2: -1, 3: 1}, {5: -1, 6: 2, 7: -1}):
        with pytest.raises(AssertionError, match="more than one token's choice"):
            routing_flip(PLAIN_ROUTING, _moved(PLAIN_ROUTING, 2, 1, changes))


def test_a_flip_in_a_later_layer_the_forced_reference_does_not_make_fails() -> None:
    """A second flip in a later layer of the flip's step (in summed counts, it could even cancel the first)."""
    both = _moved(FLIPPED_ROUTING, 2, 2, {5: 1, 6: -1})
    with pytest.raises(AssertionError, match="second routing difference"):
        _check(FLIPPED_LOSSES, both)


def test_a_second_difference_after_the_flip_fails() -> None:
    second = _moved(FLIPPED_ROUTING, 5, 0, {1: -1, 4: 1})  # one more near-tie choice, 3 steps later
    with pytest.raises(AssertionError, match="second routing difference"):
        _check(FLIPPED_LOSSES, second)


def test_the_first_difference_names_its_step_layer_and_experts() -> None:
    assert routing_flip(PLAIN_ROUTING, PLAIN_ROUTING) is None
    assert routing_flip(PLAIN_ROUTING, _moved(PLAIN_ROUTING, 2, 1, {5: -1, 6: 1})) == FLIP
    assert routing_flip(PLAIN_ROUTING, FLIPPED_ROUTING) == FLIP
    assert routing_flip(PLAIN_ROUTING, _moved(PLAIN_ROUTING, 6, 0, {7: -1, 0: 1})) == RoutingFlip(6, 0, 7, 0)


def _reference_forward(flip: RoutingFlip, twin_experts: bool) -> list:
    """Per MoE layer, the tokens routed to each expert by one forward of tiny-moe (random tokens) with `flip`
    forced on it as the reference does (helpers.equivalence._forced_flip); `twin_experts` gives the flip's two
    experts the same router row in its layer, so every token that picks one just before the other is a tie."""
    import torch

    from bastion.runtime.model import build_model, init_weights
    from bastion.runtime.moe import moe_blocks
    from bastion.specs.model import load_model
    from helpers.equivalence import _forced_flip, _step_routing

    spec = load_model("tiny-moe")
    net = build_model(spec)
    net.to_empty(device="cpu")
    init_weights(net, spec, 0)
    if twin_experts:
        router = moe_blocks([net])[flip.layer][1].router
        with torch.no_grad():
            router.weight[flip.to_expert] = router.weight[flip.from_expert]
    _forced_flip(net, flip, step_of=lambda: 1)
    net(torch.randint(0, spec.vocab_size, (2, spec.seq_len), generator=torch.Generator().manual_seed(0)))
    return _step_routing(net)[0]


def test_the_reference_forces_one_tied_choice_the_other_way() -> None:
    """Twin experts 5 and 6 tie on every token (the stable sort gives 5): forcing moves exactly one choice."""
    flip = RoutingFlip(step=1, layer=1, from_expert=5, to_expert=6)
    plain = _reference_forward(RoutingFlip(step=2, layer=1, from_expert=5, to_expert=6), twin_experts=True)
    forced = _reference_forward(flip, twin_experts=True)
    assert routing_flip([plain], [forced]) == flip


def test_the_reference_refuses_to_force_a_choice_that_is_no_near_tie() -> None:
    with pytest.raises(AssertionError, match="near a tie"):
        _reference_forward(RoutingFlip(step=1, layer=1, from_expert=5, to_expert=6), twin_experts=False)
