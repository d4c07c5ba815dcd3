"""RUN_DIR/launch.json: which engine started the run and how to reach it, so `bastion status|logs|cancel RUN_DIR`
read the engine from the run directory instead of asking for it again.

    {"engine": "local", "pid": 4711, "pgid": 4711, "host": "box", "started": 1765000000.0, "command": [...],
     "exit_code": 0, "ended": 1765000100.0}              torchrun's process group (`launch/local.py`)
    {"engine": "slurm", "job_ids": ["77", "78"]}         every submission into this run directory, newest last

A local record is written when torchrun starts and completed when it exits; a record without `exit_code` whose
process is gone belongs to a launcher that was killed. (A Kubernetes run directory lives on the job's volume, not
here: those launches are found by job name in `launch/registry.py`.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bastion.rundir.layout import LAUNCH_RECORD_FILE


def launch_record_path(run_dir: Path) -> Path:
    return Path(run_dir) / LAUNCH_RECORD_FILE


def read_launch_record(run_dir: Path) -> dict[str, Any] | None:
    """The record, or None when there is none (or it cannot be read)."""
    try:
        record = json.loads(launch_record_path(run_dir).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("engine"), str) else None


def write_launch_record(run_dir: Path, record: dict[str, Any]) -> None:
    """Replace the record atomically (a reader never sees half a file)."""
    path = launch_record_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def add_slurm_job(run_dir: Path, job_id: str) -> None:
    """A Slurm submission into this run directory (the newest is the one `bastion status RUN_DIR` follows)."""
    record = read_launch_record(run_dir)
    jobs = record.get("job_ids", []) if record is not None and record["engine"] == "slurm" else []
    write_launch_record(run_dir, {"engine": "slurm", "job_ids": [*jobs, job_id]})
