"""How often a step reduces its gradients, counted on 4 real gloo processes inside every step's forward and
backward (collective_count_worker.py): under ZeRO 0 and 1 each FSDP2 unit's gradients once, however many
micro-batches the step accumulates (the loop turns FSDP2's gradient sync off until the last one:
runtime/parallelize.py defers_gradient_reduction), the routed experts' own units included, and ZeRO-1 gathers its
parameters once; ZeRO-2 reduce-scatters and gathers after every micro-batch. The predictor's `fsdp_schedule`
counts the same. That the deferred reduction still trains exactly like one process: test_equivalence.py
(dp4-zero0, dp4-zero1-accumulate), test_context_parallel.py, test_equivalence_moe.py (moe-ep2-zero0)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.equivalence import FP32, run_cases

pytestmark = [pytest.mark.dist, pytest.mark.timeout(900)]

WORKER = Path(__file__).with_name("collective_count_worker.py")
WORLD = 4
STEPS = 2
#: one micro-batch a step (-1mb) or two (-2mb); global batch 8 on dp 4
CASES = {
    "zero0-1mb": dict(dp=4, zero_stage=0, micro_batch=2, global_batch=8, **FP32),
    "zero0-2mb": dict(dp=4, zero_stage=0, micro_batch=1, global_batch=8, **FP32),
    "zero1-2mb": dict(dp=4, zero_stage=1, micro_batch=1, global_batch=8, **FP32),
    "zero2-2mb": dict(dp=4, zero_stage=2, micro_batch=1, global_batch=8, **FP32),
    # the routed experts are FSDP2 units of their own, over the 2 ranks that hold the same experts
    "moe-ep2-zero0-1mb": dict(dp=4, ep=2, zero_stage=0, micro_batch=2, global_batch=8, **FP32),
    "moe-ep2-zero0-2mb": dict(dp=4, ep=2, zero_stage=0, micro_batch=1, global_batch=8, **FP32),
}
MODELS = {"moe-ep2-zero0-1mb": "tiny-moe", "moe-ep2-zero0-2mb": "tiny-moe"}


@pytest.fixture(scope="module")
def counted(tmp_path_factory: pytest.TempPathFactory, token_data: Path) -> dict[str, list[dict[str, int]]]:
    """Each case's calls per step (the same on every rank: checked), by kind."""
    root = tmp_path_factory.mktemp("collectives")
    run_cases(root, token_data, WORLD, CASES, steps=STEPS, worker=WORKER, models=MODELS)
    counts = {}
    for name in CASES:
        ranks = [json.loads((root / name / f"collectives-rank{r}.json").read_text()) for r in range(WORLD)]
        assert all(steps == ranks[0] for steps in ranks), name
        assert len(ranks[0]) == STEPS, name
        counts[name] = [{"all_reduce": s.get("all_reduce", 0),
                         "reduce_scatter": s.get("reduce_scatter_tensor", 0) + s.get("reduce_scatter_single", 0),
                         "all_gather": s.get("all_gather_into_tensor", 0) + s.get("all_gather_single", 0)}
                        for s in ranks[0]]
    return counts


def _units(model: str) -> int:
    """A dense model's FSDP2 units as the predictor counts them: one per block, the root (embedding, final norm,
    LM head)."""
    from bastion.predict.memory import fsdp_units
    from bastion.specs.model import load_model

    spec = load_model(model)
    return len(fsdp_units(spec, 1, "layer")) * spec.num_layers + 1


def test_zero0_all_reduces_each_unit_once_a_step_however_many_micro_batches(counted: dict) -> None:
    # replicated (dp_shard = 1): nothing to gather, no reduce-scatter to run
    for name in ("zero0-1mb", "zero0-2mb"):
        assert counted[name] == [{"all_reduce": _units("tiny"), "reduce_scatter": 0, "all_gather": 0}] * STEPS, name


def test_zero1_reduce_scatters_its_accumulated_gradients_and_gathers_once_a_step(counted: dict) -> None:
    units = _units("tiny")
    for step in counted["zero1-2mb"]:
        assert (step["reduce_scatter"], step["all_gather"]) == (units, units)


def test_zero2_reduce_scatters_and_gathers_after_every_micro_batch(counted: dict) -> None:
    units = _units("tiny")
    for step in counted["zero2-2mb"]:
        assert (step["reduce_scatter"], step["all_gather"]) == (2 * units, 2 * units)


def test_the_routed_experts_own_units_reduce_once_a_step_too(counted: dict) -> None:
    from bastion.specs.model import load_model

    # a unit per block and the root, and one per MoE layer's routed experts
    spec = load_model("tiny-moe")
    per_step = spec.num_layers + 1 + spec.num_moe_layers
    for name in ("moe-ep2-zero0-1mb", "moe-ep2-zero0-2mb"):
        assert [step["all_reduce"] for step in counted[name]] == [per_step] * STEPS, name


def test_the_predictor_counts_the_collectives_the_runtime_runs(counted: dict) -> None:
    from bastion.predict.comm import fsdp_schedule
    from bastion.specs.plan import ParallelPlan

    units = _units("tiny")
    for name in ("zero0-1mb", "zero0-2mb", "zero1-2mb", "zero2-2mb"):
        plan = ParallelPlan(**CASES[name])
        schedule, m = fsdp_schedule(plan), plan.grad_accumulation
        reductions = units * (m * schedule.reduces_per_micro_batch + schedule.reduces_once)
        # ZeRO 0 runs FSDP2 replicated: its "gathers" are copies, no collective (predict/estimate.py _sync_points)
        gathers = 0 if plan.zero_stage == 0 else units * (m * schedule.gathers_per_micro_batch
                                                          + schedule.gathers_once)
        for step in counted[name]:
            reduced = step["all_reduce"] if plan.zero_stage == 0 else step["reduce_scatter"]
            assert (reduced, step["all_gather"]) == (reductions, gathers), name
