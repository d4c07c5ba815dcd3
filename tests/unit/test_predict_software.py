"""Attention kernels and software stacks: the rules of kernels.py, the data files behind them, and how
`validate`, `estimate` and `plan` pick the software a prediction is made for."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest

from bastion.errors import ConfigError
from bastion.predict import PredictOptions, estimate
from bastion.predict.frameworks import (
    SoftwareFacts,
    default_recipe,
    facts_from_row,
    framework_releases,
    resolve,
)
from bastion.predict.kernels import attention_kernels, kernel_efficiency
from bastion.predict.options import PRODUCTION_STACK
from bastion.predict.software import software_stack, software_stacks
from bastion.predict.validate import PUBLIC_CASES, predict_case, read_cases, row_software
from bastion.specs import ParallelPlan, load_cluster, load_model
from bastion.specs.hardware import accelerator_names, load_accelerator
from helpers.cli import run

# ---- kernels -------------------------------------------------------------------------------------------------

def test_the_calibrated_kernel_is_unchanged_on_every_card() -> None:
    for arch in ("ampere", "hopper", "blackwell", "cdna3", ""):
        assert kernel_efficiency("sdpa", arch, 0.41, 0.6) == 0.41


def test_flash_attention_2_is_capped_only_on_cards_newer_than_ampere() -> None:
    assert kernel_efficiency("flash-attn-2", "ampere", 0.6, 0.6) == 0.6
    assert kernel_efficiency("flash-attn-2", "hopper", 0.6, 0.6) == 0.35
    assert kernel_efficiency("flash-attn-2", "blackwell", 0.6, 0.6) == 0.35
    # below the cap (short sequences) the calibrated rate stands
    assert kernel_efficiency("flash-attn-2", "hopper", 0.25, 0.6) == 0.25
    # not an NVIDIA generation: no rule applies
    assert kernel_efficiency("flash-attn-2", "cdna3", 0.6, 0.6) == 0.6


def test_the_triton_kernel_lowers_the_ceiling_of_flash_attention_2() -> None:
    slowdown = attention_kernels()["flash-attn-triton"].slowdown
    assert kernel_efficiency("flash-attn-triton", "ampere", 0.6, 0.6) == pytest.approx(0.6 / slowdown)
    assert kernel_efficiency("flash-attn-triton", "hopper", 0.6, 0.6) == pytest.approx(0.35 / slowdown)
    # where every kernel is limited alike (short sequences) it is no slower than the rate there
    assert kernel_efficiency("flash-attn-triton", "ampere", 0.2, 0.6) == 0.2


def test_every_kernel_names_its_source_and_a_known_reference() -> None:
    kernels = attention_kernels()
    assert "sdpa" in kernels
    for k in kernels.values():
        assert k.source and k.description
        assert not k.relative_to or k.relative_to in kernels
        assert k.slowdown >= 1.0


def test_every_accelerator_names_its_generation() -> None:
    for name in accelerator_names():
        assert load_accelerator(name).arch, name


def test_an_unknown_kernel_is_a_guidance_error() -> None:
    with pytest.raises(ConfigError, match="flash-attn-2"):
        PredictOptions(attention_kernel="flash3")


def test_an_older_kernel_makes_a_long_sequence_step_slower_on_hopper_not_on_ampere() -> None:
    model = load_model("llama3-8b", 32768)
    plan = ParallelPlan(dp=8, zero_stage=3, global_batch=8, recompute="full")
    step = {}
    for acc in ("h100-sxm", "a100-80g"):
        cluster = load_cluster(f"{acc}:8")
        for kernel in ("sdpa", "flash-attn-2"):
            step[acc, kernel] = estimate(model, cluster, plan, options=PredictOptions(attention_kernel=kernel)
                                         ).step_time_s
    assert step["h100-sxm", "flash-attn-2"] > 1.2 * step["h100-sxm", "sdpa"]
    assert step["a100-80g", "flash-attn-2"] == step["a100-80g", "sdpa"]


# ---- stacks --------------------------------------------------------------------------------------------------

def test_the_production_stack_in_the_data_file_is_the_one_the_code_names() -> None:
    assert software_stack("production").options == PRODUCTION_STACK
    # bastion's runtime differs from the defaults only in where it puts the experts (ep carved from dp × cp), in
    # the kernel its experts' GEMMs run (torch._grouped_mm), in what its DTensor sequence parallelism keeps of
    # the matmuls' gathered inputs, in how often FSDP2 runs its collectives and in its fp32 gradients
    assert software_stack("bastion").options == PredictOptions(moe_expert_layout="bastion", sp_gathered_inputs=True,
                                                               grouped_gemm="torch_grouped_mm", runtime_fsdp=True,
                                                               fp32_gradients=True)


def test_every_stack_and_every_framework_release_cites_its_evidence() -> None:
    for stack in software_stacks().values():
        assert stack.source and stack.description
    releases = framework_releases()
    assert {"megatron-lm", "nemo", "megatron-bridge", "torchtitan", "llm-foundry", "bastion"} <= set(releases)
    for entries in releases.values():
        for r in entries:
            assert r.source and r.stack in software_stacks(), r


def test_a_framework_release_picks_the_entry_it_falls_under() -> None:
    stack, _, notes = resolve(SoftwareFacts(framework="nemo", version="2024-03"))
    assert stack.name == "nemo-2024-03" and "falls under the entry since 2024-01" in notes[0]
    assert resolve(SoftwareFacts(framework="nemo", version="2024-07"))[0].name == "production"
    # before the first entry: the first; no version: the newest, and the assumptions say so
    assert resolve(SoftwareFacts(framework="megatron-lm", version="2018-01"))[0].name == "megatron-lm-2021"
    stack, _, notes = resolve(SoftwareFacts(framework="megatron-lm"))
    assert stack.name == "production" and "framework_version not given" in notes[0]


def test_nemo_megatron_releases_of_2022_23_run_megatron_attention_and_their_own_recipes() -> None:
    # the launcher's GPT-3 configs: unfused attention with dropout, no Transformer Engine, until the 2024 entries
    for version in ("2022-01", "2022-09", "2023-11"):
        stack, options, _ = resolve(SoftwareFacts(framework="nemo", version=version))
        assert stack.name == "nemo-megatron-2022" and not options.flash_attention and options.dropout
    assert resolve(SoftwareFacts(framework="nemo", version="2024-01"))[0].name == "nemo-2024-03"
    recipe = {v: default_recipe(SoftwareFacts(framework="nemo", version=v))[0]
              for v in ("2022-05", "2022-06", "2022-08")}
    # sequence parallelism and selective recompute from 22.06; the distributed optimizer only from 22.08
    assert recipe["2022-05"] == {"sequence_parallel": False, "zero_stage": 0}
    assert recipe["2022-06"] == {"sequence_parallel": True, "recompute": "selective", "zero_stage": 0}
    assert recipe["2022-08"] == {"sequence_parallel": True, "recompute": "selective"}


def test_an_unknown_framework_takes_the_documented_default_and_says_so() -> None:
    for facts in (SoftwareFacts(), SoftwareFacts(framework="maxtext", version="2025-01")):
        stack, options, notes = resolve(facts)
        assert stack.name == "production" and options == PRODUCTION_STACK
        assert "assumed production" in notes[0]


def test_explicit_behaviours_override_what_the_release_implies() -> None:
    _, options, notes = resolve(SoftwareFacts(framework="torchtitan", version="2024-12", compile=True,
                                              attention_kernel="cudnn"))
    assert options.compiled and options.attention_kernel == "sdpa"
    _, options, _ = resolve(SoftwareFacts(framework="nemo", version="2025-01", attention_kernel="unfused"))
    assert not options.flash_attention
    _, options, notes = resolve(SoftwareFacts(framework="nemo", version="2025-01", fp8_recipe="mxfp8"))
    assert options == replace(PRODUCTION_STACK, fp8_recipe="mxfp8") and any("fp8_recipe: mxfp8" in n for n in notes)
    # accepted and validated, but not modelled: the options stay, the assumptions say so (recompute_layers is a
    # plan field the row's plan carries)
    _, options, notes = resolve(SoftwareFacts(framework="nemo", version="2025-01", tp_overlap=True,
                                              recompute_layers=4))
    assert options == PRODUCTION_STACK and any("not modelled yet" in n for n in notes)


def test_sdpa_before_pytorch_2_5_runs_flash_attention_2_and_slows_hopper_only() -> None:
    """PyTorch's SDPA had no Hopper-native backend before 2.5 (2024-10, its cuDNN backend): an `sdpa` fact with an
    earlier release month runs at FlashAttention-2's rate, which on an H100 is capped and on an A100 is not."""
    _, before, notes = resolve(SoftwareFacts(framework="other", version="2024-03", attention_kernel="sdpa"))
    assert before.attention_kernel == "flash-attn-2" and any("PyTorch 2.5" in n for n in notes)
    for version in ("2024-10", ""):
        _, after, _ = resolve(SoftwareFacts(framework="other", version=version, attention_kernel="sdpa"))
        assert after.attention_kernel == "sdpa"
    model, plan = load_model("llama3-8b"), ParallelPlan(dp=8, zero_stage=3, micro_batch=1, global_batch=8)
    step = {(acc, options.attention_kernel): estimate(model, load_cluster(f"{acc}:8"), plan, seq_len=8192,
                                                      options=options).step_time_s
            for acc in ("h100-sxm", "a100-80g") for options in (before, after)}
    assert step["h100-sxm", "flash-attn-2"] > 1.01 * step["h100-sxm", "sdpa"]
    assert step["a100-80g", "flash-attn-2"] == pytest.approx(step["a100-80g", "sdpa"])


