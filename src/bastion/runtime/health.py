"""Pre-flight health check of a worker group, at start and after each restart (every process start runs it).

Two parts, bounded to well under a second on CPU:
  collective bandwidth  an all-reduce of BANDWIDTH_BYTES on the job's own process group, timed a few times, the
                        slowest rank's median taken, compared with the predictor's time for the same all-reduce on
                        the run's cluster (bastion.predict.comm; on CPU the `cpu:N` cluster). When the cluster
                        was named (--cluster), a group at SLOW_FACTOR × the predicted time or worse is reported as
                        slow (a bad link, a misconfigured fabric, a noisy neighbour); against the default cluster
                        of the device (uncalibrated: gloo on a shared host measured 8× slower than `cpu:2`'s
                        figures) the ratio is recorded, not judged.
  GPU checks            on CUDA, this rank's GPU through NVML (pynvml) or, without it, `nvidia-smi`: uncorrected
                        ECC errors, SM clock against its maximum, hardware slowdown and thermal throttling,
                        temperature. Skipped with the reason when the run is on CPU or neither tool exists. (XID
                        events need an NVML event set held over time; a one-shot check cannot see past ones.)
Rank 0 records one `health_check` event (rundir/records.py; `failing_ranks`: the ranks whose own device failed) and
prints a line when something is wrong. A failing device is excluded before the job spends a step on it where a
scheduler can leave its node out: under Slurm every rank ends the job step (exit UNHEALTHY_EXIT) and the batch
script's next step, or the job it starts again, runs without that node (launch/slurm_nodes.py). Elsewhere the
run goes on and the event is the evidence. A slow all-reduce is the group's, not one node's: it is reported only.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from bastion.rundir.metrics import log_event

#: bytes each rank all-reduces in the bandwidth test (large enough to be bandwidth-bound on gloo, small enough
#: for well under a second on CPU)
BANDWIDTH_BYTES = 4 * 2**20
#: timed repetitions at most, and about the time they may take together
REPEATS = 5
BUDGET_S = 0.3
#: a group this many times slower than predicted is reported
SLOW_FACTOR = 3.0
#: a worker's exit status when a device of its job step failed the check (under Slurm)
UNHEALTHY_EXIT = 75


def measure_all_reduce(device: torch.device, nbytes: int = BANDWIDTH_BYTES,
                       before_collective: Callable[[], None] | None = None) -> list[float]:
    """Every rank's median all-reduce time of `nbytes` over the default group (collective), rank order."""
    buffer = torch.ones(nbytes // 4, dtype=torch.float32, device=device)

    def timed() -> float:
        if before_collective is not None:
            before_collective()
        start = time.perf_counter()
        dist.all_reduce(buffer)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    # warm-up (connections; every rank leaves it together), and from its slowest time the repetitions that fit
    # the budget: every rank must run the same count of collectives
    warmup = torch.tensor([timed()], dtype=torch.float64, device=device)
    dist.all_reduce(warmup, op=dist.ReduceOp.MAX)
    count = max(1, min(REPEATS, int(BUDGET_S / max(float(warmup.item()), 1e-6))))
    times = [timed() for _ in range(count)]
    mine = torch.tensor([statistics.median(times)], dtype=torch.float64, device=device)
    rows = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, mine)
    return [float(row[0]) for row in rows]


def predicted_all_reduce_s(cluster_name: str | None, world: int, nbytes: int = BANDWIDTH_BYTES) -> float | None:
    """The predictor's time for the same all-reduce over the whole job on `cluster_name` (None: no cluster)."""
    if cluster_name is None:
        return None
    from bastion.errors import BastionError
    from bastion.predict.comm import all_reduce_time, place_group
    from bastion.specs.hardware import load_cluster

    try:
        cluster = load_cluster(cluster_name)
    except BastionError:
        return None
    return all_reduce_time(cluster, float(nbytes), place_group(cluster, world, 1))


def bus_bandwidth_gbs(nbytes: int, seconds: float, world: int) -> float:
    """NCCL-tests' bus bandwidth of an all-reduce: 2(n-1)/n × bytes / time, GB/s."""
    return 2.0 * (world - 1) / world * nbytes / seconds / 1e9 if seconds > 0 and world > 1 else 0.0


# ---- GPU checks ----------------------------------------------------------------------------------------------
def gpu_checks(device: torch.device, injected: str | None = None) -> dict[str, Any]:
    """This rank's GPU: {"tool", "ecc_uncorrected", "sm_clock_mhz", "sm_clock_max_mhz", "throttled",
    "temperature_c", "problems"}, or {"skipped": why}. `injected`: a problem an injected fault reports instead
    (runtime/faults.py `bad-gpu`)."""
    if injected is not None:
        return {"tool": "injected fault", "problems": [injected]}
    if device.type != "cuda":
        return {"skipped": "CPU run: no GPU to check"}
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        import pynvml  # noqa: F401
    except ImportError:
        pass
    else:
        return _with_problems(_nvml_figures(index))
    if shutil.which("nvidia-smi"):
        return _with_problems(_nvidia_smi_figures(index))
    return {"skipped": "neither pynvml nor nvidia-smi is installed"}


def _nvml_figures(index: int) -> dict[str, Any]:
    import pynvml

    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        try:
            ecc = pynvml.nvmlDeviceGetTotalEccErrors(handle, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                                                     pynvml.NVML_VOLATILE_ECC)
        except pynvml.NVMLError:
            ecc = None  # ECC off or not supported
        reasons = pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle)
        bad = (pynvml.nvmlClocksThrottleReasonHwSlowdown | pynvml.nvmlClocksThrottleReasonSwThermalSlowdown
               | pynvml.nvmlClocksThrottleReasonHwThermalSlowdown)
        return {"tool": "nvml", "ecc_uncorrected": ecc,
                "sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
                "sm_clock_max_mhz": pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM),
                "throttled": bool(reasons & bad),
                "temperature_c": pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)}
    finally:
        pynvml.nvmlShutdown()


