"""Machine profiles (specs/profile.py): written, read back, refused with guidance when missing or garbled, and
used by `estimate --cluster PROFILE` in place of the catalog's datasheet rates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bastion.cli import main
from bastion.errors import ConfigError
from bastion.specs.hardware import load_cluster
from bastion.specs.profile import PROFILE_FORMAT, profile_toml, read_profile


def profile_data(layer_s: float = 0.004, all_gather_latency_us: float = 900.0) -> dict:
    return {
        "machine": {"format": PROFILE_FORMAT, "accelerator": "cpu", "nproc": 4, "date": "2026-12-07T00:00:00Z",
                    "host": "box", "torch": "2.13.0+cpu", "quick": True},
        "accelerator": {"matmul_efficiency": 0.5, "hbm_bandwidth_gbs": 3.0, "background_load": 0.5,
                        "gemm_efficiency_curve": [[1e6, 0.4], [1e9, 0.7]],
                        "attention_efficiency_curve": [[1024, 0.1, 0.05], [16384, 0.2, 0.1]]},
        "host": {"layer_s": layer_s, "layer_tp_s": 0.02, "layer_sp_s": 0.002, "layer_fsdp_s": 0.006,
                 "micro_batch_s": 0.002, "optimizer_per_tensor_s": 3e-4, "optimizer_dtensor_per_tensor_s": 1e-3,
                 "process_start_s": 12.0},
        "collective": [{"op": op, "group_size": g, "latency_us": all_gather_latency_us if op == "all_gather"
                        else 500.0, "bandwidth_gbs": 0.5}
                       for op in ("all_reduce", "all_gather", "reduce_scatter") for g in (2, 4)]
        + [{"op": "send_recv", "group_size": 2, "latency_us": 300.0, "bandwidth_gbs": 1.0}],
        "raw": {"dispatch_s": 2e-6, "collective_op_size_bytes_s": [["all_reduce", 2, 4096, 0.001]]},
    }


def write(tmp_path: Path, data: dict, name: str = "profile.toml") -> Path:
    path = tmp_path / name
    path.write_text(profile_toml(data, "test profile"))
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_profile_round_trips(tmp_path: Path) -> None:
    data = profile_data()
    profile = read_profile(write(tmp_path, data))
    assert profile.accelerator == "cpu" and profile.nproc == 4 and profile.torch == "2.13.0+cpu"
    assert dict(profile.accelerator_overrides)["gemm_efficiency_curve"] == ((1e6, 0.4), (1e9, 0.7))
    assert dict(profile.accelerator_overrides)["hbm_bandwidth_gbs"] == 3.0
    assert profile.host_overheads.layer_tp_s == 0.02
    line = next(c for c in profile.collectives if c.op == "all_gather" and c.group_size == 4)
    assert line.seconds(0.5e9) == pytest.approx(900e-6 + 1.0)
    # the cluster it makes: the catalog's cpu row with the measured fields, as many ranks as measured
    cluster = load_cluster(str(tmp_path / "profile.toml"))
    assert cluster.num_gpus == 4 and cluster.accelerator.matmul_efficiency == 0.5
    assert cluster.accelerator.host_cores == 2  # from the catalog row
    assert load_cluster(f"cpu:2@{tmp_path / 'profile.toml'}").num_gpus == 2


@pytest.mark.parametrize("spec", ["cpu:4@{dir}/missing.toml", "{dir}/garbled.toml", "{dir}/bad-field.toml",
                                  "h100-sxm:4@{dir}/profile.toml", "cpu:4@"])
def test_missing_or_garbled_profile_is_a_guidance_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         spec: str) -> None:
    write(tmp_path, profile_data())
    (tmp_path / "garbled.toml").write_text("[machine]\nformat = 1\naccelerator = 'cpu'\nnproc = 'four'\n")
    bad = profile_data()
    bad["host"]["layer_s"] = -1.0
    write(tmp_path, bad, "bad-field.toml")
    spec = spec.format(dir=tmp_path)
    with pytest.raises(ConfigError):
        load_cluster(spec)
    code, _, err = run(["estimate", "--model", "tiny", "--cluster", spec, "--dp", "4", "--global-batch", "8"],
                       capsys)
    assert code == 2 and "To fix:" in err and "Traceback" not in err


def _estimate(cluster: str, capsys: pytest.CaptureFixture[str], *plan: str) -> dict:
    code, out, err = run(["estimate", "--model", "tiny", "--cluster", cluster, "--global-batch", "8",
                          "--precision", "fp32", "--json", *plan], capsys)
    assert code == 0, err
    return json.loads(out)


def test_estimate_uses_the_profiles_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = ("--dp", "2", "--tp", "2", "--sp", "--zero", "3", "--micro-batch", "2")
    base = write(tmp_path, profile_data(), "base.toml")
    datasheet = _estimate("cpu:4", capsys, *plan)
    profiled = _estimate(str(base), capsys, *plan)
    assert profiled["step_time_s"] != datasheet["step_time_s"]
    assert datasheet["time"]["host_overhead"] == 0.0 and profiled["time"]["host_overhead"] > 0
    assert any(str(base) in a for a in profiled["assumptions"])
    assert any("datasheet" in a for a in datasheet["assumptions"])
    # a slower block dispatch and slower all-gathers in the profile make the same plan slower, by the profile's
    # own arithmetic: 4 blocks × 2 micro-batches × 10 ms more dispatch, on 2 cores / (4 ranks + 0.5 background)
    slower = _estimate(str(write(tmp_path, profile_data(layer_s=0.014), "slower.toml")), capsys, *plan)
    expected = 4 * 2 * 0.010 / (2 / 4.5)
    assert slower["step_time_s"] - profiled["step_time_s"] == pytest.approx(expected, rel=1e-6)
    later = _estimate(str(write(tmp_path, profile_data(all_gather_latency_us=5000.0), "ar.toml")), capsys, *plan)
    assert later["time"]["tp_comm"] > profiled["time"]["tp_comm"]
