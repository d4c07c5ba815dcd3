"""Accelerators with their own published rates (predict/data/accelerator_rates.toml) run at those rates, not at
the catalog's matmul_efficiency scaling of the H200 calibration, and `estimate` says which."""

from __future__ import annotations

import tomllib
from dataclasses import replace

import pytest

from bastion.errors import ConfigError
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
from bastion.specs.hardware import accelerator_for_device, load_accelerator

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


def test_a_power_capped_part_runs_at_its_sustained_clock_not_its_siblings() -> None:
    pcie, sxm = load_accelerator("a100-pcie"), load_accelerator("a100-40g")
    # the same die and datasheet peaks, 250 W against 400 W: only the clock it holds differs
    assert pcie.peak_tflops("bf16") == sxm.peak_tflops("bf16") and pcie.tdp_w < sxm.tdp_w
    assert pcie.sustained_clock_fraction < 1.0 == sxm.sustained_clock_fraction
    assert pcie.sustained_clock_source
    assert device_scale(pcie) == pytest.approx(device_scale(sxm) * pcie.sustained_clock_fraction)
    shape = (8192, 8192, 8192)
    assert compute.gemm_time(pcie, "bf16", *shape) == pytest.approx(
        compute.gemm_time(sxm, "bf16", *shape) / pcie.sustained_clock_fraction)
    # attention kernels capped relative to another card scale by the same sustained rate
    flash2 = [compute.flash_attention_time(acc, "bf16", 1e12, 4096, 128, "fwdbwd", kernel="flash-attn-2")
              for acc in (pcie, sxm)]
    assert flash2[0] > flash2[1]
    # memory-bound work keeps the HBM rate: the power cap slows the tensor cores, not the memory
    assert compute.membound_time(pcie, 1e9) == compute.membound_time(sxm, 1e9)
    # a run on the PCIe card finds its own catalog row, and `estimate` says the clock was applied
    assert accelerator_for_device("NVIDIA A100-PCIE-40GB") == "a100-pcie-40g"
    assert accelerator_for_device("NVIDIA A100-SXM4-40GB") == "a100-40g"
    est = estimate(load_model("llama2-7b"), load_cluster("a100-pcie:8"), ParallelPlan(dp=8, global_batch=64), 4096)
    assert any("sustained clock 0.933 at 250 W" in line for line in est.assumptions)


def test_a_sustained_clock_fraction_outside_0_1_is_refused() -> None:
    with pytest.raises(ConfigError, match="sustained_clock_fraction"):
        replace(load_accelerator("a100-pcie"), sustained_clock_fraction=1.2)
