"""Reading a run directory written by `bastion train`, without torch: what exists, and what state the run is in.

The files and their records are the run-directory contract of bastion/rundir/ (layout.py lists them).
A run still in progress (or killed) has no summary.json yet; the report then works from metrics.jsonl alone.
Nor does a run resumed in the same directory: the summary.json of the process that stopped early stays until the
new one ends, so a summary older than the records (a start, resume or restart logged after it was written, or
steps past its `steps`) is set aside and the report works from metrics.jsonl, saying so.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from bastion.rundir.checkpoints import with_manifest
from bastion.rundir.layout import (
    METRICS_FILE,
    MODEL_FILE,
    PLAN_FILE,
    RUN_CONFIG_FILE,
    RUN_MARKERS,
    SUMMARY_FILE,
    RunConfigFile,
    RunDirError,
    checkpoints_dir,
)
from bastion.rundir.metrics import metrics_path, read_metrics
from bastion.rundir.records import is_event, is_step
from bastion.rundir.summary import (
    Accounting,
    RunSummary,
    read_json_object,
    stale_summary_reason,
    summary_is_final,
)


@dataclass(frozen=True)
class RunFiles:
    """What was read from one run directory."""

    path: Path
    #: every record of metrics.jsonl (rundir/records.py), in file order
    records: list[dict[str, Any]]
    #: lines of metrics.jsonl that are not a record (a writer killed mid-line leaves one)
    unreadable_lines: int
    #: summary.json (rundir/summary.py RunSummary), or None while the run has not ended
    summary: dict[str, Any] | None
    plan: dict[str, Any] | None
    model: dict[str, Any] | None
    #: steps of the committed checkpoints (with their manifest) under checkpoints/
    checkpoint_steps: list[int] = field(default_factory=list)
    #: seconds since metrics.jsonl was last written (to tell a live run from a dead one)
    metrics_age_s: float | None = None
    #: why summary.json was set aside (it belongs to an earlier process of a resumed run), else None
    stale_summary: str | None = None
    #: run_config.json: the resolved run (train options, model, plan), None for runs from before it
    run_config: dict[str, Any] | None = None

    @property
    def step_records(self) -> list[dict[str, Any]]:
        """Records of completed optimizer steps, in the order they ran (recomputed steps appear again)."""
        return [r for r in self.records if is_step(r)]

    @property
    def events(self) -> list[dict[str, Any]]:
        return [r for r in self.records if is_event(r)]

    @property
    def finished(self) -> bool:
        return bool(self.summary and summary_is_final(self.summary))

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
        if not summary_is_final(self.summary):
            return f"stopped early at step {self.summary.get('steps')} of {target} (a restart resumes it)"
        return f"finished: {self.summary.get('steps')} steps"


#: the least value of the counts and times of summary.json and run_config.json the report computes with
_LOWEST = {"world_size": 1, **dict.fromkeys((name for name, kind in get_type_hints(Accounting).items()
                                            if kind in (int, float)), 0)}


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
    summary = read_json_object(run_dir / SUMMARY_FILE, RunSummary)
    plan = read_json_object(run_dir / PLAN_FILE)
    model = read_json_object(run_dir / MODEL_FILE)
    run_config = read_json_object(run_dir / RUN_CONFIG_FILE, RunConfigFile)
    for name, data in ((SUMMARY_FILE, summary), (RUN_CONFIG_FILE, run_config)):
        for key, lowest in _LOWEST.items():
            if data is not None and isinstance(data.get(key), int | float) and data[key] < lowest:
                raise RunDirError(f"{run_dir / name} is damaged: '{key}' is {data[key]}, not >= {lowest}.",
                                  fix=f"move {name} aside (or restore it); it was not written so by "
                                      f"`bastion train`.")
    _check_plans(run_dir, plan=plan, summary=summary, run_config=run_config)
    metrics = read_metrics(run_dir)
    records, bad = metrics.records, metrics.unreadable
    if not any(is_step(r) for r in records):
        if records or bad:
            problem = (f"{metrics_path(run_dir)} has no complete step record yet"
                       + (f" ({bad} line(s) did not parse: the file is truncated or not bastion's)" if bad else "")
                       + ".")
        else:
            problem = f"{run_dir} has no metrics yet: {METRICS_FILE} is missing or empty."
        raise RunDirError(problem,
                          fix="if the run is starting, wait for its first optimizer step and rerun; a run that "
                              "died before its first step has nothing to report (start it again with "
                              "`bastion train`).",
                          hint=f"bastion report {run_dir}")
    path = metrics_path(run_dir)
    age = time.time() - path.stat().st_mtime if path.is_file() else None
    stale = None
    if summary is not None:
        stale = stale_summary_reason(summary, (run_dir / SUMMARY_FILE).stat().st_mtime, records)
        if stale is not None:
            summary = None
    return RunFiles(path=run_dir, records=records, unreadable_lines=bad, summary=summary, plan=plan, model=model,
                    checkpoint_steps=[c.step for c in with_manifest(checkpoints_dir(run_dir))], metrics_age_s=age,
                    stale_summary=stale, run_config=run_config)


def _check_plans(run_dir: Path, **files: dict[str, Any] | None) -> None:
    """Every plan the report shows (plan.json, and the copies in summary.json and run_config.json) is a
    ParallelPlan: a damaged one is named here, not met as a TypeError while the panel is written."""
    from bastion.errors import BastionError
    from bastion.specs.plan import ParallelPlan

    names = {"plan": PLAN_FILE, "summary": SUMMARY_FILE, "run_config": RUN_CONFIG_FILE}
    for key, data in files.items():
        plan = data if key == "plan" else (data or {}).get("plan")
        if plan is None:
            continue
        where = names[key] if key == "plan" else f"the plan in {names[key]}"
        try:
            ParallelPlan.from_dict(plan, where)
        except BastionError as exc:
            raise RunDirError(f"{run_dir / names[key]} is damaged: {exc.problem}",
                              fix=f"move {names[key]} aside (or restore it); it was not written so by "
                                  f"`bastion train`.") from exc


def finite(value: Any) -> float | None:
    """A float, or None for missing / NaN / Inf (JSON readers of the report get null, not NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None
