"""What `bastion logs` prints from files: a run directory's records and rank logs, a Slurm job's output file, read
once or followed (`-f`) as they grow.

A local run's console output goes to the terminal that started it; its run directory keeps metrics.jsonl (each
step and event, shown one line each) and logs/rank-NNNNN.log (a failed worker's traceback), which is what `bastion
logs RUN_DIR` shows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.rundir.layout import LOGS_DIR, METRICS_FILE

#: seconds between two looks at files being followed
POLL_S = 0.5
#: seconds between two questions whether the run still runs (for Slurm, a squeue and an scontrol call)
RUNNING_CHECK_S = 5.0


def record_line(record: dict[str, Any]) -> str:
    """One metrics.jsonl record as a line for people."""
    if "event" in record:
        details = " ".join(f"{k}={v}" for k, v in record.items() if k not in ("event", "time"))
        return f"event {record['event']}" + (f" {details}" if details else "")
    parts = [f"step {record.get('step')}"]
    for key, label, spec in (("loss", "loss", ".4f"), ("tokens_per_s", "tok/s", ",.0f"), ("step_time_s", "s", ".3f"),
                             ("mem_gib", "GiB", ".2f")):
        value = record.get(key)
        if isinstance(value, int | float):
            parts.append(f"{label} {value:{spec}}" if key == "loss" else f"{value:{spec}} {label}")
    return "  ".join(parts)


@dataclass
class LogFile:
    """One file read line by line from where the last read stopped (a torn last line waits for its end)."""

    path: Path
    #: the name shown with each line
    name: str
    #: metrics.jsonl: each line is a record, shown by `record_line`
    records: bool = False
    offset: int = field(default=0)

    def new_lines(self) -> Iterator[tuple[str, dict[str, Any] | None]]:
        """(text, record or None) for each complete line added since the last call."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1
        self.offset += end
        for raw in data[:end].decode(errors="replace").splitlines():
            if not self.records:
                yield raw, None
                continue
            try:
                record = json.loads(raw)
            except ValueError:  # a torn line (a crash mid-write): metrics.py skips it too
                continue
            if isinstance(record, dict):
                yield record_line(record), record


def run_dir_files(run_dir: Path) -> list[LogFile]:
    """A run directory's metrics.jsonl and rank logs (those present now)."""
    files = [LogFile(Path(run_dir) / METRICS_FILE, METRICS_FILE, records=True)]
    files += [LogFile(path, f"{LOGS_DIR}/{path.name}") for path in sorted((Path(run_dir) / LOGS_DIR).glob("*.log"))]
    return files


def show(files: Callable[[], list[LogFile]], lines: int, follow: bool, running: Callable[[], bool],
         emit: Callable[[LogFile, str, dict[str, Any] | None], None]) -> None:
    """Emit the last `lines` lines of every file (0 = all), each file in turn; with `follow`, then every line added
    to them (or to files that appear, e.g. a new rank log) until `running()` turns false."""
    known: dict[Path, LogFile] = {}

    def look(first: bool) -> None:
        for file in files():
            current = known.setdefault(file.path, file)
            new = list(current.new_lines())
            for text, record in (new[-lines:] if first and lines > 0 else new):
                emit(current, text, record)

    look(first=True)
    asked = -RUNNING_CHECK_S
    still = True
    while follow:
        if time.monotonic() - asked >= RUNNING_CHECK_S:
            still, asked = running(), time.monotonic()
        time.sleep(POLL_S)
        look(first=False)
        if not still:  # one last look after the end: the lines written while it ended
            return
