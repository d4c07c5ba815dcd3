"""Which run directory a submitted job writes to, so `bastion status/logs JOBID` can find it after the scheduler
has forgotten the job. One JSON line per submission in `$BASTION_STATE_DIR/jobs.jsonl`
(default `~/.local/state/bastion`)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from bastion.jsonl import read_json_lines


def state_dir() -> Path:
    return Path(os.environ.get("BASTION_STATE_DIR") or Path.home() / ".local" / "state" / "bastion")


def record(engine: str, job_id: str, run_dir: str) -> None:
    path = state_dir() / "jobs.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps({"engine": engine, "job_id": job_id, "run_dir": run_dir, "time": time.time()}) + "\n")


def run_dir_of(engine: str, job_id: str) -> str | None:
    """The newest run directory recorded for this job id, or None."""
    found = None
    for entry in read_json_lines(state_dir() / "jobs.jsonl"):
        if isinstance(entry, dict) and entry.get("engine") == engine and str(entry.get("job_id")) == job_id:
            found = entry.get("run_dir")
    return found
