"""Appending to and reading RUN_DIR/metrics.jsonl (records: rundir/records.py).

Event records come from any rank: each is one JSON line written with a single `write` on an O_APPEND descriptor,
so lines from several processes never interleave. Step records come from rank 0's `MetricsWriter`. A reader
tolerates a torn last line (a writer killed mid-append) and a line being written while it reads: such a line is
skipped and counted, not an error.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.jsonl import read_json_lines_counted
from bastion.rundir.layout import METRICS_FILE
from bastion.rundir.records import EVENT_KINDS, StepRecord


def metrics_path(run_dir: Path) -> Path:
    return Path(run_dir) / METRICS_FILE


def append_record(run_dir: Path, record: dict[str, Any]) -> None:
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(metrics_path(run_dir), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def log_event(run_dir: Path, event: str, **fields: Any) -> dict[str, Any]:
    """Record `event` (a kind registered in rundir/records.py EVENT_KINDS) with a wall-clock timestamp."""
    if event not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {event!r}: register it in bastion/rundir/records.py EVENT_KINDS")
    record = {"event": event, "time": time.time(), **fields}
    append_record(run_dir, record)
    return record


class MetricsWriter:
    """Appends step records to RUN_DIR/metrics.jsonl (rank 0 only; others are no-ops)."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.path = metrics_path(run_dir)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", buffering=1)  # noqa: SIM115 - kept open for the run

    def write(self, record: StepRecord) -> None:
        if self.enabled:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()


@dataclass(frozen=True)
class MetricsLines:
    """What metrics.jsonl holds."""

    #: the records (JSON objects with a numeric `time`), in file order
    records: list[dict[str, Any]]
    #: lines that are not such a record (cut short by a kill, being written, or not bastion's)
    unreadable: int


def read_metrics(run_dir: Path) -> MetricsLines:
    """Every record of metrics.jsonl and the count of lines that are not one; empty when there is no file."""
    values, bad = read_json_lines_counted(metrics_path(run_dir))
    records = [v for v in values if isinstance(v, dict) and _is_number(v.get("time"))
               and _numbers_where_numbers_belong(v)]
    return MetricsLines(records, bad + len(values) - len(records))


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """Every JSON object of metrics.jsonl, timed or not (a progress reader that counts steps and events)."""
    return [v for v in read_json_lines_counted(metrics_path(run_dir))[0] if isinstance(v, dict)]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


#: fields of a step record that the accounting does arithmetic on (`mfu` and `mem_gib` may be null)
_STEP_NUMBERS = ("step_time_s", "tokens_per_s", "loss")


def _numbers_where_numbers_belong(record: dict[str, Any]) -> bool:
    """A step record whose step is a whole number and whose figures are numbers (a damaged or foreign line is
    counted as unreadable, not met later as a TypeError)."""
    if "event" in record or "step" not in record:
        return True
    return (isinstance(record["step"], int) and not isinstance(record["step"], bool)
            and all(_is_number(record[key]) for key in _STEP_NUMBERS if key in record))
