"""Unstated settings take the framework's own recipe for the model (predict/recipes.py, data/recipes.toml), else the
practitioner's choice, and the assumptions say which; `estimate --framework` fills its plan the same way."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

from bastion.predict.frameworks import SoftwareFacts
from bastion.predict.recipes import MODEL_SETTINGS, model_recipes, recipe_values
from bastion.predict.validate import case_estimate
from bastion.specs import load_model
from helpers.cli import run

LLAMA3_70B = load_model("llama3-70b")


def _row(**cells: str) -> dict[str, str]:
    """A Llama 3 70B run on 64 H100s (the shape of NeMo's llama3_70b recipe) that states only its degrees."""
    row = {"case_id": "X1", "model": "Llama 3 70B", "num_layers": "80", "hidden_size": "8192", "num_heads": "64",
           "num_kv_heads": "8", "ffn_hidden_size": "28672", "ffn_type": "swiglu", "vocab_size": "128256",
           "seq_len": "8192", "global_batch_size": "128", "tp": "4", "pp": "4", "cp": "2", "dp": "2",
           "zero_stage": "1", "recompute": "none", "sequence_parallel": "1", "precision": "bf16",
           "accelerator": "h100-sxm", "num_gpus": "64", "gpus_per_node": "8", "iteration_time_s": "10",
           "framework": "nemo", "framework_version": "2024-09"}
    return {**row, **cells}


def test_every_entry_cites_code_at_a_commit_and_interleaving_names_its_pp() -> None:
    for entries in model_recipes().values():
        for entry in entries:
            assert re.search(r"@[0-9a-f]{8} ", entry.source), entry
            assert any(getattr(entry, name) is not None for name in MODEL_SETTINGS), entry
            assert entry.vpp in (None, 1) or entry.pp is not None, entry


def test_the_nearest_recipe_size_sets_micro_batch_and_vpp_at_its_own_pp() -> None:
    nemo = SoftwareFacts(framework="nemo", version="2024-10")
    values = recipe_values(nemo, LLAMA3_70B, pp=4)
    assert (values.values["micro_batch"].value, values.values["vpp"].value) == (1, 5)
    assert "llama3_70b" in values.values["vpp"].why and "recipes.toml" in values.values["vpp"].why
    # the release-wide recipe (frameworks.toml) still fills what the model's recipe does not
    assert values.values["recompute"].value == "none" and "frameworks.toml" in values.values["recompute"].why
    # an interleaving chosen for pp 4 says nothing about pp 8: not taken, and said
    at_pp8 = recipe_values(nemo, LLAMA3_70B, pp=8)
    assert "vpp" not in at_pp8.values and "micro_batch" in at_pp8.values
    assert any("vpp 5 at pp 4, not at this pp 8" in note for note in at_pp8.skipped)
    # a 13B model is nearer (log scale) to the 8B recipe than to the 70B one; a 330B one to Nemotron-4 340B's
    assert "llama3_8b" in recipe_values(nemo, load_model("llama2-13b"), pp=1).values["micro_batch"].why
    big = recipe_values(nemo, replace(LLAMA3_70B, num_layers=384), pp=12)
    assert big.values["vpp"].value == 8 and "nemotron4_340b" in big.values["vpp"].why


def test_a_release_before_the_catalogued_recipes_and_an_undocumented_framework_get_none() -> None:
    assert not recipe_values(SoftwareFacts(framework="nemo", version="2024-07"), LLAMA3_70B, 4).values
    assert not recipe_values(SoftwareFacts(framework="maxtext"), LLAMA3_70B, 4).values
    assert not recipe_values(SoftwareFacts(), LLAMA3_70B, 4).values


def test_validate_takes_the_recipe_for_an_unstated_micro_batch_and_vpp_and_says_so() -> None:
    stated, est_stated, _, _ = case_estimate(_row(micro_batch_size="1", vpp="5"))
    case, est, _, _ = case_estimate(_row(micro_batch_size="", vpp=""))
    assert (est.plan.micro_batch, est.plan.vpp) == (1, 5)
    assert case.predicted_s == stated.predicted_s
    for column in ("micro_batch_size", "vpp"):
        assert any(a.startswith(f"{column}: not given; ") and "nemo's recipe llama3_70b" in a
                   for a in case.assumptions), column
    assert not any("fastest" in a for a in case.assumptions)


def test_without_a_recipe_the_practitioners_choice_is_named() -> None:
    case, est, _, _ = case_estimate(_row(micro_batch_size="", vpp="", framework="other", framework_version=""))
    assert est.plan.micro_batch == 1
    assert any(a.startswith("micro_batch_size: not given; 1, the practitioner's choice") for a in case.assumptions)
    assert any(a.startswith("vpp: not given; vpp = ") and "the practitioner's choice where no recipe says: the "
               "fastest combination that fits in memory" in a for a in case.assumptions)


def test_a_recipe_micro_batch_that_does_not_divide_the_global_batch_is_not_taken() -> None:
    # torchtitan's 70B config runs 8 sequences per rank; 8 × dp 2 does not divide a global batch of 8
    row = _row(framework="torchtitan", framework_version="2025-06", micro_batch_size="", global_batch_size="8",
               vpp="1")
    case, est, _, _ = case_estimate(row)
    assert est.plan.micro_batch == 1
    assert any("llama3_70b.toml" in a and "not taken" in a for a in case.assumptions)


def test_unstated_vpp_where_only_layers_plus_two_split_over_pp_is_not_one() -> None:
    # Llama 3 405B: 126 layers on pp 16 split only with the embedding and the head each taking a slot (128 slots)
    row = _row(model="Llama 3 405B", num_layers="126", hidden_size="16384", num_heads="128",
               ffn_hidden_size="53248", tp="8", pp="16", cp="1", dp="8", num_gpus="1024", global_batch_size="512",
               vpp="", micro_batch_size="1", framework="other", framework_version="")
    case, est, _, _ = case_estimate(row)
    assert est.plan.vpp in (2, 4, 8)
    assert not any("assumed 1" in a for a in case.assumptions if a.startswith("vpp"))
    # Megatron-Bridge's 405B recipe interleaves 2 chunks on pp 8: 128 slots over 16 chunks, taken and said
    bridge, est, _, _ = case_estimate({**row, "pp": "8", "dp": "16", "framework": "megatron-bridge",
                                       "framework_version": "2025-11"})
    assert est.plan.vpp == 2
    assert any(a.startswith("vpp: not given; 2, megatron-bridge's recipe llama31_405b") for a in bridge.assumptions)


def test_estimate_with_a_framework_fills_the_plan_from_its_recipe_and_says_per_setting(
        capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["estimate", "--model", "llama3-70b", "--cluster", "h100-sxm:64", "--tp", "4", "--pp", "4", "--json"]
    code, out, _ = run([*argv, "--framework", "nemo", "--framework-version", "2024-10"], capsys)
    assert code == 0
    data = json.loads(out)
    assert (data["plan"]["vpp"], data["plan"]["micro_batch"], data["plan"]["sequence_parallel"]) == (5, 1, True)
    assert data["plan"]["zero_stage"] == 1
    said = data["assumptions"]
    assert any(a.startswith("vpp: not given; 5, nemo's recipe llama3_70b") for a in said)
    assert any(a.startswith("zero_stage: not given; 1, nemo's recipe distributed optimizer") for a in said)
    # no framework: the plan's defaults, named as such
    code, out, _ = run(argv, capsys)
    data = json.loads(out)
    assert data["plan"]["vpp"] == 1
    assert any(a.startswith("micro_batch: not given; 1, the practitioner's choice") for a in data["assumptions"])
    assert any(a.startswith("not given, the plan's defaults: vpp 1, recompute none, zero_stage 0")
               for a in data["assumptions"])
