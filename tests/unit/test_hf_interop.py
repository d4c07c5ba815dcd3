"""Hugging Face interop in one process: a Llama config.json as --model, its weights loaded into bastion's model
(logits equal transformers'), export of a checkpoint that transformers loads, export -> import -> export
byte-identical, and every bad input a guidance error (exit 2) that leaves nothing behind."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bastion.cli import main
from bastion.errors import ConfigError
from bastion.interop.hf_config import hf_config_from_spec, spec_from_hf_config
from bastion.specs.model import load_model

LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 96, "hidden_size": 32,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 48,
         "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "rope_theta": 500000.0, "hidden_act": "silu"}


def _fails_with(argv, capsys, *phrases):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "To fix:" in err
    for phrase in phrases:
        assert phrase in err, err
    return err


# ---- config mapping (no torch) ------------------------------------------------------------------------
def test_a_llama_config_maps_every_setting(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(LLAMA))
    spec = load_model(str(tmp_path / "m" / "config.json"))
    assert (spec.num_layers, spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.ffn_hidden_size,
            spec.vocab_size, spec.seq_len, spec.head_dim) == (2, 32, 4, 2, 48, 96, 64, 8)
    assert spec.norm_eps == 1e-6 and spec.rope_theta == 500000.0 and spec.name == "m"
    assert spec.ffn_type == "swiglu" and not spec.bias and not spec.tied_embeddings
    assert load_model(str(tmp_path / "m")) == spec   # the model directory itself works too
    assert load_model(str(tmp_path / "m"), seq_len=16).seq_len == 16
    # transformers 5 writes the RoPE base into rope_parameters
    five = {**LLAMA, "rope_parameters": {"rope_type": "default", "rope_theta": 1234.0}}
    assert spec_from_hf_config(five, "x").rope_theta == 1234.0


def test_export_config_maps_back_to_the_same_spec():
    spec = spec_from_hf_config({**LLAMA, "tie_word_embeddings": True, "head_dim": 16}, "dir/config.json")
    again = spec_from_hf_config(hf_config_from_spec(spec), "dir/config.json")
    assert again == spec and again.head_dim == 16 and again.tied_embeddings


@pytest.mark.parametrize(("change", "phrase"), [
    ({"model_type": "mistral", "architectures": ["MistralForCausalLM"]},
     "bastion imports deepseek_v3, llama, mixtral, qwen3, qwen3_moe configs only"),
    ({"architectures": ["LlamaForSequenceClassification"]}, "LlamaForSequenceClassification"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "RoPE scaling 'llama3'"),
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"attention_dropout": 0.1}, "attention_dropout"),
    ({"hidden_size": None}, "wrong type"),
    ({"model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "num_local_experts": 4,
      "num_experts_per_tok": 2, "sliding_window": 4096}, "sliding_window"),
    ({"model_type": "mixtral", "architectures": ["MixtralForCausalLM"]}, "without num_local_experts"),
])
def test_unsupported_configs_are_refused_with_guidance(change, phrase):
    with pytest.raises(ConfigError) as exc:
        spec_from_hf_config({**LLAMA, **change}, "config.json")
    assert phrase in exc.value.problem and exc.value.fix


def test_a_model_without_a_llama_equivalent_is_not_exported():
    from bastion.specs.model import ModelSpec

    gpt = ModelSpec(name="g", num_layers=1, hidden_size=8, num_heads=2, ffn_hidden_size=16, vocab_size=10,
                    ffn_type="gelu", bias=True, position_embedding="learned")
    with pytest.raises(ConfigError, match="no Hugging Face Llama, Mixtral, DeepSeek-V3, Qwen3 or Qwen3-MoE "
                                          "equivalent") as exc:
        hf_config_from_spec(gpt)
    assert "gelu" in exc.value.problem and "learned" in exc.value.problem and exc.value.fix


#: Qwen/Qwen3-30B-A3B's config.json as published (the fields bastion reads)
QWEN3_30B_A3B = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "attention_bias": False,
                 "attention_dropout": 0.0, "decoder_sparse_step": 1, "head_dim": 128, "hidden_act": "silu",
                 "hidden_size": 2048, "intermediate_size": 6144, "max_position_embeddings": 40960,
                 "max_window_layers": 48, "mlp_only_layers": [], "moe_intermediate_size": 768,
                 "norm_topk_prob": True, "num_attention_heads": 32, "num_experts": 128, "num_experts_per_tok": 8,
                 "num_hidden_layers": 48, "num_key_value_heads": 4, "output_router_logits": False,
                 "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001,
                 "sliding_window": None, "tie_word_embeddings": False, "use_sliding_window": False,
                 "vocab_size": 151936}


def test_the_published_qwen3_moe_config_is_the_preset():
    published = spec_from_hf_config(QWEN3_30B_A3B, "Qwen3-30B-A3B/config.json")
    preset = load_model("qwen3-30b-a3b")
    ignore = ("name", "source", "seq_len")
    assert {k: v for k, v in published.to_dict().items() if k not in ignore} == \
        {k: v for k, v in preset.to_dict().items() if k not in ignore}
    assert published.qk_norm and published.total_params() == 30_532_122_624   # the checkpoint's tensor count
    again = hf_config_from_spec(published)
    assert again["architectures"] == ["Qwen3MoeForCausalLM"] and again["num_experts"] == 128
    assert spec_from_hf_config(again, "Qwen3-30B-A3B/config.json") == published


def test_qwen3_moe_layer_layouts_map_to_dense_layers_and_moe_layer_freq():
    # mlp_only_layers [0, 1] are bastion's leading dense layers, decoder_sparse_step its moe_layer_freq, and
    # transformers 5 writes num_experts under its attribute name num_local_experts
    config = {**QWEN3_30B_A3B, "num_hidden_layers": 8, "mlp_only_layers": [1, 0], "decoder_sparse_step": 2,
              "num_local_experts": 16, "norm_topk_prob": False}
    del config["num_experts"]
    spec = spec_from_hf_config(config, "config.json")
    hf_moe = [i not in (0, 1) and (i + 1) % 2 == 0 for i in range(8)]   # Qwen3MoeDecoderLayer's rule
    assert [spec.is_moe_layer(i) for i in range(8)] == hf_moe
    assert (spec.num_experts, spec.router_norm_topk, spec.ffn_hidden_size, spec.expert_width) == (16, False, 6144, 768)
    exported = hf_config_from_spec(spec)
    assert (exported["mlp_only_layers"], exported["decoder_sparse_step"], exported["norm_topk_prob"]) == (
        [0, 1], 2, False)


@pytest.mark.parametrize(("change", "phrase"), [
    ({"use_sliding_window": True, "sliding_window": 4096}, "use_sliding_window"),
    ({"layer_types": ["full_attention"] * 47 + ["sliding_attention"]}, "sliding_attention"),
    ({"mlp_only_layers": [3, 7]}, "mlp_only_layers = [3, 7]"),
    ({"attention_bias": True}, "attention_bias"),
    ({"num_experts": None}, "without num_experts"),
])
def test_qwen3_settings_bastion_does_not_run_are_refused(change, phrase):
    with pytest.raises(ConfigError) as exc:
        spec_from_hf_config({**QWEN3_30B_A3B, **change}, "config.json")
    assert phrase in exc.value.problem and exc.value.fix
    dense = {**QWEN3_30B_A3B, "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], **change}
    if "num_experts" not in change and "mlp_only_layers" not in change:
        with pytest.raises(ConfigError, match=phrase):
            spec_from_hf_config(dense, "config.json")


def test_a_qwen3_mixture_with_shared_experts_is_not_exported():
    from dataclasses import replace

    shared = replace(load_model("qwen3-30b-a3b"), num_shared_experts=1)
    with pytest.raises(ConfigError, match="shared experts \\(Qwen3-MoE has none\\)"):
        hf_config_from_spec(shared)


def test_a_checkpoint_saved_before_norm_eps_and_rope_theta_existed_still_resumes():
    from bastion.runtime.resume_source import same_model

    spec = load_model("tiny").to_dict()
    older = {k: v for k, v in spec.items() if k not in ("norm_eps", "rope_theta")}
    assert same_model(older, spec)   # the fields it lacks held their defaults when it was trained
    assert not same_model({**older, "rope_theta": 5.0}, spec)


# ---- weights in: logits equal transformers' --------------------------------------------------------------
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from bastion.runtime.hf_weights import load_hf_weights  # noqa: E402
from bastion.runtime.model import build_model, init_weights  # noqa: E402
from helpers.hf_models import (  # noqa: E402
    hf_logits,
    make_deepseek,
    make_llama,
    make_mixtral,
    make_qwen3,
    make_qwen3_moe,
    tokens_for,
)


def _bastion_from_hf(hf_dir: Path):
    spec = load_model(str(hf_dir))
    net = build_model(spec)
    net.to_empty(device="cpu")
    init_weights(net, spec, seed=0)
    biases = sum(1 for n, _ in net.named_buffers() if n.endswith("expert_bias"))
    assert load_hf_weights([net], hf_dir) == len(list(net.parameters())) + biases
    return net.eval()


@pytest.mark.parametrize(("make", "overrides"), [
    (make_llama, {}), (make_llama, {"tie_word_embeddings": True, "num_key_value_heads": 4}),
    # transformers' default router (top-k weights not renormalised) and no dense layers; every other layer routed
    (make_qwen3_moe, {"norm_topk_prob": False, "mlp_only_layers": [], "decoder_sparse_step": 2}),
    (make_qwen3_moe, {"tie_word_embeddings": True, "num_key_value_heads": 4}),
], ids=["llama", "llama-tied-mha", "qwen3-moe-unnormalised-sparse-step-2", "qwen3-moe-tied-mha"])
def test_imported_weights_give_transformers_logits(tmp_path, make, overrides):
    reference = make(tmp_path / "hf", **overrides)
    tokens = tokens_for(96)
    with torch.no_grad():
        ours = _bastion_from_hf(tmp_path / "hf")(tokens)
        theirs = reference(tokens).logits
    assert float((ours - theirs).abs().max()) < 1e-5
    assert float(theirs.abs().max()) > 1e-2   # logits of substance, not zeros


def _round_trip(tmp_path: Path, make) -> dict:
    """Import a random HF model, compare logits with transformers', export, compare again, and check export ->
    import -> export is byte-identical; returns the exported config."""
    reference = make(tmp_path / "hf")
    tokens = tokens_for(96)
    with torch.no_grad():
        ours = _bastion_from_hf(tmp_path / "hf")(tokens)
        theirs = reference(tokens).logits
    assert float((ours - theirs).abs().max()) < 1e-5 and float(theirs.abs().max()) > 1e-2
    save_as_checkpoint(tmp_path / "hf", tmp_path / "run")
    main_ok(["export", str(tmp_path / "run"), "--format", "hf", "--out", str(tmp_path / "a")])
    assert float((hf_logits(tmp_path / "a", tokens) - ours).abs().max()) < 1e-5
    save_as_checkpoint(tmp_path / "a", tmp_path / "run2", step=3)
    main_ok(["export", str(tmp_path / "run2"), "--out", str(tmp_path / "b")])
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    return json.loads((tmp_path / "a" / "config.json").read_text())


def test_a_mixtral_imports_with_transformers_logits_and_exports_back_byte_identically(tmp_path):
    """Mixtral: per-expert HF tensors stacked into bastion's expert tensors and back (softmax router, top-2
    renormalised)."""
    make_mixtral(tmp_path / "probe")
    spec = load_model(str(tmp_path / "probe"))
    assert (spec.num_experts, spec.top_k, spec.expert_width, spec.num_shared_experts) == (4, 2, 48, 0)
    config = _round_trip(tmp_path, make_mixtral)
    assert config["architectures"] == ["MixtralForCausalLM"] and config["num_local_experts"] == 4


def test_a_deepseek_v3_imports_with_transformers_logits_and_exports_back_byte_identically(tmp_path):
    """DeepSeek-V3: MLA, the sigmoid router whose bias (e_score_correction_bias) steers the choice only, shared
    experts and a dense first layer."""
    make_deepseek(tmp_path / "probe")
    spec = load_model(str(tmp_path / "probe"))
    assert (spec.attention_kind, spec.router, spec.num_shared_experts, spec.dense_layers) == ("mla", "sigmoid", 1, 1)
    config = _round_trip(tmp_path, make_deepseek)
    assert config["architectures"] == ["DeepseekV3ForCausalLM"] and config["rope_interleave"] is False


def test_a_qwen3_imports_with_transformers_logits_and_exports_back_byte_identically(tmp_path):
    """Qwen3: each query and key head RMSNorm'd over head_dim (q_norm / k_norm) before RoPE, a head_dim other
    than hidden_size / heads."""
    make_qwen3(tmp_path / "probe")
    spec = load_model(str(tmp_path / "probe"))
    assert spec.qk_norm and spec.head_dim == 16 and spec.q_width == 64
    config = _round_trip(tmp_path, make_qwen3)
    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["head_dim"] == 16


def test_a_qwen3_moe_imports_with_transformers_logits_and_exports_back_byte_identically(tmp_path):
    """Qwen3-MoE: the q/k norms, per-expert HF tensors (mlp.experts.J.*) stacked into bastion's expert tensors
    and back, the router as mlp.gate, a leading dense layer (mlp_only_layers) of another width."""
    make_qwen3_moe(tmp_path / "probe")
    spec = load_model(str(tmp_path / "probe"))
    assert (spec.num_experts, spec.top_k, spec.expert_width, spec.ffn_hidden_size, spec.dense_layers) == (
        4, 2, 16, 48, 1)
    config = _round_trip(tmp_path, make_qwen3_moe)
    assert config["architectures"] == ["Qwen3MoeForCausalLM"] and config["mlp_only_layers"] == [0]


@pytest.mark.parametrize(("change", "phrase"), [({"rope_interleave": True}, "rope_interleave"),
                                                 ({"routed_scaling_factor": 2.5}, "routed_scaling_factor"),
                                                 ({"n_group": 4, "topk_group": 2}, "topk_group")])
def test_deepseek_settings_bastion_does_not_run_are_refused(tmp_path, change, phrase):
    from helpers.hf_models import TINY_DEEPSEEK

    config = {**TINY_DEEPSEEK, **change, "model_type": "deepseek_v3", "architectures": ["DeepseekV3ForCausalLM"]}
    with pytest.raises(ConfigError) as exc:
        spec_from_hf_config(config, "config.json")
    assert phrase in exc.value.problem and exc.value.fix


def test_a_mixture_without_a_mixtral_form_is_not_exported():
    with pytest.raises(ConfigError, match="no Hugging Face Llama, Mixtral, DeepSeek-V3") as exc:
        hf_config_from_spec(load_model("tiny-moe"))  # a shared expert and a leading dense layer
    assert "shared experts" in exc.value.problem and "leading dense layers" in exc.value.problem


# ---- weights out: export, and export -> import -> export ----------------------------------------------------
def save_as_checkpoint(hf_dir: Path, run_dir: Path, step: int = 1, data: Path | None = None, net=None) -> Path:
    """A committed bastion checkpoint of the weights in `hf_dir` (as a run of `bastion train` saves it), or of
    `net`, a model of its config."""
    import torch.distributed.checkpoint as dcp

    from bastion.rundir import checkpoints as cf
    from bastion.rundir.layout import RUN_CONFIG_FILE, checkpoints_dir

    spec = load_model(str(hf_dir))
    net = net if net is not None else _bastion_from_hf(hf_dir)
    root = checkpoints_dir(run_dir)
    temp = root / cf.temp_dir_name(step)
    temp.mkdir(parents=True)
    # what a run saves: the parameters and the persistent buffers (a router's selection bias)
    dcp.save({f"model.{n}": t.detach() for n, t in net.state_dict().items()}, checkpoint_id=str(temp), no_dist=True)
    (temp / "state.json").write_text(json.dumps({"model": spec.to_dict(), "step": step}))
    if data is not None:
        (run_dir / RUN_CONFIG_FILE).write_text(json.dumps({"train": {"data": str(data)}}))
    return cf.commit(temp, root / cf.step_dir_name(step), step)


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture()
def tokenized_data(tmp_path):
    """A dataset prepared with a Hugging Face tokenizer (trained here on a few words; no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from bastion.runtime.data import prepare_dataset

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    text = "the quick brown fox jumps over the lazy dog " * 50
    tokenizer.train_from_iterator([text], trainers.WordLevelTrainer(special_tokens=["[UNK]", "</s>"]))
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "corpus.txt").write_text(text)
    prepare_dataset([tmp_path / "corpus.txt"], tmp_path / "data", tmp_path / "tokenizer.json")
    return tmp_path / "data"


