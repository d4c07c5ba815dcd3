"""Context parallelism (cp > 1) trains exactly like one process: per-step loss and final parameters within 1e-5.

Real gloo processes (torchrun), against the same independent single-process reference as test_equivalence.py:
cp alone (cp2 and cp4; a RoPE model and a GPT-style model with learned positions, biases and LayerNorm), cp × dp
with ZeRO 0 and 3, cp × tp with sequence parallelism, full and selective recompute, pp × cp under a plain and a
split-backward (zero-bubble) schedule, and a Qwen3-style model (per-head q/k norms, whose replicated weights take
the gradients of every tp rank's heads) under cp × tp with FSDP.

Model-state bytes: the runtime shards ZeRO 1-3 state over the dp × cp ranks (FSDP over the flattened dp × cp
dimension, as torchtitan does), and each rank must hold exactly the predictor's `model_state_bytes` for its
(pp, dp, tp, cp) rank.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from helpers.equivalence import FP32, TOLERANCE, declare, max_differences, record

pytestmark = [pytest.mark.dist, pytest.mark.timeout(1800)]

#: test models of their own (tests/dist/models/): a GPT-style one (learned positions, biases, LayerNorm, GELU) and
#: tiny with Qwen3's per-head q/k norms
GPT_MODEL = str(Path(__file__).with_name("models") / "tiny-gpt.toml")
QK_NORM_MODEL = str(Path(__file__).with_name("models") / "tiny-qk-norm.toml")
MODELS = {"cp2-zero3-gpt": GPT_MODEL, "cp2-tp2-zero3-qk-norm": QK_NORM_MODEL}

WORLD2 = declare(2, {
    "cp2": dict(cp=2, micro_batch=2, global_batch=8, **FP32),
    # dp = 1: ZeRO 3 shards over the two cp ranks alone
    "cp2-zero3-gpt": dict(cp=2, zero_stage=3, micro_batch=4, global_batch=8, **FP32),
}, models=MODELS)
WORLD4 = declare(4, {
    "cp4-zero2": dict(cp=4, zero_stage=2, micro_batch=2, global_batch=8, **FP32),
    "cp2-dp2-zero3": dict(cp=2, dp=2, zero_stage=3, micro_batch=1, global_batch=8, **FP32),
    "cp2-dp2-zero0-full-recompute": dict(cp=2, dp=2, zero_stage=0, recompute="full", micro_batch=2,
                                         global_batch=8, **FP32),
    "cp2-tp2-sp-selective-recompute": dict(cp=2, tp=2, sequence_parallel=True, recompute="selective",
                                           micro_batch=2, global_batch=8, **FP32),
    "pp2-cp2-1f1b": dict(pp=2, cp=2, pp_schedule="1f1b", micro_batch=2, global_batch=8, **FP32),
    "pp2-cp2-zero-bubble": dict(pp=2, cp=2, pp_schedule="zero-bubble", micro_batch=2, global_batch=8, **FP32),
    "cp2-tp2-zero3-qk-norm": dict(cp=2, tp=2, zero_stage=3, micro_batch=2, global_batch=8, **FP32),
}, models=MODELS)


def _check(results: dict, reference: Callable[[str], tuple[list[float], dict]]) -> None:
    from bastion.predict.memory import model_state_bytes
    from bastion.specs.model import load_model
    from bastion.specs.plan import ParallelPlan

    found = {}
    for name, result in results.items():
        model = MODELS.get(name, "tiny")
        loss_diff, param_diff = max_differences(result, *reference(model))
        print(f"{name:32s} max |loss - ref| {loss_diff:.2e}   max |param - ref| {param_diff:.2e}")
        assert loss_diff < TOLERANCE, f"{name}: loss differs by {loss_diff}"
        assert param_diff < TOLERANCE, f"{name}: parameters differ by {param_diff}"
        spec = load_model(model)
        plan = ParallelPlan.from_dict(result.summary["plan"])
        assert plan.cp > 1
        ranks = result.summary["measured"]["model_state_bytes_by_rank"]
        assert sorted((r["pp_rank"], r["dp_rank"], r["cp_rank"], r["tp_rank"]) for r in ranks) == sorted(
            (p, d, c, t) for p in range(plan.pp) for d in range(plan.dp) for c in range(plan.cp)
            for t in range(plan.tp))
        for rank in ranks:
            measured = {k: rank[k] for k in ("params", "grads", "optimizer")}
            expected = model_state_bytes(spec, plan, rank["pp_rank"], rank["dp_rank"], rank["tp_rank"],
                                         rank["cp_rank"], runtime_fsdp=True)
            assert measured == expected, f"{name} rank {rank['rank']}: measured {measured} != {expected}"
        found[name] = {"max_loss_diff": loss_diff, "max_param_diff": param_diff,
                       "losses": result.summary["losses"]}
    record(found)


def test_context_parallel_alone_on_2_processes(equivalence_runs, equivalence_reference):
    _check(equivalence_runs(WORLD2), equivalence_reference)


def test_context_parallel_with_dp_tp_pp_on_4_processes(equivalence_runs, equivalence_reference):
    _check(equivalence_runs(WORLD4), equivalence_reference)
