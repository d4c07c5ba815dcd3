"""Recorded GPU-cluster traces as workloads of recorded jobs (`inputs.Recording`): `bastion simulate --trace`.

Formats (`--trace-format`):
  generic  CSV with the header `submit_time,duration_s,gpus,queue,user,time_limit_s,final_state,accelerator` (any
           column order). submit_time: seconds from the trace's start, or ISO 8601 (then hours count from the
           earliest); gpus may be fractional (a share of one GPU); time_limit_s, final_state (completed, failed,
           cancelled; empty = completed) and accelerator (catalog name or a device name the catalog knows;
           empty = the duration holds on every pool) may be empty. An optional `start_time` column (same form
           as submit_time; may be empty) is when the recorded run started: the recorded wait is start_time -
           submit_time, which `simulate` reports beside its own (bastion.sim.validation compares them).
  pai      Alibaba PAI cluster-trace-gpu-v2020: FILE is pai_task_table.csv (job_name, task_name, inst_num,
           status, start_time, end_time, plan_cpu, plan_mem, plan_gpu, gpu_type; header-less as released, a
           header line is accepted). A job is its tasks together: GPUs = Σ inst_num × plan_gpu / 100, run from
           the first task start to the last task end, failed if a task failed. pai_job_table.csv beside it
           (job_name, inst_id, user, status, start_time, end_time) gives each job's user and submission time
           (its start_time); without it a job is taken as submitted when its first task started. PAI has no
           queues: every job goes to the default queue. gpu_type (T4, P100, V100, ...) is scaled only when the
           catalog knows the device.
  helios   SenseTime Helios (SC'21) cluster_log.csv and the same columns in Acme (NSDI'24) traces: job_id, user,
           vc, gpu_num, cpu_num, node_num, state, submit_time, start_time, end_time, duration, queue. The virtual
           cluster (vc) is the queue (no vc column: the default queue); COMPLETED, CANCELLED, FAILED (TIMEOUT
           and NODE_FAIL count as failed, as the Helios paper does); the recorded run is `duration` seconds on
           an unrecorded accelerator; CPU-only jobs (gpu_num 0) are left out.
Rows a format cannot replay (unfinished, CPU-only, no times) are counted in `Trace.skipped`, not errors; a row
the generic format cannot read is an error naming its line.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from bastion.errors import BastionError, ConfigError, did_you_mean
from bastion.numbers import MAX_JOB_HOURS, MAX_SUBMIT_HOURS
from bastion.sim.inputs import (
    DEFAULT_QUEUE,
    Inventory,
    Job,
    Recording,
    Workload,
    catalog_accelerator,
    final_state,
)

GENERIC_COLUMNS = ("submit_time", "duration_s", "gpus", "queue", "user", "time_limit_s", "final_state",
                   "accelerator")
#: generic columns a trace may leave out
GENERIC_OPTIONAL_COLUMNS = ("start_time",)
PAI_TASK_COLUMNS = ("job_name", "task_name", "inst_num", "status", "start_time", "end_time", "plan_cpu",
                    "plan_mem", "plan_gpu", "gpu_type")
PAI_JOB_COLUMNS = ("job_name", "inst_id", "user", "status", "start_time", "end_time")
HELIOS_COLUMNS = ("job_id", "user", "gpu_num", "state", "submit_time", "start_time", "duration")

#: Slurm / Helios end states -> ours (TIMEOUT and NODE_FAIL as failed, as the Helios paper counts them)
_SLURM_STATES = {"COMPLETED": "completed", "CANCELLED": "cancelled", "FAILED": "failed", "TIMEOUT": "failed",
                 "NODE_FAIL": "failed"}
_PAI_STATES = {"Terminated": "completed", "Failed": "failed"}


@dataclass(frozen=True)
class Trace:
    workload: Workload
    #: the inventory the jobs' queues refer to (with the default queue when a job needs it)
    inventory: Inventory
    #: reason -> rows left out
    skipped: dict[str, int]
    #: facts about how the trace was read (for the output's notes)
    notes: tuple[str, ...] = ()


def _rows(path: Path, what: str) -> Iterator[tuple[int, list[str]]]:
    try:
        with path.open(newline="") as handle:
            for number, row in enumerate(csv.reader(handle), start=1):
                if row:
                    yield number, [cell.strip() for cell in row]
    except OSError as exc:
        raise ConfigError(f"Cannot read the {what} '{path}': {exc.strerror}.", fix="give an existing CSV file.") from exc
    except (csv.Error, UnicodeDecodeError) as exc:
        raise ConfigError(f"The {what} '{path}' is not a CSV file: {exc}.", fix="give the trace's CSV file.") from exc


def _header(path: Path, what: str, required: tuple[str, ...]) -> tuple[dict[str, int], Iterator[tuple[int, list[str]]]]:
    rows = _rows(path, what)
    first = next(rows, None)
    if first is None:
        raise ConfigError(f"The {what} '{path}' is empty.", fix=f"give a CSV file whose header has {', '.join(required)}.")
    names = {name: i for i, name in enumerate(first[1])}
    for name in required:
        if name not in names:
            raise ConfigError(f"The {what} '{path}' has no '{name}' column.{did_you_mean(name, list(names))}",
                              fix=f"its header must name {', '.join(required)}.")
    return names, rows


def _finite(text: str) -> float:
    """A trace cell's number; ValueError when it is not one or not finite (a NaN or infinite time or GPU count
    would stall the simulated clock or overflow a node count)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text!r}")
    return value