def test_export_loads_in_transformers_and_round_trips_byte_identically(tmp_path, tokenized_data):
    make_llama(tmp_path / "hf")
    save_as_checkpoint(tmp_path / "hf", tmp_path / "run", data=tokenized_data)
    main_ok(["export", str(tmp_path / "run"), "--format", "hf", "--out", str(tmp_path / "a"),
             "--max-shard-mb", "0.03"])
    exported = _files(tmp_path / "a")
    shards = [name for name in exported if name.startswith("model-0")]
    assert "model.safetensors.index.json" in exported and len(shards) > 1   # above the limit: sharded
    assert "tokenizer.json" in exported and "generation_config.json" in exported
    tokens = tokens_for(96)
    with torch.no_grad():
        ours = _bastion_from_hf(tmp_path / "hf")(tokens)
    assert float((hf_logits(tmp_path / "a", tokens) - ours).abs().max()) < 1e-5
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path / "a")("the lazy fox")["input_ids"]
    # import the export, checkpoint it again, export again: the same bytes
    save_as_checkpoint(tmp_path / "a", tmp_path / "run2", step=7, data=tokenized_data)
    main_ok(["export", str(tmp_path / "run2"), "--out", str(tmp_path / "b"), "--max-shard-mb", "0.03"])
    assert _files(tmp_path / "b") == exported


