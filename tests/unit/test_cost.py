"""Cost of a run: arithmetic identities, price selection, and the guidance errors."""

from __future__ import annotations

import json

import pytest

from bastion.cost import OnPremAssumptions, cloud_prices, onprem_usd_per_gpu_hour, run_cost
from bastion.errors import ConfigError
from bastion.specs import ParallelPlan, load_cluster, load_model
from bastion.specs.hardware import load_accelerator
from helpers.cli import run, user_error

PLAN_70B = ParallelPlan(dp=128, tp=8, global_batch=1024, micro_batch=1, zero_stage=3, sequence_parallel=True)


def test_cloud_prices_keep_only_the_newest_row_per_offering() -> None:
    aws = [p for p in cloud_prices("h100-sxm", "on-demand") if p.provider == "AWS"]
    # launch price $12.29 (2023) was superseded by the June 2025 cut ($6.88, read 2026-11-09)
    assert [p.usd_per_gpu_hour for p in aws] == [6.88]
    prices = [p.usd_per_gpu_hour for p in cloud_prices("h100-sxm")]
    assert prices == sorted(prices)


def test_onprem_hourly_cost_is_capital_plus_facility_plus_energy() -> None:
    acc = load_accelerator("h100-sxm")
    parts = onprem_usd_per_gpu_hour(acc, OnPremAssumptions(utilisation=1.0, amortisation_years=5.0))
    assert parts["capital"] == pytest.approx(45_800 / (5 * 8760))
    assert parts["energy"] == pytest.approx(0.700 * 7.5 / 5.6 * 1.3 * 0.0825)
    assert parts["total"] == pytest.approx(parts["capital"] + parts["facility"] + parts["energy"])
    half = onprem_usd_per_gpu_hour(acc, OnPremAssumptions(utilisation=0.5))
    assert half["capital"] == pytest.approx(2 * parts["capital"])  # idle hours are paid by busy ones


def test_run_cost_chains_estimate_goodput_and_prices() -> None:
    model, cluster = load_model("llama3-70b"), load_cluster("h100-sxm:1024")
    cost = run_cost(model, cluster, PLAN_70B, tokens=1e12)
    assert cost.compute_hours == pytest.approx(1e12 / cost.tokens_per_s / 3600)
    assert 0.5 < cost.expected_goodput < 1.0
    assert cost.wall_hours == pytest.approx(cost.compute_hours / cost.expected_goodput)
    assert cost.gpu_hours == pytest.approx(cost.wall_hours * 1024)
    assert cost.onprem_usd == pytest.approx(cost.gpu_hours * cost.onprem_usd_per_gpu_hour["total"])
    assert cost.cloud and all(row["usd"] == pytest.approx(cost.gpu_hours * row["usd_per_gpu_hour"])
                              for row in cost.cloud)
    # a shorter MTBF can only lower goodput and raise cost
    worse = run_cost(model, cluster, PLAN_70B, tokens=1e12, mtbf_hours=2.0)
    assert worse.expected_goodput < cost.expected_goodput and worse.wall_hours > cost.wall_hours


def test_unknown_capex_is_a_stated_gap_not_a_guess() -> None:
    cluster = load_cluster("a100-80g:64")
    plan = ParallelPlan(dp=64, global_batch=512, micro_batch=1, zero_stage=3)
    cost = run_cost(load_model("llama2-7b"), cluster, plan, tokens=1e11)
    assert cost.onprem_usd is None and any("no on-prem" in a and "a100-80g" in a
                                           for a in cost.assumptions)
    given = run_cost(load_model("llama2-7b"), cluster, plan, tokens=1e11,
                     onprem=OnPremAssumptions(capex_per_gpu_usd=20_000))
    assert given.onprem_usd is not None and given.onprem_usd > 0


def test_bad_inputs_are_guidance_errors() -> None:
    with pytest.raises(ConfigError, match="token budget"):
        run_cost(load_model("llama3-70b"), load_cluster("h100-sxm:1024"), PLAN_70B, tokens=0)
    with pytest.raises(ConfigError, match="utilisation"):
        OnPremAssumptions(utilisation=1.5)


def test_cost_cli_json(tmp_path, capsys) -> None:
    plan = PLAN_70B.save(tmp_path / "plan.json")
    cost = ["cost", "--model", "llama3-70b", "--cluster", "h100-sxm:1024", "--tokens", "1e12"]
    code, out, err = run([*cost, "--plan", str(plan), "--json"], capsys)   # in this process
    assert code == 0, err
    data = json.loads(out)
    assert data["plan"] == PLAN_70B.to_dict() and data["gpu_hours"] > 0
    # the recovery policies side by side, for this plan's dp replicas and the cluster's nodes
    policies = {p["policy"]: p for p in data["recovery_policies"]}
    assert list(policies) == ["requeue", "shrink", "spares", "replica-drop"]
    assert data["recommended_policy"] == max(policies.values(), key=lambda p: p["goodput"])["policy"]
    assert policies["spares"]["allocated_nodes"] == policies["requeue"]["allocated_nodes"] + 1
    assert policies["replica-drop"]["applicable"] == (PLAN_70B.dp >= 2)
    user_error(cost, capsys, "--global-batch")
    user_error([*cost, "--plan", str(plan), "--spares", "-1"], capsys, "--spares")


def test_an_accelerator_without_a_published_power_figure_has_no_energy_not_zero() -> None:
    from bastion.cost.onprem import gpu_power_kw
    from bastion.errors import ConfigError
    from bastion.specs.hardware import load_accelerator

    with pytest.raises(ConfigError, match="no published power figure for tpu-v5p"):
        gpu_power_kw(load_accelerator("tpu-v5p"))
    assert gpu_power_kw(load_accelerator("h100-sxm")) > 0.7
