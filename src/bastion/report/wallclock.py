"""Where the wall-clock time of a run went, as spans on rows (the report's Gantt timeline). Pure Python.

Each span is {"row", "start_s", "end_s", "label"} in seconds since the first record of the current run; an
instant (a fault, a restart) has start_s == end_s. The rows, top to bottom:

- steps kept: a step record from `time - step_time_s` to `time` whose update the final model holds;
- steps redone: a step record superseded by a later record of the same step (its work was lost);
- recovery: from the last record before a restart, resume or rollback to the start of the next step (what the
  run spent getting back: detection, new processes, reload);
- checkpoint stall: the part of a save (or of a wait for an async save) that blocked the loop (`stall_s`);
- checkpoint write: from a save's start to its `checkpoint_committed` (an async save writes in the background);
- events: faults, hangs, preemptions, restarts, resumes, rollbacks and corrupt checkpoints, as instants.
"""

from __future__ import annotations

from typing import Any

from bastion.rundir import records as kinds
from bastion.rundir.records import RESTART_EVENTS, STALL_EVENTS, is_event, is_step

ROWS = ("steps kept", "steps redone", "recovery", "checkpoint stall", "checkpoint write", "events")
#: events drawn as instants on the events row
INSTANT_EVENTS = tuple(kind.name for kind in (
    kinds.FAULT, kinds.HANG, kinds.PREEMPTED, kinds.RESTART, kinds.RESUME, kinds.ROLLBACK, kinds.CHECKPOINT_CORRUPT))
#: events after which the run had to get back to where it was (recovery)
RECOVERY_EVENTS = (*RESTART_EVENTS, kinds.ROLLBACK.name)


def _span(row: str, start: float, end: float, label: str) -> dict[str, Any]:
    return {"row": row, "start_s": round(start, 4), "end_s": round(max(end, start), 4), "label": label}


def _commit_of(records: list[dict[str, Any]], index: int) -> dict[str, Any] | None:
    """The checkpoint_committed record of the save begun at records[index], if it came before the process ended
    (a save cut short by a restart never commits; the same step saved again after it is another save)."""
    step = records[index].get("step")
    for record in records[index + 1:]:
        if is_event(record, *RESTART_EVENTS):
            return None
        if is_event(record, kinds.CHECKPOINT_COMMITTED.name) and record.get("step") == step:
            return record
    return None


def wallclock_spans(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The spans of `records` (the current run's, in file order), row by row as listed in ROWS."""
    if not records:
        return []
    t0 = min(r["time"] for r in records)
    last_index = {r["step"]: i for i, r in enumerate(records) if is_step(r)}
    spans: list[dict[str, Any]] = []
    pending_recovery: tuple[float, str] | None = None
    last_time = t0
    for index, record in enumerate(records):
        t = record["time"] - t0
        if is_step(record):
            start = t - float(record.get("step_time_s") or 0.0)
            if pending_recovery is not None:
                since, why = pending_recovery
                spans.append(_span("recovery", since, start, f"recovery after {why}: {start - since:.2f} s"))
                pending_recovery = None
            kept = last_index[record["step"]] == index
            row = "steps kept" if kept else "steps redone"
            spans.append(_span(row, start, t, f"step {record['step']}{'' if kept else ' (redone later)'}: "
                                              f"{t - start:.3f} s"))
            last_time = t
            continue
        event = record.get("event")
        if event in STALL_EVENTS and record.get("stall_s"):
            stall = float(record["stall_s"])
            spans.append(_span("checkpoint stall", t - stall, t,
                               f"{event} at step {record.get('step')}: blocked {stall:.3f} s"))
        if event == kinds.CHECKPOINT.name:
            committed = _commit_of(records, index)
            if committed is not None:
                end = committed["time"] - t0
                spans.append(_span("checkpoint write", t - float(record.get("stall_s") or 0.0), end,
                                   f"checkpoint of step {record.get('step')} ({record.get('mode', '?')}): committed "
                                   f"{end - t:.2f} s after the loop went on"))
        if event in INSTANT_EVENTS:
            details = ", ".join(f"{k}={record[k]}" for k in ("fault", "rank", "step", "resumed_from_step", "reason")
                                if k in record)
            spans.append(_span("events", t, t, f"{event} at {t:.2f} s" + (f" ({details})" if details else "")))
        if event in RECOVERY_EVENTS:
            pending_recovery = (last_time, event) if pending_recovery is None else pending_recovery
        last_time = max(last_time, t) if event not in RECOVERY_EVENTS else last_time
    order = {row: i for i, row in enumerate(ROWS)}
    return sorted(spans, key=lambda s: (order[s["row"]], s["start_s"]))
