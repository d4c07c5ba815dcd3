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

from pathlib import Path

import pytest

from helpers.equivalence import TOLERANCE, max_differences, record, reference_run, run_cases

pytestmark = [pytest.mark.dist, pytest.mark.timeout(1200)]

FP32 = {"precision": "fp32"}
#: a GPT-style model: learned positions, biases, LayerNorm, GELU (the runtime's other code path)
GPT_TINY = """name = "tiny-gpt"
num_layers = 2
hidden_size = 64
num_heads = 4
ffn_hidden_size = 256
ffn_type = "gelu"
vocab_size = 256
seq_len = 64
position_embedding = "learned"
bias = true
source = "bastion test model"
"""
#: tiny with Qwen3's per-head q/k RMSNorms and a head_dim other than hidden_size / heads
QK_NORM_TINY = """name = "tiny-qk-norm"
num_layers = 2
hidden_size = 64
num_heads = 4
num_kv_heads = 2
head_dim = 32
qk_norm = true
ffn_hidden_size = 128
vocab_size = 256
seq_len = 64
source = "bastion test model"
"""

WORLD2 = {
    "cp2": dict(cp=2, micro_batch=2, global_batch=8, **FP32),
    # dp = 1: ZeRO 3 shards over the two cp ranks alone
    "cp2-zero3-gpt": dict(cp=2, zero_stage=3, micro_batch=4, global_batch=8, **FP32),
}
WORLD4 = {
    "cp4-zero2": dict(cp=4, zero_stage=2, micro_batch=2, global_batch=8, **FP32),
    "cp2-dp2-zero3": dict(cp=2, dp=2, zero_stage=3, micro_batch=1, global_batch=8, **FP32),
    "cp2-dp2-zero0-full-recompute": dict(cp=2, dp=2, zero_stage=0, recompute="full", micro_batch=2,
                                         global_batch=8, **FP32),
    "cp2-tp2-sp-selective-recompute": dict(cp=2, tp=2, sequence_parallel=True, recompute="selective",
                                           micro_batch=2, global_batch=8, **FP32),
    "pp2-cp2-1f1b": dict(pp=2, cp=2, pp_schedule="1f1b", micro_batch=2, global_batch=8, **FP32),
    "pp2-cp2-zero-bubble": dict(pp=2, cp=2, pp_schedule="zero-bubble", micro_batch=2, global_batch=8, **FP32),
    "cp2-tp2-zero3-qk-norm": dict(cp=2, tp=2, zero_stage=3, micro_batch=2, global_batch=8, **FP32),
}


@pytest.fixture(scope="module")
def gpt_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("models") / "tiny-gpt.toml"
    path.write_text(GPT_TINY)
    return str(path)


@pytest.fixture(scope="module")
def qk_norm_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("models") / "tiny-qk-norm.toml"
    path.write_text(QK_NORM_TINY)
    return str(path)


@pytest.fixture(scope="module")
def references(token_data: Path, gpt_model: str, qk_norm_model: str) -> dict[str, tuple[list[float], dict]]:
    return {"tiny": reference_run(token_data, "tiny", global_batch=8),
            gpt_model: reference_run(token_data, gpt_model, global_batch=8),
            qk_norm_model: reference_run(token_data, qk_norm_model, global_batch=8)}


def _check(results: dict, references: dict, models: dict[str, str]) -> None:
    from bastion.predict.memory import model_state_bytes
    from bastion.specs.model import load_model
    from bastion.specs.plan import ParallelPlan

    found = {}
    for name, result in results.items():
        model = models.get(name, "tiny")
        loss_diff, param_diff = max_differences(result, *references[model])
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
                                         rank["cp_rank"])
            assert measured == expected, f"{name} rank {rank['rank']}: measured {measured} != {expected}"
        found[name] = {"max_loss_diff": loss_diff, "max_param_diff": param_diff,
                       "losses": result.summary["losses"]}
    record(found)


def test_context_parallel_alone_on_2_processes(tmp_path, token_data, references, gpt_model):
    models = {"cp2-zero3-gpt": gpt_model}
    _check(run_cases(tmp_path, token_data, 2, WORLD2, models=models), references, models)


def test_context_parallel_with_dp_tp_pp_on_4_processes(tmp_path, token_data, references, qk_norm_model):
    models = {"cp2-tp2-zero3-qk-norm": qk_norm_model}
    _check(run_cases(tmp_path, token_data, 4, WORLD4, models=models), references, models)