def _seconds(text: str) -> tuple[float, bool]:
    """(seconds, whether it was a date): a number of seconds, or ISO 8601 (naive = UTC) as epoch seconds."""
    try:
        return _finite(text), False
    except ValueError:
        stamp = datetime.fromisoformat(text)
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        return stamp.timestamp(), True


def _time(text: str, name: str, where: str) -> tuple[float, bool]:
    """A generic trace's time cell as `_seconds` reads it; an error naming the cell otherwise."""
    try:
        return _seconds(text)
    except ValueError:
        raise ConfigError(f"{name} in {where} is neither seconds nor ISO 8601: {text!r}.",
                          fix="give seconds from the trace's start, or e.g. 2024-03-01T09:30:00.") from None


def _started_hours(recording: Recording, origin: float) -> Recording:
    """`recording` with its recorded start (seconds, as read) made hours from the trace's start `origin`."""
    if recording.recorded_start_hours is None:
        return recording
    return replace(recording, recorded_start_hours=(recording.recorded_start_hours - origin) / 3600.0)


def _number(text: str, name: str, where: str, *, positive: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name} in {where} must be a number, got {text!r}.", fix=f"correct {name}.") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ConfigError(f"{name} in {where} must be {'> 0' if positive else '>= 0'}, got {text!r}.",
                          fix=f"correct {name}.")
    return value


def _within_bounds(path: Path, jobs: list[Job]) -> None:
    """A trace whose submissions span more than MAX_SUBMIT_HOURS, or a job longer than MAX_JOB_HOURS, is refused:
    the simulator draws node failures over the whole span."""
    longest = max(jobs, key=lambda j: j.recorded.duration_hours if j.recorded else 0.0)
    latest = max(jobs, key=lambda j: j.submit_hours)
    if latest.submit_hours > MAX_SUBMIT_HOURS or (longest.recorded and
                                                  longest.recorded.duration_hours > MAX_JOB_HOURS):
        raise ConfigError(f"The trace '{path}' spans {latest.submit_hours:.3g} hours of submissions and its longest "
                          f"job runs {longest.recorded.duration_hours if longest.recorded else 0:.3g} hours: beyond "
                          f"anything bastion simulates (at most {MAX_SUBMIT_HOURS:g} and {MAX_JOB_HOURS:g}).",
                          fix="replay a window of the trace (its rows of a few months), or correct its times.",
                          hint=None if min(j.submit_hours for j in jobs) <= MAX_SUBMIT_HOURS else
                          "its first submission too is that far from 0: submit_time looks like Unix epoch seconds; "
                          "give seconds from the trace's start (subtract the first submit_time) or ISO 8601 dates.")


def _queues(path: Path, jobs: list[Job], inventory: Inventory) -> tuple[list[Job], Inventory]:
    """Jobs with each queue mapped to a tenant (`Inventory.queue_for`), and the inventory they need; a trace
    beyond the simulated bounds is refused (`_within_bounds`)."""
    _within_bounds(path, jobs)
    mapped = [replace(job, tenant=inventory.queue_for(job.tenant)) for job in jobs]
    if any(job.tenant == DEFAULT_QUEUE for job in mapped):
        inventory = inventory.with_default_queue()
    return mapped, inventory


# ---- generic -------------------------------------------------------------------------------------------

