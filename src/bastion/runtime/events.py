"""Append event records (faults, restarts, checkpoints) to RUN_DIR/metrics.jsonl from any rank.

Each record is one JSON line written with a single `write` on an O_APPEND descriptor, so lines from several
processes never interleave. Pure Python: usable before torch is imported.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from bastion.jsonl import read_json_lines

METRICS_FILE = "metrics.jsonl"


def append_record(run_dir: Path, record: dict[str, Any]) -> None:
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(Path(run_dir) / METRICS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def log_event(run_dir: Path, event: str, **fields: Any) -> dict[str, Any]:
    """Record `event` (e.g. "fault", "restart", "checkpoint", "rollback") with a wall-clock timestamp."""
    record = {"event": event, "time": time.time(), **fields}
    append_record(run_dir, record)
    return record


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """Every parseable line of metrics.jsonl (a line cut short by a kill is skipped)."""
    return read_json_lines(Path(run_dir) / METRICS_FILE)
