"""Reading a run directory written by `bastion train`, without torch: what exists, and what state the run is in.

A run directory holds (runtime/train.py, metrics.py, events.py, resilience.py):
  plan.json, model.json   written by rank 0 before the first step
  metrics.jsonl           one JSON object per line: step records ({"step", "loss", "step_time_s", "time", ...})
                          from rank 0's MetricsWriter, and event records ({"event": "run_start" | "restart" |
                          "checkpoint" | "rollback" | "fault" | ..., "time", ...}) appended by any rank
  summary.json            written by rank 0 when the run ends ("predicted", "measured", the accounting fields)
  checkpoints/step-NNNNNNNN/   committed checkpoints (runtime/checkpoint_files.py)
A run still in progress (or killed) has no summary.json yet; the report then works from metrics.jsonl alone.
Nor does a run resumed in the same directory: the summary.json of the process that stopped early stays until the
new one ends, so a summary older than the records (a start, resume or restart logged after it was written, or
steps past its `steps`) is set aside and the report works from metrics.jsonl, saying so.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.errors import BastionError

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
#: files only `bastion train` writes into a run directory; one of them makes a directory a run directory
RUN_MARKERS = (METRICS_FILE, SUMMARY_FILE, "plan.json", "model.json")


class RunDirError(BastionError):
    """A directory that is not (yet) a readable `bastion train` run directory."""

    reason = "bad run directory"


@dataclass(frozen=True)
class RunFiles:
    """What was read from one run directory."""

    path: Path
    #: every parseable line of metrics.jsonl, in file order
    records: list[dict[str, Any]]
    #: lines of metrics.jsonl that did not parse (a writer killed mid-line leaves one)
    unreadable_lines: int
    #: summary.json, or None while the run has not ended
    summary: dict[str, Any] | None
    plan: dict[str, Any] | None
    model: dict[str, Any] | None
    #: steps of the committed checkpoints under checkpoints/
    checkpoint_steps: list[int] = field(default_factory=list)
    #: seconds since metrics.jsonl was last written (to tell a live run from a dead one)
    metrics_age_s: float | None = None
    #: why summary.json was set aside (it belongs to an earlier process of a resumed run), else None
    stale_summary: str | None = None

    @property
    def step_records(self) -> list[dict[str, Any]]:
        """Records of completed optimizer steps, in the order they ran (recomputed steps appear again)."""
        return [r for r in self.records if "event" not in r and "step" in r]

    @property
    def events(self) -> list[dict[str, Any]]:
        return [r for r in self.records if "event" in r]

    @property
    def finished(self) -> bool:
        return bool(self.summary and self.summary.get("finished", True))

    def state(self) -> str:
        """One line: finished, stopped early, or not ended (running or died before writing summary.json)."""
        steps = max((r["step"] for r in self.step_records), default=0)
        if self.summary is None:
            age = f"; metrics.jsonl last written {self.metrics_age_s:.0f} s ago" if self.metrics_age_s else ""
            why = (f"summary.json set aside: {self.stale_summary}" if self.stale_summary
                   else "no summary.json yet")
            return (f"unfinished: {why} (still running, or stopped before the end); "
                    f"{steps} step(s) recorded so far{age}")
        target = (self.summary.get("config") or {}).get("steps")
        if not self.summary.get("finished", True):
            return f"stopped early at step {self.summary.get('steps')} of {target} (a restart resumes it)"
        return f"finished: {self.summary.get('steps')} steps"


def _read_json_file(path: Path, run_dir: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError, RecursionError) as exc:  # RecursionError: nested too deeply to be bastion's
        raise RunDirError(
            f"{path} is not valid JSON ({exc}); it was cut short or is being written.",
            fix=(f"if the run is finishing, wait a moment and rerun; otherwise move {path.name} aside and "
                 f"the report is made from metrics.jsonl alone."),
            hint=f"bastion report {run_dir}") from exc
    if not isinstance(data, dict):
        raise RunDirError(f"{path} holds {type(data).__name__}, not a JSON object.",
                          fix=f"move {path.name} aside; it was not written by `bastion train`.")
    return data


def _read_metrics(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(records, lines that did not parse). Blank lines are neither."""
    records: list[dict[str, Any]] = []
    bad = 0
    if not path.is_file():
        return records, bad
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):
            bad += 1
            continue
        if isinstance(value, dict) and _is_number(value.get("time")) and _numbers_where_numbers_belong(value):
            records.append(value)
        else:
            bad += 1
    return records, bad


