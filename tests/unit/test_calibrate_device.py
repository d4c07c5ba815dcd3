"""`bastion calibrate`'s GPU path on the CPU: the device-generic microbenchmarks (runtime/calibrate.py Device)
run through the code a GPU runs, bf16 and a synchronising wall clock included, with a CPU stand-in for the CUDA
device; the fit turns known times into known rates; the profile written predicts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from bastion.commands import calibrate_cmds
from bastion.predict.calibration import reference_streaming_fraction
from bastion.runtime import calibrate as cal
from bastion.specs.profile import read_profile
from helpers.cli import run

CARD = "h100-sxm"


def stand_in() -> tuple[cal.Device, list[int]]:
    """A CPU device timed as a GPU is (wall clock read after a synchronisation), counting its synchronisations."""
    synced: list[int] = []

    def sync() -> None:
        synced.append(1)

    def clock() -> float:
        sync()
        return time.perf_counter()
    return cal.Device("cpu", torch.bfloat16, clock, sync), synced


def test_the_gpu_measurements_run_on_a_stand_in_and_write_a_profile_that_predicts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # a CPU's bf16 is slow: small operands, the same code
    monkeypatch.setattr(calibrate_cmds, "QUICK_OPTIMIZER_PARAMS", 1 << 16)
    monkeypatch.setattr(calibrate_cmds, "QUICK_GPU_ELEMENTWISE_MIB", (2,))
    monkeypatch.setattr(calibrate_cmds, "GPU_ATTENTION_TOKENS", 128)
    out = tmp_path / "h100.toml"
    settings = calibrate_cmds._settings(True, 1, "tiny", CARD, tmp_path / "run", out)
    assert settings["device"] == "cuda"
    device, synced = stand_in()
    raw, repeats = calibrate_cmds._measure_device(settings, False, device)
    assert synced, "the device's work is waited for"
    _, shapes, _, _ = calibrate_cmds._plan(settings)
    assert [tuple(row[:3]) for row in raw["gemm"]] == shapes
    assert raw["collectives"] == []  # one device: nothing to measure
    assert raw["attention_backends"] == ["default"]
    # tiny's grouped-query layout (4 heads, 2 kv heads), as the runtime calls SDPA
    assert raw["attention_layouts"] == [(64, 16, 4, 2)] and "attention s64 d16 h4 kv2 fwd+bwd" in repeats
    assert raw["optimizer_params_s"][0] == 1 << 16 and raw["optimizer_params_s"][1] > 0
    # bf16 operands: the elementwise row counts two bytes an element
    assert raw["elementwise"][0][0] == 3.0 * 2 * 2**20
    calibrate_cmds._write_device_profile(settings, (raw, repeats), calibrate_cmds._this_machine())
    profile = read_profile(out)
    assert profile.accelerator == CARD and profile.collectives == ()
    overrides = dict(profile.accelerator_overrides)
    assert len(overrides["gemm_shape_efficiency"]) == len(shapes)
    assert "matmul_efficiency" not in overrides  # what was not measured keeps the datasheet's level
    assert any(name.startswith("gemm ") for name, _ in profile.repeats)
    code, text, err = run(["estimate", "--model", "tiny", "--cluster", f"{CARD}:1@{out}", "--global-batch", "8"],
                          capsys)
    assert code == 0, err
    assert "from the profile" in text and "the profile measured one device" in text


def test_the_fit_turns_known_times_into_known_rates() -> None:
    peak = 989.4e12
    flops = 2.0 * 4096 * 4096 * 4096
    seq, head_dim, heads, tokens = 4096, 128, 32, 8192
    attention_flops = 2.0 * (tokens // seq) * heads * seq * seq * head_dim
    raw = {"gemm": [[4096, 4096, 4096, flops / (0.6 * peak)]],
           "attention": [[seq, head_dim, heads, attention_flops / (0.5 * peak), 3.5 * attention_flops / (0.4 * peak)]],
           "attention_batch_tokens": tokens,
           "elementwise": [[3e9, 3e9 / 3000e9], [1e9, 1e9 / 2500e9]],
           "host": {"checkpoint_write_gbs": 2.0, "checkpoint_read_gbs": 9.0},
           # a fused AdamW step over 1e8 parameters in 1.5 ms
           "optimizer_params_s": [100_000_000, 1.5e-3],
           # all-reduce on 8 GPUs: 15 us + bytes / 120 GB/s
           "collectives": [["all_reduce", 8, b, 15e-6 + b / 120e9, 1] for b in (4096, 65536, 1 << 20, 8 << 20)]}
    fitted = cal.fit_device_profile(raw, peak)
    acc = fitted["accelerator"]
    assert acc["gemm_shape_efficiency"] == [[4096, 4096, 4096, pytest.approx(0.6)]]
    assert acc["attention_layout_efficiency"] == [[seq, head_dim, pytest.approx(0.5), pytest.approx(0.4)]]
    # the fastest stream, as the datasheet bandwidth the calibration's effective bytes assume
    assert acc["hbm_bandwidth_gbs"] == pytest.approx(3000 / reference_streaming_fraction())
    # the step as effective bytes per parameter at that bandwidth: 1.5e-11 s × 3362 GB/s
    assert acc["adamw_bytes_per_param"] == pytest.approx(1.5e-11 * acc["hbm_bandwidth_gbs"] * 1e9)
    (line,) = fitted["collective"]
    assert line["op"] == "all_reduce" and line["group_size"] == 8
    assert line["latency_us"] == pytest.approx(15.0) and line["bandwidth_gbs"] == pytest.approx(120.0)
    assert fitted["host"] == {"checkpoint_write_gbs": 2.0, "checkpoint_read_gbs": 9.0}


def test_the_cpu_device_measures_as_before() -> None:
    # fp32 on one core, CPU time: the CPU profile's kernels are unchanged by the device abstraction
    assert cal.CPU.dtype == torch.float32 and cal.CPU.sync is None and cal.CPU.clock is time.process_time
    (row,) = cal.measure_elementwise((1,), 0.001)
    assert row[0] == 3.0 * 2**20
    q = cal.CPU.tensor(1, 2, 16, 8, requires_grad=True)
    assert cal.sdpa_backend(cal.CPU, q, q, q)[0] == "default"
