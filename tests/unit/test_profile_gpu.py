"""GPU machine profiles: a profile's measured GEMM, attention, memory and NCCL rates replace the H200 curves
scaled by datasheet ratios for that card (predict/compute.py, predict/comm.py), every output says so, a profile
round-trips and compares, a garbled one is a guidance error, and `bastion calibrate` for a GPU kind on a machine
without CUDA says where to run it. Torch-free (the device-generic measurements are in test_calibrate_device.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.predict import compute, estimate
from bastion.predict.calibration import (
    attention_efficiency_measured,
    device_scale,
    gemm_efficiency_measured,
    load_calibration,
    reference_streaming_fraction,
)
from bastion.predict.comm import all_reduce_time, place_group
from bastion.specs import ParallelPlan, load_model
from bastion.specs.hardware import load_accelerator, load_cluster
from bastion.specs.profile import PROFILE_FORMAT, profile_toml, read_profile
from bastion.specs.profile_compare import compare_profiles
from helpers.cli import run, user_error

CARD = "h100-sxm"
#: a grid of (m, k, n) over the shapes transformer training runs (tokens × hidden × width)
GRID = [(m, k, n) for m in (2048, 8192, 32768) for k in (1024, 4096, 16384) for n in (1024, 4096, 16384, 131072)]
SEQS = (1024, 4096, 16384)


def datasheet_gemm(m: int, k: int, n: int) -> float:
    """What the predictor assumes for this card without a profile (the H200 curve at the card's level)."""
    return gemm_efficiency_measured("bf16", m, k, n) * device_scale(load_accelerator(CARD), "bf16")


def datasheet_attention(seq: int, head_dim: int, pass_: str) -> float:
    return attention_efficiency_measured(seq, head_dim, pass_) * device_scale(load_accelerator(CARD), "attention")


def gpu_profile(rate: float = 0.75, gemm_rows: list[list[float]] | None = None, nccl_latency_us: float = 20.0,
                slow_gemm: float = 1.0) -> dict:
    """An H100 node measured at `rate` × the datasheet-scaled GEMM and attention rates at every measured shape
    (unless `gemm_rows`), its HBM streamed as the H200 streams its own, NCCL lines on 2/4/8 GPUs."""
    acc = load_accelerator(CARD)
    rows = gemm_rows or [[m, k, n, rate * datasheet_gemm(m, k, n)] for m, k, n in GRID]
    attention = [[s, d, rate * datasheet_attention(s, d, "fwd"), rate * datasheet_attention(s, d, "fwdbwd")]
                 for s in SEQS for d in (64, 128)]
    return {
        "machine": {"format": PROFILE_FORMAT, "accelerator": CARD, "nproc": 8, "date": "2026-12-07T00:00:00Z",
                    "host": "gpu-node", "torch": "2.11.0+cu130", "quick": True, "device_name": "NVIDIA H100 80GB HBM3",
                    "compute_capability": "9.0", "driver": "580.65", "cuda": "13.0", "sdpa_backend": ["flash_attention"],
                    "collectives": "nccl among 8 GPUs"},
        "accelerator": {"hbm_bandwidth_gbs": acc.hbm_bandwidth_gbs,
                        "gemm_shape_efficiency": rows, "attention_layout_efficiency": attention},
        "host": {"checkpoint_write_gbs": 2.0, "checkpoint_read_gbs": 8.0},
        "collective": [{"op": op, "group_size": g, "latency_us": nccl_latency_us, "bandwidth_gbs": 150.0, "hosts": 1}
                       for op in ("all_reduce", "all_gather", "reduce_scatter") for g in (2, 4, 8)]
        + [{"op": "send_recv", "group_size": 2, "latency_us": 10.0, "bandwidth_gbs": 200.0, "hosts": 1}],
        "raw": {"dispatch_s": 5e-6, "elementwise_streamed_gbs": acc.hbm_bandwidth_gbs * reference_streaming_fraction()},
        "repeats": {"gemm 8192x4096x4096": [1e-3 * slow_gemm * f for f in (0.99, 1.0, 1.01, 1.0, 1.0)],
                    "nccl all_reduce 8 ranks 1048576 B": [5e-5, 5.1e-5, 4.9e-5, 5e-5]},
    }


def write(tmp_path: Path, data: dict, name: str = "h100.toml") -> Path:
    path = tmp_path / name
    path.write_text(profile_toml(data, "test GPU profile"))
    return path


def test_a_gpu_profile_round_trips_into_the_cards_accelerator(tmp_path: Path) -> None:
    data = gpu_profile()
    profile = read_profile(write(tmp_path, data))
    assert profile.accelerator == CARD and profile.nproc == 8 and profile.torch == "2.11.0+cu130"
    overrides = dict(profile.accelerator_overrides)
    assert overrides["gemm_shape_efficiency"] == tuple(sorted(tuple(map(float, r))
                                                              for r in data["accelerator"]["gemm_shape_efficiency"]))
    assert len(overrides["attention_layout_efficiency"]) == len(SEQS) * 2
    cluster = load_cluster(f"{CARD}:16@{write(tmp_path, data)}")
    # a GPU profile keeps the catalog's node shape: 8 per node, 2 nodes
    assert cluster.gpus_per_node == 8 and cluster.num_gpus == 16
    assert cluster.accelerator.gemm_shape_efficiency == overrides["gemm_shape_efficiency"]
    assert "profile" in cluster.rates_source and "gpu-node" in cluster.rates_source
    # written again from what was read, it reads the same
    again = dict(data, accelerator={k: [list(r) for r in v] if isinstance(v, tuple) else v
                                    for k, v in overrides.items()})
    assert read_profile(write(tmp_path, again, "again.toml")).accelerator_overrides == profile.accelerator_overrides


def test_a_measured_gemm_runs_at_its_measured_efficiency(tmp_path: Path) -> None:
    # an H100 whose GEMMs reach 60% of the bf16 datasheet peak at the measured shapes
    rows = [[m, k, n, 0.60] for m, k, n in GRID]
    acc = load_cluster(f"{CARD}:8@{write(tmp_path, gpu_profile(gemm_rows=rows))}").accelerator
    peak = acc.peak_tflops("bf16") * 1e12
    for m, k, n in [(8192, 4096, 16384), (32768, 16384, 4096)]:
        assert compute.gemm_time(acc, "bf16", m, k, n) == pytest.approx(2.0 * m * k * n / (peak * 0.60), rel=1e-9)
    # between measured shapes: the measured level on the H200 curve's shape, so near its neighbours' 0.60
    between = compute.gemm_time(acc, "bf16", 4096, 4096, 8192)
    assert 0.5 < 2.0 * 4096 * 4096 * 8192 / between / peak < 0.7
    # fp8 GEMMs were not measured: still the datasheet-scaled curve
    catalog = load_accelerator(CARD)
    assert compute.gemm_time(acc, "fp8", 8192, 4096, 16384) == compute.gemm_time(catalog, "fp8", 8192, 4096, 16384)


def test_a_slower_measured_card_slows_the_predicted_step_by_its_measured_rate(tmp_path: Path) -> None:
    """GEMMs and attention measured at 0.75 of the datasheet-scaled rates at every shape: the compute part of
    the step takes 1/0.75 as long, the step longer by exactly that part's growth (memory bandwidth and
    collectives measured at what the datasheet path assumes)."""
    model = load_model("llama3-8b")
    plan = ParallelPlan(tp=8, micro_batch=1, global_batch=8)
    sheet = estimate(model, load_cluster(f"{CARD}:8"), plan)
    profiled = estimate(model, load_cluster(f"{CARD}:8@{write(tmp_path, gpu_profile(rate=0.75))}"), plan)
    assert profiled.time.compute == pytest.approx(sheet.time.compute / 0.75, rel=0.01)
    assert profiled.time.memory_bound == pytest.approx(sheet.time.memory_bound, rel=1e-9)
    grown = profiled.time.compute - sheet.time.compute
    assert profiled.time.step > sheet.time.step + 0.9 * grown
    # a card measured faster than the datasheet scaling: the other direction
    faster = estimate(model, load_cluster(f"{CARD}:8@{write(tmp_path, gpu_profile(rate=1.1), 'fast.toml')}"), plan)
    assert faster.time.compute == pytest.approx(sheet.time.compute / 1.1, rel=0.01)


def test_every_output_says_the_rates_came_from_the_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    path = write(tmp_path, gpu_profile())
    code, out, err = run(["estimate", "--model", "llama3-8b", "--cluster", f"{CARD}:8@{path}", "--tp", "8",
                          "--global-batch", "8"], capsys)
    assert code == 0, err
    assert f"profile {path}" in out and "from the profile" in out and "NCCL" in out
    assert "scaled from the H200 calibration" not in out
    code, out, _ = run(["estimate", "--model", "llama3-8b", "--cluster", f"{CARD}:8", "--tp", "8",
                        "--global-batch", "8"], capsys)
    assert code == 0 and "from the profile" not in out


def test_measured_hbm_bandwidth_is_costed_through_the_calibrations_streaming_efficiency(tmp_path: Path) -> None:
    data = gpu_profile()
    data["accelerator"]["hbm_bandwidth_gbs"] = 2000.0
    acc = load_cluster(f"{CARD}:8@{write(tmp_path, data)}").accelerator
    assert compute.membound_time(acc, 2e9) == pytest.approx(1e-3)


def test_a_measured_optimizer_step_replaces_the_calibrations_bytes_per_parameter(tmp_path: Path) -> None:
    model = load_model("llama3-8b")
    plan = ParallelPlan(tp=8, micro_batch=1, global_batch=8, precision="fp32")
    membound = load_calibration().membound
    data = gpu_profile()
    data["accelerator"]["adamw_bytes_per_param"] = 2 * membound["adamw_bytes"]
    sheet = estimate(model, load_cluster(f"{CARD}:8"), plan)
    profiled = estimate(model, load_cluster(f"{CARD}:8@{write(tmp_path, data)}"), plan)
    # fp32: the optimizer's whole cost is AdamW's bytes, measured at twice the calibration's
    assert profiled.time.optimizer == pytest.approx(2 * sheet.time.optimizer, rel=1e-9)


def test_nccl_lines_cost_groups_inside_a_node_and_the_network_the_rest(tmp_path: Path) -> None:
    path = write(tmp_path, gpu_profile(nccl_latency_us=500.0))
    node = load_cluster(f"{CARD}:8@{path}")
    nbytes = 64e6
    inside = all_reduce_time(node, nbytes, place_group(node, 8, 1))
    assert inside == pytest.approx(500e-6 + nbytes / 150e9)
    two_nodes = load_cluster(f"{CARD}:16@{path}")
    spanning = all_reduce_time(two_nodes, nbytes, place_group(two_nodes, 16, 1))
    datasheet = load_cluster(f"{CARD}:16")
    assert spanning == all_reduce_time(datasheet, nbytes, place_group(datasheet, 16, 1))


def test_gpu_profiles_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = write(tmp_path, gpu_profile(), "before.toml")
    after = write(tmp_path, gpu_profile(slow_gemm=1.5), "after.toml")
    changed = compare_profiles(read_profile(before), read_profile(after)).changed
    assert [m.name for m in changed] == ["gemm 8192x4096x4096"] and changed[0].ratio == pytest.approx(1.5)
    code, out, _ = run(["calibrate", "--compare", str(before), str(after)], capsys)
    assert code == 0 and "1 of 2 measurements changed" in out and "gemm 8192x4096x4096" in out


@pytest.mark.parametrize("field, value, message", [
    ("gemm_shape_efficiency", [[8192, 4096, 0.6]], "gemm_shape_efficiency must be a list of [4 positive"),
    ("attention_layout_efficiency", [[4096, 128, -0.3, 0.2]], "attention_layout_efficiency must be a list"),
    ("gemm_shape_efficiency", "fast", "gemm_shape_efficiency must be a list"),
])
def test_a_garbled_gpu_profile_is_a_guidance_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str,
                                                   value: object, message: str) -> None:
    data = gpu_profile()
    data["accelerator"][field] = value
    path = write(tmp_path, data)
    user_error(["estimate", "--model", "llama3-8b", "--cluster", f"{CARD}:8@{path}", "--tp", "8",
                "--global-batch", "8"], capsys, message, "bastion calibrate")


