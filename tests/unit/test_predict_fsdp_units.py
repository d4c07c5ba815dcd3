"""What ZeRO-3 gathers at once: whole layers (FSDP2 per block) or sub-modules (DeepSpeed)."""

from __future__ import annotations

import pytest

from bastion.predict import estimate
from bastion.predict.memory import fsdp_unit_numels, layer_numel
from bastion.predict.options import PredictOptions
from bastion.specs import ParallelPlan, load_cluster, load_model


def test_units_partition_the_layer() -> None:
    model = load_model("llama3-70b")
    for tp in (1, 8):
        modules = fsdp_unit_numels(model, tp, "module")
        assert sum(modules) == layer_numel(model, tp) == fsdp_unit_numels(model, tp, "layer")[0]
        # q, k, v, o, w1, w3, w2 and the two norms
        assert len(modules) == 9
        h, f = model.hidden_size, model.ffn_hidden_size
        assert max(modules) == f * h // tp


def test_module_gathers_hold_less_memory_and_pay_more_latency() -> None:
    model, cluster = load_model("gpt3-175b"), load_cluster("a100-80g:1024")
    plan = ParallelPlan(dp=1024, zero_stage=3, micro_batch=1, global_batch=1024, recompute="full")
    by_layer = estimate(model, cluster, plan)
    by_module = estimate(model, cluster, plan, options=PredictOptions(fsdp_unit="module"))
    a = 2
    saved = 3 * a * (layer_numel(model, 1) - max(fsdp_unit_numels(model, 1, "module")))
    assert by_layer.memory.comm_buffers - by_module.memory.comm_buffers == pytest.approx(saved)
    # the same bytes move in more, smaller collectives: never faster
    assert by_module.time.dp_comm >= by_layer.time.dp_comm
    with pytest.raises(ValueError, match="fsdp_unit"):
        estimate(model, cluster, plan, options=PredictOptions(fsdp_unit="block"))
