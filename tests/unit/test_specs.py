"""Specs: presets load, parameter counts match the published sizes, plans validate with guidance."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bastion.errors import ConfigError, PlanError, UnknownPresetError
from bastion.specs import ParallelPlan, load_cluster, load_model
from bastion.specs.hardware import accelerator_names, cluster_presets, load_accelerator
from bastion.specs.model import ModelSpec, model_presets

# Published totals: Llama 2 (HF configs: 6,738,415,616 / 13,015,864,320 / 68,976,648,192),
# Llama 3 (8,030,261,248 / 70,553,706,496 / 405,853,388,800).
PUBLISHED_PARAMS = {
    "llama2-7b": 6_738_415_616,
    "llama2-13b": 13_015_864_320,
    "llama2-70b": 68_976_648_192,
    "llama3-8b": 8_030_261_248,
    "llama3-70b": 70_553_706_496,
    "llama3-405b": 405_853_388_800,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_llama_parameter_counts_are_exact(name: str) -> None:
    assert load_model(name).total_params() == PUBLISHED_PARAMS[name]


def test_gpt3_is_175b_and_small_is_10_to_20m() -> None:
    assert 174e9 < load_model("gpt3-175b").total_params() < 176e9
    assert 10e6 <= load_model("small").total_params() <= 20e6
    tiny = load_model("tiny")
    assert (tiny.num_layers, tiny.hidden_size, tiny.num_heads, tiny.num_kv_heads) == (4, 64, 4, 2)
    assert (tiny.ffn_hidden_size, tiny.vocab_size, tiny.seq_len) == (256, 256, 64)


def test_every_preset_and_accelerator_loads() -> None:
    required_models = {"gpt3-175b", "llama2-7b", "llama2-13b", "llama2-70b", "llama3-8b", "llama3-70b",
                       "llama3-405b", "mpt-7b", "mpt-30b", "mpt-70b", "bloom-176b", "megatron-1t", "tiny", "small"}
    assert required_models <= set(model_presets())
    required_accs = {"a100-40g", "a100-80g", "h100-sxm", "h100-96g", "h200", "b200", "gb200", "mi300x",
                     "tpu-v4", "tpu-v5p", "cpu"}
    assert required_accs <= set(accelerator_names())
    for name in accelerator_names():
        acc = load_accelerator(name)
        assert acc.peak_tflops("bf16") > 0 and acc.hbm_gib > 0 and acc.source
    for name in cluster_presets():
        assert load_cluster(name).num_gpus > 0


def test_accelerator_shorthand_builds_standard_nodes() -> None:
    cluster = load_cluster("h100-sxm:1024")
    assert (cluster.num_nodes, cluster.gpus_per_node, cluster.num_gpus) == (128, 8, 1024)
    assert cluster.network.scale_up_size == 8
    assert cluster.network.scale_out_bw_gbs == pytest.approx(50.0)  # 400 Gb/s NIC per GPU
    assert load_cluster("gb200:144").gpus_per_node == 72
    assert load_cluster("dgx-a100:64").num_nodes == 8
    assert load_cluster("h100-sxm:4").num_gpus == 4


def test_accelerator_facts_are_catalog_data_so_a_new_one_is_one_row(monkeypatch: pytest.MonkeyPatch) -> None:
    from bastion.cost.onprem import OnPremAssumptions, capex_per_gpu
    from bastion.predict import estimate
    from bastion.specs.hardware import _accelerator_table, accelerator_for_device

    assert (load_cluster("tpu-v5p:64").gpus_per_node, load_cluster("tpu-v5p:64").network.topology) == (4, "torus")
    assert load_cluster("cpu:6").gpus_per_node == 6 and load_cluster("mi300x:64").gpus_per_node == 8
    assert accelerator_for_device("NVIDIA H100 80GB HBM3") == "h100-sxm"
    assert accelerator_for_device("NVIDIA A100-SXM4-40GB") == "a100-40g"
    assert accelerator_for_device("NVIDIA GB200") == "gb200" and accelerator_for_device("Tesla V100") is None
    row = dict(_accelerator_table()["h100-sxm"], gpus_per_node=4, network_topology="fat-tree",
               capex_per_gpu_usd=12_345.0, capex_source="a test quote", device_names=["test gpu 9000"])
    monkeypatch.setitem(_accelerator_table(), "test-gpu", row)
    cluster = load_cluster("test-gpu:64")
    assert (cluster.num_nodes, cluster.gpus_per_node, cluster.network.topology) == (16, 4, "fat-tree")
    assert capex_per_gpu(cluster.accelerator, OnPremAssumptions()) == (12_345.0, "a test quote")
    assert accelerator_for_device("ACME Test GPU 9000") == "test-gpu"
    plan = ParallelPlan(dp=8, tp=4, pp=2, global_batch=64)
    assert estimate(load_model("llama3-8b"), cluster, plan).step_time_s > 0


def test_unknown_names_suggest_the_closest() -> None:
    with pytest.raises(UnknownPresetError, match="Did you mean 'llama3-8b'"):
        load_model("llama3-8")
    with pytest.raises(UnknownPresetError, match="h100-sxm"):
        load_cluster("h100-sx:8")
    with pytest.raises(ConfigError, match="whole number"):
        load_cluster("h100-sxm:12")


def test_model_file_with_typo_is_refused(tmp_path) -> None:
    path = tmp_path / "m.toml"
    path.write_text("num_layers = 2\nhidden_size = 64\nnum_heads = 4\nffn_hiden_size = 128\nvocab_size = 10\n")
    with pytest.raises(ConfigError, match="Did you mean 'ffn_hidden_size'"):
        load_model(str(path))


def test_plan_round_trips_through_json_and_toml(tmp_path) -> None:
    plan = ParallelPlan(dp=4, tp=2, pp=2, cp=1, zero_stage=3, micro_batch=2, global_batch=64,
                        pp_schedule="interleaved-1f1b", vpp=2, recompute="selective",
                        sequence_parallel=True, precision="bf16")
    for suffix in (".json", ".toml"):
        path = plan.save(tmp_path / f"plan{suffix}")
        assert ParallelPlan.load(path) == plan
    assert plan.grad_accumulation == 8
    assert set(plan.to_dict()) == {"dp", "tp", "pp", "cp", "ep", "zero_stage", "micro_batch", "global_batch",
                                   "pp_schedule", "vpp", "recompute", "sequence_parallel", "precision", "etp",
                                   "pipeline_layout", "recompute_layers", "activation_offload"}
    uneven = ParallelPlan(dp=2, pp=2, global_batch=8, pipeline_layout="1,3", recompute="full", recompute_layers=1)
    for suffix in (".json", ".toml"):
        assert ParallelPlan.load(uneven.save(tmp_path / f"uneven{suffix}")) == uneven


@pytest.mark.parametrize(("model", "total_b", "active_b"), [
    ("deepseek-v3", 671.0, 37.6), ("qwen3-235b-a22b", 235.1, 22.2), ("mixtral-8x22b", 140.6, 39.2),
    ("kimi-k2", 1026.4, 32.9), ("llama4-scout", 107.8, 17.2)])
def test_modern_moe_presets_have_their_published_parameter_counts(model, total_b, active_b) -> None:
    spec = load_model(model)
    assert spec.total_params() / 1e9 == pytest.approx(total_b, abs=0.05)
    assert spec.active_params() / 1e9 == pytest.approx(active_b, abs=0.05)


def test_mla_is_described_by_its_ranks() -> None:
    spec = load_model("deepseek-v3")
    assert spec.attention_kind == "mla" and spec.head_dim == 192 and spec.v_width == 128 * 128
    # DeepSeek-V3's attention: 187,107,328 weights per layer (HF DeepseekV3Attention at these ranks)
    assert spec.attention_params_per_layer() == (7168 * 1536 + 1536 + 1536 * 128 * 192 + 7168 * (512 + 64) + 512
                                                 + 512 * 128 * 256 + 128 * 128 * 7168)
    with pytest.raises(ConfigError, match="kv_lora_rank"):
        ModelSpec(name="x", num_layers=2, hidden_size=64, num_heads=4, ffn_hidden_size=128, vocab_size=64,
                  q_lora_rank=16)


def test_interleaved_moe_layers_follow_llama4() -> None:
    spec = ModelSpec(name="x", num_layers=6, hidden_size=64, num_heads=4, ffn_hidden_size=128, vocab_size=64,
                     num_experts=4, top_k=1, moe_layer_freq=2)
    assert [spec.is_moe_layer(i) for i in range(6)] == [False, True, False, True, False, True]
    assert spec.num_moe_layers == 3


@pytest.mark.parametrize(("fields", "message"), [
    ({"pp": 2, "pipeline_layout": "1,2,1"}, "3 entries"),
    ({"pp": 2, "pipeline_layout": "1,x"}, "comma-separated"),
    ({"pp": 2, "pipeline_layout": "1,1"}, "holds 2 layers"),
    ({"recompute_layers": 2}, "needs recompute"),
    ({"etp": 2}, "needs a mixture-of-experts"),
])
def test_new_plan_fields_are_checked(fields, message) -> None:
    with pytest.raises(PlanError, match=message):
        ParallelPlan(global_batch=8, **fields).validate(load_model("tiny"))


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        (dict(dp=64, tp=8), "degrees != devices"),
        (dict(dp=2, tp=3), "tp does not divide heads"),  # checked without a cluster
        (dict(dp=64, tp=16), "tp does not divide heads"),  # 8 kv heads
        (dict(dp=16, pp=64), "layers not divisible by pp·vpp"),
        (dict(dp=16, tp=8, pp=8, vpp=3, pp_schedule="interleaved-1f1b"), "layers not divisible by pp·vpp"),
        (dict(dp=1024, sequence_parallel=True), "sp without tp"),
        (dict(dp=1024, precision="fp8"), None),  # h100 supports fp8: valid
    ],
)
def test_plan_validation_names_the_wrong_factor(fields, reason) -> None:
    model, cluster = load_model("llama3-8b"), load_cluster("h100-sxm:1024")
    plan = ParallelPlan(global_batch=2048, **fields)
    if reason is None:
        plan.validate(model, cluster)
        return
    with pytest.raises(PlanError) as info:
        plan.validate(model, None if plan.tp == 3 else cluster)
    assert info.value.reason == reason
    assert info.value.fix


def test_plan_self_checks() -> None:
    with pytest.raises(PlanError, match="not divisible by micro_batch"):
        ParallelPlan(dp=3, micro_batch=2, global_batch=16)
    with pytest.raises(PlanError, match="vpp"):
        ParallelPlan(pp=2, pp_schedule="interleaved-1f1b", vpp=1)
    with pytest.raises(PlanError, match="two chunks"):
        ParallelPlan(pp=2, pp_schedule="zbv", vpp=1)
    with pytest.raises(PlanError, match="zero_stage"):
        ParallelPlan(zero_stage=4)


def test_tp_beyond_nvlink_and_fp8_on_a100_are_refused() -> None:
    model = load_model("gpt3-175b")
    with pytest.raises(PlanError) as info:
        ParallelPlan(dp=4, tp=16, pp=16, global_batch=64).validate(model, load_cluster("a100-80g:1024"))
    assert info.value.reason == "tp beyond scale-up domain"
    with pytest.raises(PlanError) as info:
        ParallelPlan(dp=16, tp=8, pp=8, global_batch=64, precision="fp8").validate(model, load_cluster("a100-80g:1024"))
    assert info.value.reason == "precision unsupported"


def test_cli_error_is_short_with_exit_code_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "bastion", "models", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0 and '"llama3-405b"' in proc.stdout
    proc = subprocess.run([sys.executable, "-c",
                           "from bastion.cli import app, main; from bastion.specs import load_model\n"
                           "import typer\n"
                           "@app.command('boom')\n"
                           "def boom():\n    load_model('nonexistent-model')\n"
                           "main(['boom'])"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Unknown model 'nonexistent-model'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_does_not_import_torch() -> None:
    code = "import sys\nfrom bastion.cli import app\nprint('torch' in sys.modules, 'matplotlib' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False False"


@pytest.mark.parametrize(
    ("layers", "chunks", "counts"),
    [
        (32, 4, (8, 8, 8, 8)),                  # even split
        (126, 16, (7,) + (8,) * 14 + (7,)),     # Llama 3 405B: one layer fewer on the first and last stage
        (70, 12, (5,) + (6,) * 10 + (5,)),      # BLOOM 176B (embedding and head partitioned as layers)
        (4, 3, (1, 2, 1)),
        (4, 6, (0, 1, 1, 1, 1, 0)),              # layers + 2 chunks: the embedding and the head alone at the ends
        (126, 128, (0,) + (1,) * 126 + (0,)),    # NeMo's Llama 3.1 405B on pp 16 × vpp 8
        (4, 7, None),
        (4, 2 * 4 + 4, None),
        (32, 5, None),
        (32, 1, (32,)),
    ],
)
def test_pipeline_chunks_split_evenly_or_give_the_ends_a_layer_less(layers, chunks, counts) -> None:
    from bastion.specs.plan import chunk_layer_counts

    assert chunk_layer_counts(layers, chunks) == counts
    if counts is not None:
        assert sum(counts) == layers


def test_llama3_405b_published_pipeline_is_valid_and_predicted_per_stage() -> None:
    from bastion.predict import estimate

    model, cluster = load_model("llama3-405b"), load_cluster("h100-sxm:16384")
    plan = ParallelPlan(dp=128, tp=8, pp=16, global_batch=2048, pp_schedule="1f1b", recompute="selective",
                        sequence_parallel=True, zero_stage=1)
    est = estimate(model, cluster, plan, seq_len=8192)
    first, middle, last = est.memory_by_stage[0], est.memory_by_stage[1], est.memory_by_stage[-1]
    # 7 layers + embedding on the first stage, 8 layers in the middle: fewer layer parameters, more table
    assert first.params != middle.params and last.params != middle.params
    per_layer = (middle.params - 0) / 8
    assert first.params == pytest.approx(7 * per_layer + 128_256 * 16_384 // 8 * 2, rel=1e-6)
