"""The health check's pieces that need no process group (runtime/health.py); the check itself runs in
tests/dist/test_stragglers.py."""

from __future__ import annotations

import pytest
import torch

from bastion.runtime.health import (
    _with_problems,
    bus_bandwidth_gbs,
    gpu_checks,
    parse_nvidia_smi,
    predicted_all_reduce_s,
)


def test_bus_bandwidth_is_nccl_tests_definition() -> None:
    # 2(n-1)/n × bytes / time: 4 ranks, 1 GB in 1 s -> 1.5 GB/s; one rank moves nothing
    assert bus_bandwidth_gbs(10**9, 1.0, 4) == pytest.approx(1.5)
    assert bus_bandwidth_gbs(10**9, 1.0, 1) == 0.0


def test_nvidia_smi_lines_become_figures_and_problems() -> None:
    healthy = _with_problems(parse_nvidia_smi("0, 1980, 1980, Not Active, Not Active, Not Active, 35\n"))
    assert healthy == {"tool": "nvidia-smi", "ecc_uncorrected": 0, "sm_clock_mhz": 1980, "sm_clock_max_mhz": 1980,
                       "throttled": False, "temperature_c": 35, "problems": []}
    sick = _with_problems(parse_nvidia_smi("2, 700, 1980, Not Active, Not Active, Active, 91"))
    assert sick["problems"] == ["2 uncorrected ECC error(s)", "hardware slowdown or thermal throttling active"]
    no_ecc = parse_nvidia_smi("[N/A], 700, 1980, Not Active, Not Active, Not Active, 40")
    assert no_ecc["ecc_uncorrected"] is None and _with_problems(no_ecc)["problems"] == []
    assert "not the 7 fields" in parse_nvidia_smi("No devices were found")["skipped"]


def test_gpu_checks_skip_on_cpu_with_the_reason() -> None:
    assert gpu_checks(torch.device("cpu")) == {"skipped": "CPU run: no GPU to check"}


def test_the_prediction_is_the_predictors_all_reduce_on_the_cluster() -> None:
    from bastion.predict.comm import all_reduce_time, place_group
    from bastion.specs.hardware import load_cluster

    cluster = load_cluster("cpu:2")
    assert predicted_all_reduce_s("cpu:2", 2, 4 * 2**20) == all_reduce_time(cluster, 4 * 2**20,
                                                                            place_group(cluster, 2, 1)) > 0
    assert predicted_all_reduce_s(None, 2) is None


def test_an_injected_device_problem_is_reported_as_the_check_would() -> None:
    assert gpu_checks(torch.device("cpu"), injected="1 uncorrected ECC error(s) (injected)") == {
        "tool": "injected fault", "problems": ["1 uncorrected ECC error(s) (injected)"]}


def test_a_failing_device_ends_the_job_step_only_under_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    from bastion.runtime import health

    monkeypatch.setattr(health.dist, "get_rank", lambda: 1)
    health.leave_out_failing_devices([], under_slurm=True)          # nothing failed
    health.leave_out_failing_devices([2], under_slurm=False)        # no scheduler to leave the node out: go on
    with pytest.raises(SystemExit) as stopped:
        health.leave_out_failing_devices([2], under_slurm=True)
    assert stopped.value.code == health.UNHEALTHY_EXIT
