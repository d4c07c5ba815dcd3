"""Which run directory a submitted job writes to (and, for Kubernetes, which kind of job it is), so `bastion
status|logs|cancel JOB` can find it after the scheduler has forgotten the job. One JSON line per submission in
`$BASTION_STATE_DIR/jobs.jsonl` (default `~/.local/state/bastion`)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from bastion.jsonl import read_json_lines


def state_dir() -> Path:
    return Path(os.environ.get("BASTION_STATE_DIR") or Path.home() / ".local" / "state" / "bastion")


def record(engine: str, job_id: str, run_dir: str, **details: str) -> None:
    """One submission (`details`: what else reaching the job needs, e.g. a Kubernetes job's kind)."""
    path = state_dir() / "jobs.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps({"engine": engine, "job_id": job_id, "run_dir": run_dir, "time": time.time(),
                              **details}) + "\n")


def entry_of(job_id: str, engine: str | None = None) -> dict | None:
    """The newest submission recorded under this job id (of `engine`, or of any), or None."""
    found = None
    for entry in read_json_lines(state_dir() / "jobs.jsonl"):
        if (isinstance(entry, dict) and engine in (None, entry.get("engine"))
                and str(entry.get("job_id")) == job_id):
            found = entry
    return found


def run_dir_of(engine: str, job_id: str) -> str | None:
    """The newest run directory recorded for this job id, or None."""
    entry = entry_of(job_id, engine)
    return entry.get("run_dir") if entry else None