#: fields of a step record that the accounting does arithmetic on (`mfu` and `mem_gib` may be null)
_STEP_NUMBERS = ("step_time_s", "tokens_per_s", "loss")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numbers_where_numbers_belong(record: dict[str, Any]) -> bool:
    """A step record whose step is a whole number and whose figures are numbers (a damaged or foreign line is
    counted as unreadable, not met later as a TypeError)."""
    if "event" in record or "step" not in record:
        return True
    return (isinstance(record["step"], int) and not isinstance(record["step"], bool)
            and all(_is_number(record[key]) for key in _STEP_NUMBERS if key in record))


#: a file system may keep modification times to the second (or two): a record this much later is after the write
_MTIME_SLACK_S = 2.0


def _stale_summary(summary: dict[str, Any], written: float, records: list[dict[str, Any]]) -> str | None:
    """Why `summary` (written at `written`, Unix time) is not the current run's, or None when it is."""
    last_start = max((i for i, r in enumerate(records) if r.get("event") == "run_start"), default=0)
    current = records[last_start:]
    later = [r for r in current if r.get("event") in ("run_start", "resume", "restart")
             and r["time"] > written + _MTIME_SLACK_S]
    if later:
        return f"it was written before the {later[-1]['event']} logged in metrics.jsonl (an earlier process's)"
    steps = max((r["step"] for r in current if "event" not in r and "step" in r), default=None)
    if isinstance(summary.get("steps"), int) and steps is not None and steps > summary["steps"]:
        return f"it ends at step {summary['steps']}, metrics.jsonl has reached step {steps} since"
    return None


def _checkpoint_steps(run_dir: Path) -> list[int]:
    from bastion.runtime.checkpoint_files import committed  # pure Python

    return [info.step for info in committed(run_dir / "checkpoints")]


def load_run(run_dir: Path) -> RunFiles:
    """Read RUN_DIR; raise RunDirError with guidance when there is nothing to report on."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise RunDirError(f"Run directory {run_dir} does not exist.",
                          fix="pass the --run-dir that `bastion train` wrote to.",
                          hint=f"ls {run_dir.parent}")
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is a file, not a run directory.",
                          fix="pass the directory given to `bastion train --run-dir`, not a file in it.")
    if not any((run_dir / name).is_file() for name in RUN_MARKERS):
        raise RunDirError(f"{run_dir} is not a run directory: it has none of {', '.join(RUN_MARKERS)}.",
                          fix="pass the directory given to `bastion train --run-dir`.")
    summary = _read_json_file(run_dir / SUMMARY_FILE, run_dir)
    plan = _read_json_file(run_dir / "plan.json", run_dir)
    model = _read_json_file(run_dir / "model.json", run_dir)
    metrics_path = run_dir / METRICS_FILE
    records, bad = _read_metrics(metrics_path)
    if not any("event" not in r and "step" in r for r in records):
        if records or bad:
            problem = (f"{metrics_path} has no complete step record yet"
                       + (f" ({bad} line(s) did not parse: the file is truncated or not bastion's)" if bad else "")
                       + ".")
        else:
            problem = f"{run_dir} has no metrics yet: {METRICS_FILE} is missing or empty."
        raise RunDirError(problem,
                          fix="if the run is starting, wait for its first optimizer step and rerun; a run that "
                              "died before its first step has nothing to report (start it again with "
                              "`bastion train`).",
                          hint=f"bastion report {run_dir}")
    age = time.time() - metrics_path.stat().st_mtime if metrics_path.is_file() else None
    stale = None
    if summary is not None:
        stale = _stale_summary(summary, (run_dir / SUMMARY_FILE).stat().st_mtime, records)
        if stale is not None:
            summary = None
    return RunFiles(path=run_dir, records=records, unreadable_lines=bad, summary=summary, plan=plan, model=model,
                    checkpoint_steps=_checkpoint_steps(run_dir), metrics_age_s=age, stale_summary=stale)


def finite(value: Any) -> float | None:
    """A float, or None for missing / NaN / Inf (JSON readers of the report get null, not NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None