def read_generic(path: Path, inventory: Inventory) -> Trace:
    names, rows = _header(path, "trace", GENERIC_COLUMNS)
    known = (*GENERIC_COLUMNS, *GENERIC_OPTIONAL_COLUMNS)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"The trace '{path}' has an unknown column '{unknown[0]}'."
                          f"{did_you_mean(unknown[0], known)}",
                          fix=f"the generic header is {','.join(GENERIC_COLUMNS)} (and optionally "
                              f"{','.join(GENERIC_OPTIONAL_COLUMNS)}).")
    parsed = []
    dated = set()
    for line, row in rows:
        where = f"{path}, line {line}"
        if len(row) != len(names):
            raise ConfigError(f"{where} has {len(row)} fields, the header {len(names)}.", fix="correct the row.")
        cell = {name: row[i] for name, i in names.items()}
        submit, is_date = _time(cell["submit_time"], "submit_time", where)
        dated.add(is_date)
        start = None
        if cell.get("start_time"):
            start, start_is_date = _time(cell["start_time"], "start_time", where)
            dated.add(start_is_date)
            if start < submit:
                raise ConfigError(f"start_time in {where} is before its submit_time.",
                                  fix="give the time the recorded run started (or leave start_time empty).")
        limit = cell["time_limit_s"]
        accelerator = cell["accelerator"]
        recording = Recording(
            duration_hours=_number(cell["duration_s"], "duration_s", where) / 3600.0,
            gpus=_number(cell["gpus"], "gpus", where, positive=True),
            accelerator=catalog_accelerator(accelerator, where) if accelerator else None, user=cell["user"],
            time_limit_hours=_number(limit, "time_limit_s", where, positive=True) / 3600.0 if limit else None,
            final_state=final_state(cell["final_state"], where), recorded_start_hours=start)  # seconds yet
        parsed.append((submit, cell["queue"] or DEFAULT_QUEUE, recording, line))
    if not parsed:
        raise ConfigError(f"The trace '{path}' has a header but no jobs.", fix="add rows below the header.")
    if len(dated) > 1:
        raise ConfigError(f"The trace '{path}' mixes ISO 8601 and seconds in submit_time.",
                          fix="use one form for every row.")
    origin = min(p[0] for p in parsed) if dated == {True} else 0.0
    jobs = [Job(id=f"line-{line}", tenant=queue, model="", tokens=0.0, global_batch=0,
                submit_hours=(submit - origin) / 3600.0, recorded=_started_hours(recording, origin))
            for submit, queue, recording, line in parsed]
    if any(j.submit_hours < 0 for j in jobs):
        raise ConfigError(f"The trace '{path}' has a negative submit_time.", fix="give seconds from the trace's start.")
    jobs, inventory = _queues(path, jobs, inventory)
    return Trace(Workload(path.stem, tuple(jobs)), inventory, {})


# ---- Alibaba PAI 2020 ---------------------------------------------------------------------------------