def test_a_missing_gpu_profile_or_one_of_another_card_is_a_guidance_error(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    user_error(["estimate", "--model", "llama3-8b", "--cluster", f"{CARD}:8@{tmp_path / 'none.toml'}", "--tp", "8",
                "--global-batch", "8"], capsys, "Machine profile not found", "bastion calibrate")
    path = write(tmp_path, gpu_profile())
    user_error(["estimate", "--model", "llama3-8b", "--cluster", f"h200:8@{path}", "--tp", "8", "--global-batch",
                "8"], capsys, f"{CARD}:8@{path}")


def test_calibrating_a_gpu_without_cuda_says_where_to_run_it(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    user_error(["calibrate", "--quick", "--accelerator", CARD, "--nproc", "1", "--out", str(tmp_path / "p.toml"),
                "--no-progress"], capsys, "no CUDA device", "--on slurm", "GPU node")
    assert not (tmp_path / "p.toml").exists()
    user_error(["calibrate", "--quick", "--accelerator", "tpu-v5p", "--out", str(tmp_path / "p.toml")], capsys, "TPU")


def test_a_gpu_calibrate_job_requests_the_gpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["calibrate", "--quick", "--accelerator", CARD, "--nproc", "8", "--on", "slurm",
                          "--nodes", "2", "--run-dir", str(tmp_path), "--dry-run"], capsys)
    assert code == 0, err
    assert "--gpus-per-node=8" in out and "--nodes=2" in out
    code, out, err = run(["calibrate", "--quick", "--accelerator", CARD, "--nproc", "8", "--on", "k8s",
                          "--run-dir", "/runs/cal", "--out", "/runs/cal/p.toml", "--image", "img:1", "--dry-run"],
                         capsys)
    assert code == 0, err
    assert "nvidia.com/gpu: 8" in out