def test_a_fine_tuned_qwen3_moe_exports_what_transformers_loads(tmp_path):
    """A few optimizer steps on the imported Qwen3-MoE (every tensor moves, the q/k norms and routers too), then
    export: transformers' logits on the export are bastion's."""
    from bastion.runtime.parallelize import cross_entropy_loss

    make_qwen3_moe(tmp_path / "hf")
    net = _bastion_from_hf(tmp_path / "hf").train()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    for step in range(3):
        rows = tokens_for(96, batch=4, seq=17, seed=10 + step)
        cross_entropy_loss(net(rows[:, :-1]), rows[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(not torch.equal(p, before[n]) for n, p in net.named_parameters())
    save_as_checkpoint(tmp_path / "hf", tmp_path / "run", step=3, net=net.eval())
    main_ok(["export", str(tmp_path / "run"), "--out", str(tmp_path / "a")])
    tokens = tokens_for(96)
    with torch.no_grad():
        ours = net(tokens)
    assert float((hf_logits(tmp_path / "a", tokens) - ours).abs().max()) < 1e-5


def test_export_of_tied_embeddings_in_bfloat16(tmp_path):
    from bastion.interop.hf_files import read_header

    make_llama(tmp_path / "hf", tie_word_embeddings=True)
    save_as_checkpoint(tmp_path / "hf", tmp_path / "run")
    main_ok(["export", str(tmp_path / "run"), "--out", str(tmp_path / "a"), "--dtype", "bfloat16"])
    header = read_header(tmp_path / "a" / "model.safetensors")
    assert {e.dtype for e in header.values()} == {"BF16"} and "lm_head.weight" not in header
    assert json.loads((tmp_path / "a" / "config.json").read_text())["dtype"] == "bfloat16"
    tokens = tokens_for(96)
    with torch.no_grad():
        ours = _bastion_from_hf(tmp_path / "hf")(tokens)
    difference = float((hf_logits(tmp_path / "a", tokens) - ours).abs().max())
    assert difference < 0.01 * float(ours.abs().max())   # bf16 rounding only (measured ~0.3%)


def main_ok(argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0


def test_export_bad_inputs_are_guidance_and_write_nothing(tmp_path, capsys, tokenized_data):
    make_llama(tmp_path / "hf")
    out = tmp_path / "out"
    _fails_with(["export", str(tmp_path / "hf"), "--out", str(out)], capsys, "holds no committed checkpoint")
    step_dir = save_as_checkpoint(tmp_path / "hf", tmp_path / "run", data=tokenized_data)
    _fails_with(["export", str(tmp_path / "run"), "--out", str(out), "--format", "gguf"], capsys, "gguf")
    _fails_with(["export", str(tmp_path / "run"), "--out", str(out), "--step", "3"], capsys, "no checkpoint of step 3")
    # missing tokenizer: the dataset says it was tokenised with one, but its copy is gone
    (tokenized_data / "tokenizer.json").unlink()
    _fails_with(["export", str(tmp_path / "run"), "--out", str(out)], capsys, "holds no copy of it", "--tokenizer")
    # a corrupted checkpoint is not exported
    data_file = next(p for p in step_dir.iterdir() if p.suffix == ".distcp")
    data_file.write_bytes(data_file.read_bytes()[:-9] + b"corrupted")
    _fails_with(["export", str(tmp_path / "run"), "--out", str(out), "--no-tokenizer"], capsys,
                "cannot be exported", "does not match its sha256")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _fails_with(["export", str(tmp_path / "run"), "--out", str(out)], capsys, "not an empty directory")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(("flag", "value", "phrase"), [
    ("--max-shard-mb", "inf", "--max-shard-mb must be finite"),   # was an OverflowError once the tensors were read
    ("--max-shard-mb", "abc", "--max-shard-mb must be a number"),
    ("--step", "abc", "--step must be a whole number"),
    ("--step", "-1", "--step must be >= 0"),
])
def test_export_numbers_are_checked_before_anything_is_read(tmp_path, capsys, flag, value, phrase):
    make_llama(tmp_path / "hf")
    save_as_checkpoint(tmp_path / "hf", tmp_path / "run")
    _fails_with(["export", str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--no-tokenizer", flag, value],
                capsys, phrase)
    assert not (tmp_path / "out").exists()


def _with_run_files(run: Path, run_config: object, meta: object | None = None) -> None:
    (run / "run_config.json").write_text(json.dumps(run_config))
    if meta is not None:
        (run.parent / "data").mkdir(exist_ok=True)
        (run.parent / "data" / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(("run_config", "meta", "phrase"), [
    # a run_config.json whose train section, or a dataset whose meta.json, is not an object (AttributeError once)
    ({"train": 5}, None, "wrote"),                                   # no train config: no tokenizer to ship
    ({"train": {"data": "DATA"}}, [], "meta.json is not a JSON object"),
    ({"train": {"data": "DATA"}}, 5, "meta.json is not a JSON object"),
])
def test_export_of_a_run_with_damaged_run_files(tmp_path, capsys, run_config, meta, phrase):
    make_llama(tmp_path / "hf")
    save_as_checkpoint(tmp_path / "hf", tmp_path / "run")
    data = str(tmp_path / "data")
    _with_run_files(tmp_path / "run", json.loads(json.dumps(run_config).replace("DATA", data)), meta)
    argv = ["export", str(tmp_path / "run"), "--out", str(tmp_path / "out")]
    if phrase == "wrote":
        main_ok(argv)
        assert phrase in capsys.readouterr().out
    else:
        _fails_with(argv, capsys, phrase, "--tokenizer")
        assert not (tmp_path / "out").exists()


def test_export_of_a_run_on_a_mixture_ships_the_datasets_tokenizer(tmp_path, capsys, tokenized_data):
    # run_config.json keeps a mixture as DIR_A=W,DIR_B=W: it was read as one directory, "cannot be read"
    make_llama(tmp_path / "hf")
    save_as_checkpoint(tmp_path / "hf", tmp_path / "run")
    _with_run_files(tmp_path / "run", {"train": {"data": f"{tokenized_data}=0.7,{tokenized_data}-copy=0.3"}})
    main_ok(["export", str(tmp_path / "run"), "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (tokenized_data / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("files", [["not", "a", "table"], {".metadata": {"sha256": "0" * 64}},
                                   {".metadata": {"bytes": "12", "sha256": "0" * 64}}, {".metadata": 5}])
def test_a_checkpoint_whose_manifest_lists_files_badly_is_not_exported(tmp_path, capsys, files):
    from bastion.rundir.checkpoints import MANIFEST

    make_llama(tmp_path / "hf")
    step_dir = save_as_checkpoint(tmp_path / "hf", tmp_path / "run")
    manifest = json.loads((step_dir / MANIFEST).read_text())
    (step_dir / MANIFEST).write_text(json.dumps(dict(manifest, files=files)))   # was a KeyError / AttributeError
    _fails_with(["export", str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--no-tokenizer"], capsys,
                "cannot be exported", "manifest does not give every file its bytes and sha256")
    assert not (tmp_path / "out").exists()


# ---- train --init-from: checked before any worker starts ------------------------------------------------
@pytest.fixture()
def train_setup(tmp_path, monkeypatch):
    from bastion.launch import local
    from bastion.runtime.data import prepare_dataset

    (tmp_path / "t.txt").write_bytes(b"some text for tokens " * 200)
    prepare_dataset([tmp_path / "t.txt"], tmp_path / "data")
    (tmp_path / "plan.json").write_text(json.dumps({"dp": 1, "micro_batch": 1, "global_batch": 2,
                                                    "precision": "fp32"}))
    launches = []
    monkeypatch.setattr(local, "run", lambda command, **_: launches.append(list(command)) or 0)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    make_llama(tmp_path / "hf", vocab_size=256)
    return tmp_path, launches


def _train(tmp_path, *extra, model=None):
    return ["train", "--model", model or str(tmp_path / "hf" / "config.json"), "--plan", str(tmp_path / "plan.json"),
            "--data", str(tmp_path / "data"), "--steps", "2", "--run-dir", str(tmp_path / "run"), *extra]


def test_init_from_goes_into_the_run_config(train_setup):
    tmp_path, launches = train_setup
    main_ok(_train(tmp_path, "--init-from", str(tmp_path / "hf")))
    config = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert config["train"]["init_from"] == str((tmp_path / "hf").resolve()) and len(launches) == 1
    assert config["model"]["rope_theta"] == 5000.0 and config["model"]["norm_eps"] == 1e-6


def test_init_from_bad_inputs_are_guidance(train_setup, capsys):
    tmp_path, launches = train_setup
    hf = tmp_path / "hf"
    _fails_with(_train(tmp_path, "--init-from", str(hf), "--resume-from", str(tmp_path)), capsys,
                "--init-from and --resume-from")
    other = dict(json.loads((hf / "config.json").read_text()), intermediate_size=64)
    (tmp_path / "other.json").write_text(json.dumps(other))
    _fails_with(_train(tmp_path, "--init-from", str(hf), model=str(tmp_path / "other.json")), capsys,
                "holds another model", "ffn_hidden_size 64 vs 48")
    weights = hf / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])   # truncated download
    _fails_with(_train(tmp_path, "--init-from", str(hf)), capsys, "not a readable safetensors file")
    weights.write_bytes(b"\xff" * 64)
    _fails_with(_train(tmp_path, "--init-from", str(hf)), capsys, "not a readable safetensors file")
    weights.unlink()
    (hf / "pytorch_model.bin").write_bytes(b"pickle")
    _fails_with(_train(tmp_path, "--init-from", str(hf)), capsys, "pickle weights")
    _fails_with(_train(tmp_path, "--init-from", str(tmp_path / "nowhere")), capsys, "is not a directory")
    assert launches == [] and not (tmp_path / "run" / "run_config.json").exists()


def test_without_safetensors_installed_the_message_says_what_to_install(train_setup, capsys, monkeypatch):
    tmp_path, launches = train_setup
    monkeypatch.setitem(sys.modules, "safetensors", None)   # as if not installed
    _fails_with(_train(tmp_path, "--init-from", str(tmp_path / "hf")), capsys, "pip install 'bastion[interop]'")
    _fails_with(["export", str(tmp_path / "run"), "--out", str(tmp_path / "out")], capsys,
                "`safetensors` package, which is not installed")
    assert launches == [] and not (tmp_path / "run" / "run_config.json").exists()