def _headerless(path: Path, what: str, columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    for line, row in _rows(path, what):
        if line == 1 and row[0] == columns[0]:
            continue  # a header line
        yield line, dict(zip(columns, row, strict=False))


def _device(name: str, unknown: Counter[str]) -> str | None:
    if not name:
        return None
    try:
        return catalog_accelerator(name, "")
    except BastionError:
        unknown[name] += 1
        return None


def read_pai(path: Path, inventory: Inventory) -> Trace:
    skipped: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    tasks: dict[str, list[dict[str, str]]] = {}
    for _, row in _headerless(path, "PAI task table", PAI_TASK_COLUMNS):
        tasks.setdefault(row.get("job_name", ""), []).append(row)
    submitted: dict[str, tuple[float, str]] = {}
    job_table = path.with_name("pai_job_table.csv")
    if job_table.exists() and job_table != path:
        for _, row in _headerless(job_table, "PAI job table", PAI_JOB_COLUMNS):
            try:
                submitted[row["job_name"]] = (_finite(row["start_time"]), row.get("user", ""))
            except (KeyError, ValueError):
                continue
    parsed = []
    for name, rows in tasks.items():
        states = {r.get("status", "") for r in rows}
        if not states <= set(_PAI_STATES):
            skipped["not finished (Running or Waiting)"] += 1
            continue
        try:
            start = min(_finite(r["start_time"]) for r in rows)
            end = max(_finite(r["end_time"]) for r in rows)
            gpus = sum(_finite(r["inst_num"]) * _finite(r["plan_gpu"] or "0") / 100.0 for r in rows)
        except (KeyError, ValueError):
            skipped["no start, end or GPU request"] += 1
            continue
        if not gpus > 0:
            skipped["CPU only"] += 1
            continue
        if not math.isfinite(gpus) or not math.isfinite(end - start):
            skipped["no start, end or GPU request"] += 1
            continue
        submit, user = submitted.get(name, (start, ""))
        recording = Recording(duration_hours=max(0.0, end - start) / 3600.0, gpus=round(gpus, 2),
                              accelerator=_device(next((r["gpu_type"] for r in rows if r.get("gpu_type")), ""), unknown), user=user,
                              final_state="failed" if "Failed" in states else "completed",
                              recorded_start_hours=start)  # seconds until _finish makes it hours
        parsed.append((min(submit, start), name, recording))
    return _finish(path, parsed, inventory, skipped, unknown, queue=lambda _: DEFAULT_QUEUE)


# ---- Helios / Acme ------------------------------------------------------------------------------------

def read_helios(path: Path, inventory: Inventory) -> Trace:
    names, rows = _header(path, "Helios trace", HELIOS_COLUMNS)
    skipped: Counter[str] = Counter()
    parsed = []
    for _, row in rows:
        cell = {name: row[i] if i < len(row) else "" for name, i in names.items()}
        state = _SLURM_STATES.get(cell["state"].upper())
        if state is None:
            skipped[f"state {cell['state'] or 'empty'}"] += 1
            continue
        try:
            gpus = _finite(cell["gpu_num"])
            submit, _ = _seconds(cell["submit_time"])
            start, _ = _seconds(cell["start_time"])
            duration = _finite(cell["duration"])
        except ValueError:
            skipped["no GPU count, times or duration"] += 1
            continue
        if not gpus > 0:
            skipped["CPU only"] += 1
            continue
        recording = Recording(duration_hours=max(0.0, duration) / 3600.0, gpus=gpus, user=cell["user"],
                              final_state=state, recorded_start_hours=start)  # seconds until _finish
        parsed.append((submit, f"{cell['job_id']}|{cell.get('vc', '')}", recording))
    return _finish(path, parsed, inventory, skipped, Counter(), queue=lambda key: key.split("|", 1)[1] or DEFAULT_QUEUE,
                   job_id=lambda key: key.split("|", 1)[0])


def _finish(path: Path, parsed: list[tuple[float, str, Recording]], inventory: Inventory, skipped: Counter[str],
            unknown: Counter[str], queue: Callable[[str], str], job_id: Callable[[str], str] = str) -> Trace:
    if not parsed:
        raise ConfigError(f"The trace '{path}' has no job that can be replayed"
                          f"{' (' + ', '.join(f'{n} {why}' for why, n in skipped.items()) + ')' if skipped else ''}.",
                          fix="check --trace-format and the file.")
    origin = min(submit for submit, _, _ in parsed)
    if not math.isfinite(max(submit for submit, _, _ in parsed) - origin):
        raise ConfigError(f"The trace '{path}' has times too far apart to replay.",
                          fix="check the submit and start times (seconds since the epoch, or ISO 8601).")
    jobs = []
    for submit, key, recording in parsed:
        jobs.append(Job(id=job_id(key), tenant=queue(key), model="", tokens=0.0, global_batch=0,
                        submit_hours=(submit - origin) / 3600.0, recorded=_started_hours(recording, origin)))
    jobs, inventory = _queues(path, jobs, inventory)
    notes = tuple(f"{n} jobs on {name}, which the catalog does not know: durations taken as recorded on every pool"
                  for name, n in sorted(unknown.items()))
    return Trace(Workload(path.stem, tuple(jobs)), inventory, dict(skipped), notes)


#: --trace-format name -> reader
TRACE_FORMATS: dict[str, Callable[[Path, Inventory], Trace]] = {
    "generic": read_generic, "pai": read_pai, "helios": read_helios}


def load_trace(path: str | Path, trace_format: str, inventory: Inventory) -> Trace:
    """The trace at `path` in `trace_format` as recorded jobs on `inventory`'s queues."""
    reader = TRACE_FORMATS.get(trace_format)
    if reader is None:
        raise ConfigError(f"Unknown trace format '{trace_format}'.{did_you_mean(trace_format, list(TRACE_FORMATS))}",
                          fix=f"use one of: {', '.join(TRACE_FORMATS)}.")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"No trace file at '{path}'.", fix="give the path of the trace's CSV file.")
    return reader(path, inventory)
