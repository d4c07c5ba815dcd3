"""The simulator against a trace's recorded outcomes (issue 17, "Validation, as the predictor has it").

A recorded job whose trace gives its start (generic `start_time`, PAI and Helios start times) has a recorded
wait (start - submit) and a recorded run (start to start + recorded duration, on its recorded GPUs).
`compare_to_recorded` puts one `SimResult`'s figures beside the recorded ones of the same jobs: the wait
distribution (mean, median, p90, seconds) and the in-window used utilisation (GPU-hours the jobs used between the
first and the last submission over the cluster's GPU-hours then: `metrics.py`), and their errors (simulated -
recorded). Only jobs with a recorded start count on either side.

`replay_against_recorded` replays a trace under each policy (per-queue ordering, as `bastion simulate --trace`)
and compares each run so: a user validates the simulator on their own trace in the generic format with
start_time.

`openb_as_generic` turns Alibaba's cluster-trace-gpu-v2023 pod list (`openb_pod_list_*.csv`: name, cpu_milli,
memory_mib, num_gpu, gpu_milli, gpu_spec, qos, pod_phase, creation_time, deletion_time, scheduled_time, seconds)
into the generic trace with `start_time`: submit = creation, start = scheduled, duration = deletion - scheduled,
GPUs = num_gpu, or gpu_milli / 1000 of one GPU when a one-GPU pod shares it; queue = the pod's QoS class (the
cluster's Kubernetes scheduler has one queue: an inventory that names no QoS class puts every pod in the default
queue); Failed → failed, a pod deleted while Running → cancelled, Succeeded → completed. Pods never scheduled
(Pending) and CPU-only pods are left out and counted. gpu_spec (a GPU-type constraint) is not kept: the catalog
knows none of the trace's GPU types.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bastion.errors import ConfigError
from bastion.sim.engine import SimConfig, SimResult, simulate
from bastion.sim.inputs import Job
from bastion.sim.metrics import overlap_hours
from bastion.sim.perf import PlannerPerf, resolve
from bastion.sim.traces import GENERIC_COLUMNS, GENERIC_OPTIONAL_COLUMNS, Trace
from bastion.stats import percentile


@dataclass(frozen=True)
class WaitFigures:
    """A wait distribution (seconds) and the in-window used utilisation it came with."""

    jobs: int
    mean_wait_s: float
    p50_wait_s: float
    p90_wait_s: float
    window_used_utilisation: float


@dataclass(frozen=True)
class RecordedComparison:
    policy: str
    simulated: WaitFigures
    recorded: WaitFigures

    def errors(self) -> dict[str, float]:
        """Simulated - recorded, each figure (seconds; utilisation as a fraction of the cluster)."""
        sim, rec = asdict(self.simulated), asdict(self.recorded)
        return {name: sim[name] - rec[name] for name in sim if name != "jobs"}

    def to_dict(self) -> dict[str, object]:
        return {"policy": self.policy, "simulated": asdict(self.simulated), "recorded": asdict(self.recorded),
                "error": self.errors()}


def _figures(waits_h: list[float], used_gpu_hours: float, capacity_gpu_hours: float) -> WaitFigures:
    waits_s = [w * 3600.0 for w in waits_h]
    return WaitFigures(jobs=len(waits_s), mean_wait_s=sum(waits_s) / len(waits_s),
                       p50_wait_s=percentile(waits_s, 50), p90_wait_s=percentile(waits_s, 90),
                       window_used_utilisation=used_gpu_hours / capacity_gpu_hours if capacity_gpu_hours else 0.0)


def compare_to_recorded(result: SimResult, jobs: Sequence[Job], cluster_gpus: int) -> RecordedComparison:
    """`result`'s waits and in-window used utilisation beside those `jobs` (the workload it ran) recorded, over
    the jobs with a recorded start, on a cluster of `cluster_gpus`."""
    recordings = {job.id: job.recorded for job in jobs}
    ran = [r for r in result.jobs if r.recorded_wait_h is not None]
    if not ran:
        raise ConfigError("No job of the trace has a recorded start, so there is no recorded wait to compare with.",
                          fix="give the trace's start times (generic: a start_time column).")
    window = (min(r.submit_h for r in ran), max(r.submit_h for r in ran))
    capacity = cluster_gpus * (window[1] - window[0])
    simulated_used = sum(used * overlap_hours(start, end, window) for r in ran
                         for _, start, end, _, used in r.held_runs())
    recorded_used = 0.0
    for r in ran:
        recording = recordings[r.id]
        assert recording is not None and r.recorded_wait_h is not None
        start = r.submit_h + r.recorded_wait_h
        recorded_used += recording.gpus * overlap_hours(start, start + recording.duration_hours, window)
    return RecordedComparison(
        policy=result.policy,
        simulated=_figures([r.wait_h for r in ran], simulated_used, capacity),
        recorded=_figures([r.recorded_wait_h for r in ran if r.recorded_wait_h is not None], recorded_used,
                          capacity))


def replay_against_recorded(trace: Trace, policies: Sequence[str]) -> list[RecordedComparison]:
    """`trace` replayed on its inventory under each of `policies` (per-queue ordering), each beside what the
    trace recorded."""
    resolved = resolve(trace.workload.jobs, trace.inventory, PlannerPerf())
    return [compare_to_recorded(simulate(resolved, trace.inventory, SimConfig(policy=policy, per_queue=True)),
                                trace.workload.jobs, trace.inventory.gpus)
            for policy in policies]


# ---- Alibaba cluster-trace-gpu-v2023 pod list ---------------------------------------------------------

OPENB_COLUMNS = ("name", "num_gpu", "gpu_milli", "qos", "pod_phase", "creation_time", "deletion_time",
                 "scheduled_time")
#: the held-out slices of tests/validation/data/openb_pod_list_slice.csv (SOURCES.md there): first and last pod
OPENB_SLICES = {"A": ("openb-pod-0227", "openb-pod-0452"), "B": ("openb-pod-0453", "openb-pod-0679")}
_OPENB_STATES = {"Succeeded": "completed", "Failed": "failed", "Running": "cancelled"}


def openb_as_generic(source: Path, target: Path, first: str = "", last: str = "") -> dict[str, int]:
    """Write the pods of the pod list `source` named `first`..`last` (inclusive; empty: no bound) to `target` as
    a generic trace with start_time; returns reason -> pods left out."""
    skipped: Counter[str] = Counter()
    rows = []
    with source.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in OPENB_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ConfigError(f"'{source}' is not an openb pod list: it has no '{missing[0]}' column.",
                              fix=f"give an openb_pod_list_*.csv (columns {', '.join(OPENB_COLUMNS)}).")
        for pod in reader:
            if (first and pod["name"] < first) or (last and pod["name"] > last):
                continue
            if not pod["scheduled_time"]:
                skipped["never scheduled (Pending)"] += 1
                continue
            gpus, milli = int(pod["num_gpu"]), int(pod["gpu_milli"])
            if gpus == 0:
                skipped["CPU only"] += 1
                continue
            start = int(pod["scheduled_time"])
            rows.append({"submit_time": pod["creation_time"], "start_time": str(start),
                         "duration_s": str(int(pod["deletion_time"]) - start),
                         "gpus": f"{milli / 1000:g}" if gpus == 1 and milli < 1000 else str(gpus),
                         "queue": pod["qos"], "user": "", "time_limit_s": "",
                         "final_state": _OPENB_STATES[pod["pod_phase"]], "accelerator": ""})
    with target.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=(*GENERIC_COLUMNS, *GENERIC_OPTIONAL_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return dict(skipped)