def test_the_moe_dispatcher_follows_the_release_and_the_moe_facts_override_it() -> None:
    # Megatron-LM's --moe-token-dispatcher-type defaults to allgather; torchtitan and unknown frameworks keep the
    # stack's all-to-all
    _, options, _ = resolve(SoftwareFacts(framework="megatron-lm", version="2025-09"))
    assert options.moe_dispatcher == "allgather" and options.moe_a2a_overlap == 0.0
    assert resolve(SoftwareFacts(framework="torchtitan", version="2025-10"))[1].moe_dispatcher == "alltoall"
    assert resolve(SoftwareFacts())[1].moe_dispatcher == "alltoall"
    _, options, notes = resolve(SoftwareFacts(framework="megatron-lm", version="2025-09", moe_dispatcher="deepep",
                                              moe_a2a_overlap=True))
    assert (options.moe_dispatcher, options.moe_a2a_overlap) == ("deepep", 1.0)
    assert "moe_dispatcher: deepep (given)" in notes and any(n.startswith("moe_a2a_overlap: on") for n in notes)
    # the case-file columns are read like the other facts
    facts = facts_from_row({"framework": "torchtitan", "moe_dispatcher": "hybridep", "moe_a2a_overlap": "0"})
    assert (facts.moe_dispatcher, facts.moe_a2a_overlap) == ("hybridep", False)
    assert facts_from_row({"framework": "torchtitan"}).moe_a2a_overlap is None  # a file without the columns
    with pytest.raises(ConfigError, match="Unknown moe_dispatcher 'nccl'"):
        SoftwareFacts(moe_dispatcher="nccl")


