"""Accelerators with their own published rates (predict/data/accelerator_rates.toml) run at those rates, not at
the catalog's matmul_efficiency scaling of the H200 calibration, and `estimate` says which."""

from __future__ import annotations

import tomllib
from dataclasses import replace

import pytest

from bastion.predict import compute, estimate
from bastion.predict.calibration import (
    ACCELERATOR_RATES_FILE,
    CURVES,
    DATA_DIR,
    H200_MATMUL_EFFICIENCY,
    device_scale,
    own_rates,
)
from bastion.specs import ParallelPlan, load_cluster, load_model
from bastion.specs.hardware import load_accelerator

RATES = tomllib.loads((DATA_DIR / ACCELERATOR_RATES_FILE).read_text())
OWN = ("b200", "gb200", "mi300x")


@pytest.mark.parametrize("name", OWN)
def test_own_rates_are_the_published_fraction_over_the_reference_fraction(name: str) -> None:
    row, ref = RATES[name], RATES["reference"]
    expected = (row["gemm_bf16_tflops"] / row["gemm_bf16_theory"]) / (ref["gemm_bf16_tflops"]
                                                                      / ref["gemm_bf16_theory"])
    acc = load_accelerator(name)
    assert device_scale(acc, "bf16") == pytest.approx(expected)
    # the catalog's scaling gives another number: the own rate is what is used
    assert device_scale(acc, "bf16") != pytest.approx(acc.matmul_efficiency / H200_MATMUL_EFFICIENCY, rel=1e-3)


def test_every_own_rate_cites_its_source_and_names_a_catalog_accelerator() -> None:
    for name, row in RATES.items():
        assert row["source"].strip()
        if name != "reference":
            assert load_accelerator(name).name == name
            assert row["power_w"] > 0


def test_missing_curves_fall_back_to_the_cards_own_bf16_rate_then_to_the_catalog() -> None:
    mi300x = load_accelerator("mi300x")
    assert "fp8" not in own_rates("mi300x").scale and "attention" not in own_rates("mi300x").scale
    assert device_scale(mi300x, "fp8") == device_scale(mi300x, "attention") == device_scale(mi300x, "bf16")
    b200 = load_accelerator("b200")
    assert len({round(device_scale(b200, c), 6) for c in CURVES}) == 3  # bf16, fp8 and attention each published
    h100 = load_accelerator("h100-sxm")
    assert own_rates("h100-sxm") is None
    assert device_scale(h100, "fp8") == pytest.approx(h100.matmul_efficiency / H200_MATMUL_EFFICIENCY)


@pytest.mark.parametrize("name", OWN)
def test_gemm_time_follows_the_own_rate(name: str) -> None:
    acc = load_accelerator(name)
    own = compute.gemm_time(acc, "bf16", 8192, 8192, 8192)
    # the same card with no published rates (a name absent from the rates file) runs at the catalog scaling
    scaled = compute.gemm_time(replace(acc, name=f"{name}-unlisted"), "bf16", 8192, 8192, 8192)
    ratio = device_scale(acc, "bf16") / (acc.matmul_efficiency / H200_MATMUL_EFFICIENCY)
    assert scaled / own == pytest.approx(ratio, rel=1e-6)


@pytest.mark.parametrize(("cluster", "own"), [("mi300x:8", True), ("b200:8", True), ("h100-sxm:8", False)])
def test_estimate_assumptions_name_where_the_rates_come_from(cluster: str, own: bool) -> None:
    est = estimate(load_model("llama3-8b"), load_cluster(cluster), ParallelPlan(dp=8, global_batch=8), 4096)
    line = next(a for a in est.assumptions if "H200 efficiency curves" in a)
    if own:
        assert "own published measurements" in line and ACCELERATOR_RATES_FILE in line and "MAMF" in line
    else:
        assert "scaled from the H200 calibration" in line and "matmul_efficiency" in line