#: nvidia-smi fields, in the order asked
_SMI_FIELDS = ("ecc.errors.uncorrected.volatile.total", "clocks.sm", "clocks.max.sm",
               "clocks_throttle_reasons.hw_slowdown", "clocks_throttle_reasons.sw_thermal_slowdown",
               "clocks_throttle_reasons.hw_thermal_slowdown", "temperature.gpu")


def _nvidia_smi_figures(index: int) -> dict[str, Any]:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(_SMI_FIELDS)}", "--format=csv,noheader,nounits",
                              "-i", str(index)], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return {"skipped": f"nvidia-smi failed: {exc}"}
    return parse_nvidia_smi(out)


def parse_nvidia_smi(line: str) -> dict[str, Any]:
    """One line of `nvidia-smi --query-gpu=<_SMI_FIELDS> --format=csv,noheader,nounits` as gpu_checks' figures."""
    values = [v.strip() for v in line.strip().split(",")]
    if len(values) != len(_SMI_FIELDS):
        return {"skipped": f"nvidia-smi gave {line.strip()!r}, not the {len(_SMI_FIELDS)} fields asked"}

    def number(text: str) -> int | None:
        try:
            return int(float(text))
        except ValueError:
            return None  # "[N/A]", "[Not Supported]"

    ecc, clock, clock_max, hw, sw_thermal, hw_thermal, temperature = values
    return {"tool": "nvidia-smi", "ecc_uncorrected": number(ecc), "sm_clock_mhz": number(clock),
            "sm_clock_max_mhz": number(clock_max),
            "throttled": any(v.lower() == "active" for v in (hw, sw_thermal, hw_thermal)),
            "temperature_c": number(temperature)}


def _with_problems(figures: dict[str, Any]) -> dict[str, Any]:
    if "skipped" in figures:
        return figures
    problems = []
    if figures.get("ecc_uncorrected"):
        problems.append(f"{figures['ecc_uncorrected']} uncorrected ECC error(s)")
    if figures.get("throttled"):
        problems.append("hardware slowdown or thermal throttling active")
    return {**figures, "problems": problems}


# ---- the check --------------------------------------------------------------------------------------------------
def run_health_check(run_dir: Path, cluster_name: str | None, device: torch.device, attempt: int = 0,
                     before_collective: Callable[[], None] | None = None,
                     cluster_named: bool = False, injected_problem: str | None = None) -> list[int]:
    """Collective: every rank measures and checks its GPU; rank 0 logs the `health_check` event. Returns, on every
    rank, the ranks whose own device failed. `cluster_named`: the user named the cluster, so a bandwidth far
    below its prediction is a problem."""
    started = time.perf_counter()
    world, rank = dist.get_world_size(), dist.get_rank()
    gpus: list[Any] = [None] * world
    dist.all_gather_object(gpus, gpu_checks(device, injected_problem))
    failing = [r for r, g in enumerate(gpus) if g.get("problems")]
    per_rank = measure_all_reduce(device, before_collective=before_collective) if world > 1 else []
    if rank != 0:
        return failing
    measured = max(per_rank) if per_rank else None
    predicted = predicted_all_reduce_s(cluster_name, world)
    ratio = measured / predicted if measured and predicted else None
    problems = [f"rank {r}: {p}" for r, g in enumerate(gpus) for p in g.get("problems", [])]
    if cluster_named and ratio is not None and ratio >= SLOW_FACTOR:
        problems.append(f"all-reduce of {BANDWIDTH_BYTES / 2**20:.0f} MiB took {measured * 1e3:.1f} ms, "
                        f"{ratio:.1f}× the {predicted * 1e3:.1f} ms predicted for {cluster_name}")
    skipped = {g["skipped"] for g in gpus if "skipped" in g}
    fields = {"attempt": attempt, "world_size": world, "cluster": cluster_name, "bytes": BANDWIDTH_BYTES,
              "all_reduce_s": measured, "all_reduce_s_by_rank": per_rank,
              "busbw_gbs": bus_bandwidth_gbs(BANDWIDTH_BYTES, measured, world) if measured else None,
              "predicted_s": predicted,
              "predicted_busbw_gbs": bus_bandwidth_gbs(BANDWIDTH_BYTES, predicted, world) if predicted else None,
              "ratio": ratio, "ok": not problems, "problems": problems, "failing_ranks": failing,
              "gpus": {"skipped": skipped.pop()} if len(skipped) == 1 and all("skipped" in g for g in gpus) else gpus,
              "took_s": round(time.perf_counter() - started, 4)}
    if world == 1:
        fields["bandwidth_note"] = "one process: no collective to measure"
    elif not cluster_named:
        fields["bandwidth_note"] = (f"compared, not judged: {cluster_name} is the device's default cluster, not "
                                    f"one named with --cluster")
    log_event(run_dir, "health_check", **fields)
    if problems:
        print(f"bastion: health check found: {'; '.join(problems)}", flush=True)
    return failing


def leave_out_failing_devices(failing: list[int], under_slurm: bool) -> None:
    """Every rank: end the job step before training when a device failed and a scheduler can leave its node out
    (Slurm); elsewhere the run goes on with the problem reported."""
    if failing and under_slurm:
        if dist.get_rank() == 0:
            print(f"bastion: rank(s) {', '.join(map(str, failing))} failed the health check: ending this job step "
                  f"so the next one runs without their node(s)", flush=True)
        raise SystemExit(UNHEALTHY_EXIT)