@pytest.mark.parametrize("cells", [{"framework": "megatron"}, {"framework_version": "2024"},
                                   {"fp8_recipe": "per-tensor"}, {"compile": "yes"},
                                   {"recompute_layers": "-1"}, {"attention_kernel": "fa3"},
                                   {"moe_dispatcher": "flex"}, {"moe_a2a_overlap": "yes"}])
def test_a_bad_software_fact_skips_the_row_with_what_to_give(cells: dict[str, str]) -> None:
    from bastion.predict.validate import RowSkipped

    with pytest.raises(RowSkipped, match="software: "):
        predict_case(_row(**cells))


def test_an_unknown_stack_name_suggests_the_close_one() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'production'"):
        software_stack("prodution")


# ---- validate's choice per row -------------------------------------------------------------------------------

def _row(**cells: str) -> dict[str, str]:
    row = dict(read_cases(PUBLIC_CASES)[0])  # R0001, Megatron-LM 2021
    row.update(cells)
    return row


def test_a_row_takes_its_frameworks_stack_then_its_column_then_the_flag() -> None:
    options, where = row_software(_row())
    assert where.startswith("software: megatron-lm 2021-04 -> megatron-lm-2021") and not options.flash_attention
    options, where = row_software(_row(software="torchtitan-2024"))
    assert where == "software: torchtitan-2024 (the row's software column)"
    assert options.attention_kernel == "flash-attn-2"
    options, where = row_software(_row(software="torchtitan-2024"), software="production")
    assert where == "software: production (given for every row)" and options == PRODUCTION_STACK


def test_the_publication_never_picks_the_software() -> None:
    for cells in ({"source_group": "bloom"}, {"source": "torchtitan benchmarks"}, {"notes": "Megatron-DeepSpeed"}):
        assert row_software(_row(**cells)) == row_software(_row())
    options, where = row_software(_row(framework="", framework_version=""))
    assert options == PRODUCTION_STACK and "framework not given; assumed production" in where


def test_an_unknown_software_cell_skips_that_row_with_the_names_it_knows() -> None:
    from bastion.predict.validate import RowSkipped

    with pytest.raises(RowSkipped, match="megatron-lm-2021"):
        predict_case(_row(software="megatron-2099"))


def test_the_software_changes_the_prediction_of_the_same_row() -> None:
    row = _row()
    own = predict_case(row)
    other = predict_case(row, software="production")
    assert own.software == "megatron-lm-2021"
    assert other.predicted_s < own.predicted_s  # flash attention without dropout is faster


def test_a_software_column_in_a_case_file_is_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = read_cases(PUBLIC_CASES)[:2]
    path = tmp_path / "cases.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*rows[0].keys(), "software"])
        writer.writeheader()
        writer.writerow({**rows[0], "software": "production"})
        writer.writerow({**rows[1], "software": ""})
    code, out, _ = run(["validate", str(path), "--json"], capsys)
    assert code == 0
    first, second = json.loads(out)["cases"]
    assert first["assumptions"][0] == "software: production (the row's software column)"
    assert second["assumptions"][0].startswith("software: megatron-lm 2021-04 -> megatron-lm-2021")


# ---- commands ------------------------------------------------------------------------------------------------

def test_software_lists_stacks_and_kernels(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["software", "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    assert {s["name"] for s in data["stacks"]} == set(software_stacks())
    assert {k["name"] for k in data["attention_kernels"]} == set(attention_kernels())
    code, out, _ = run(["software"], capsys)
    assert code == 0 and "llm-foundry-2023" in out and "flash-attn-triton" in out


@pytest.mark.parametrize("command", [
    ["validate", "--software", "nope"],
    ["estimate", "-m", "tiny", "-c", "cpu:2", "--software", "nope"],
    ["plan", "-m", "tiny", "-c", "cpu:2", "-b", "4", "--software", "nope"],
    ["cost", "-m", "tiny", "-c", "cpu:2", "--global-batch", "4", "--tokens", "1e6", "--software", "nope"],
])
def test_an_unknown_software_flag_is_exit_2_with_the_names(command: list[str],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(command, capsys)
    assert code == 2
    assert "Unknown software stack 'nope'" in err and "production" in err and "Traceback" not in err + out


def test_estimate_and_plan_predict_for_the_software_named(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["-m", "llama3-8b", "-c", "h100-sxm:8", "--seq-len", "32768"]
    steps = {}
    for software in ("bastion", "torchtitan-2024"):
        code, out, _ = run(["estimate", *base, "--zero", "3", "--recompute", "full", "--software", software,
                            "--json"], capsys)
        assert code == 0
        data = json.loads(out)
        assert any(a.startswith(f"software: {software}") for a in data["assumptions"])
        steps[software] = data["step_time_s"]
    assert steps["torchtitan-2024"] > steps["bastion"]  # FlashAttention-2 on a Hopper card
    code, out, _ = run(["plan", *base, "-b", "8", "-k", "1", "--software", "torchtitan-2024", "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    assert data["software"] == "torchtitan-2024"


def test_replace_keeps_the_kernel_check() -> None:
    with pytest.raises(ConfigError):
        replace(PRODUCTION_STACK, attention_kernel="nope")


# ---- op-level selective checkpointing (torchtitan) -----------------------------------------------------------

def test_every_second_matmul_keeps_more_than_full_and_less_than_none_and_costs_in_between() -> None:
    from bastion.predict import flops
    from bastion.predict.memory import activation_bytes_per_token

    model = load_model("llama3-8b")
    op = PredictOptions(selective_recompute="every-second-matmul")
    kept = {mode: activation_bytes_per_token(model, 8192, 1, False, mode, "bf16", op)
            for mode in ("none", "selective", "full")}
    assert kept["full"] < kept["selective"] < kept["none"]
    # block input, wq and wv outputs, attention output and log-sum-exp, w1 and w2 outputs: 2 bytes each
    h, q, kv, f = model.hidden_size, model.q_width, model.kv_width, model.ffn_hidden_size
    assert kept["selective"] == 2 * (h + q + kv + q + f + h) + 4 * model.num_heads
    # the FLOPs it repeats: wk, wo and w3 forward, nothing of attention
    assert flops.recompute_flops_per_token(model, 8192, "selective", "every-second-matmul") == (
        model.num_layers * 2 * (h * kv + q * h + f * h))
    cluster = load_cluster("h100-sxm:8")
    step = {}
    for mode in ("none", "selective", "full"):
        plan = ParallelPlan(dp=8, zero_stage=3, global_batch=8, recompute=mode)
        step[mode] = estimate(model, cluster, plan, options=op).step_time_s
    assert step["none"] < step["selective"] < step["full"]


def test_an_unknown_selective_scope_is_a_guidance_error() -> None:
    with pytest.raises(ConfigError, match="every-second-matmul"):
        PredictOptions(selective_recompute="some-ops")


# ---- a host CPU's ranks share its cores ----------------------------------------------------------------------

def test_ranks_on_a_host_cpu_share_its_cores_and_memory_bandwidth() -> None:
    from bastion.predict.estimate import per_rank

    cpu = load_accelerator("cpu")
    assert cpu.host_cores == 2
    one, two, four = (per_rank(load_cluster(f"cpu:{n}")).accelerator for n in (1, 2, 4))
    # one thread per rank: at most one core each, half a core each when four ranks share two
    assert one.peak_tflops("fp32") == two.peak_tflops("fp32") == cpu.peak_tflops("fp32")
    assert four.peak_tflops("fp32") == pytest.approx(cpu.peak_tflops("fp32") / 2)
    assert four.hbm_bandwidth_gbs == pytest.approx(cpu.hbm_bandwidth_gbs / 4)
    assert one.hbm_bandwidth_gbs == pytest.approx(cpu.hbm_bandwidth_gbs / 2)
    # dedicated devices are what the catalog says, however many share a node
    h100 = load_cluster("h100-sxm:8")
    assert per_rank(h100) is h100


def test_four_ranks_on_two_cores_take_twice_as_long_per_flop_as_two() -> None:
    model = load_model("small", 256)
    plan = ParallelPlan(dp=2, tp=2, global_batch=8, micro_batch=4, sequence_parallel=True, precision="fp32")
    two_each = estimate(model, load_cluster("cpu:4"), plan)  # 4 ranks, half a core each
    plan_dp = ParallelPlan(dp=2, global_batch=8, micro_batch=4, precision="fp32")
    one_each = estimate(model, load_cluster("cpu:2"), plan_dp)  # 2 ranks, a core each, twice the work per rank
    assert two_each.time.compute == pytest.approx(one_each.time.compute, rel=0.05)


def test_cost_prices_the_run_on_the_software_named(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["cost", "-m", "llama3-8b", "-c", "h100-sxm:8", "--seq-len", "32768", "--global-batch", "8",
            "--tokens", "1e9", "--json"]
    code, out, _ = run([*base, "--software", "torchtitan-2024"], capsys)
    assert code == 0
    titan = json.loads(out)
    code, out, _ = run(base, capsys)
    own = json.loads(out)
    assert (titan["software"], own["software"]) == ("torchtitan-2024", "bastion")
    assert titan["step_time_s"] > own["step_time_s"]  # FlashAttention-2 on a Hopper card, op-level recompute


def test_the_validate_table_names_each_rows_stack(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["validate"], capsys)
    assert code == 0
    assert "software" in out and "megatron-lm-2021" in out and "llm-foundry-2023" in out
    assert predict_case(_row()).software == "megatron-lm-2021"
    assert predict_case(_row(), PRODUCTION_STACK).software == ""  # options given directly: no stack name


def test_estimate_plan_and_cost_accept_a_framework_release(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["-m", "llama3-8b", "-c", "h100-sxm:8", "--seq-len", "32768"]
    code, out, _ = run(["estimate", *base, "--zero", "3", "--recompute", "full", "--framework", "torchtitan",
                        "--framework-version", "2024-12", "--json"], capsys)
    assert code == 0
    titan = json.loads(out)
    code, out, _ = run(["estimate", *base, "--zero", "3", "--recompute", "full", "--software", "torchtitan-2024",
                        "--json"], capsys)
    assert titan["step_time_s"] == json.loads(out)["step_time_s"]
    assert any(a.startswith("software: torchtitan 2024-12 -> torchtitan-2024") for a in titan["assumptions"])
    code, out, _ = run(["cost", *base, "--global-batch", "8", "--tokens", "1e9", "--framework", "nemo", "--json"],
                       capsys)
    assert code == 0 and json.loads(out)["software"] == "production"
    code, out, _ = run(["plan", "-m", "tiny", "-c", "cpu:2", "-b", "4", "--framework", "maxtext", "--json"], capsys)
    assert code == 0 and json.loads(out)["software"] == "production"  # no documented releases: the default


@pytest.mark.parametrize("flags", [["--framework-version", "2024-03"], ["--framework", "megatron"],
                                   ["--framework", "nemo", "--framework-version", "24.07"],
                                   ["--framework", "nemo", "--software", "production"]])
def test_a_bad_framework_request_is_exit_2_with_what_to_give(flags: list[str],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["estimate", "-m", "tiny", "-c", "cpu:2", *flags], capsys)
    assert code == 2 and "To fix" in err and "Traceback" not in err + out
