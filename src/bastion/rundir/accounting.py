"""What failures cost a run, from its metrics.jsonl records: restarts, lost steps, recovery, checkpoint stall.

The runtime writes this accounting into summary.json at the end of a run; the report recomputes it from
metrics.jsonl for a run that has not ended. Wall time = productive + lost + checkpoint stall + recovery + other.
"""

from __future__ import annotations

from typing import Any

from bastion.reliability import GoodputBreakdown
from bastion.rundir.records import (
    CHECKPOINT,
    CHECKPOINT_WAIT,
    FAULT,
    PLAN_CHANGE,
    RESTART,
    ROLLBACK,
    RUN_START,
    STALL_EVENTS,
    current_run,
    is_step,
)
from bastion.rundir.summary import Accounting


def account(records: list[dict[str, Any]], end_time: float) -> Accounting:
    """restarts, lost_steps, recovery_s, checkpoint_stall_s, goodput (+ the breakdown) from metrics records.

    A step record superseded by a later record of the same step (recomputed after a restart or a rollback) is
    lost work. Recovery runs from the last sign of progress before a restart or a re-plan (a step or a save; so
    detecting a hang counts) or from a rollback, to the start of the first step completed afterwards. A re-plan
    (`plan_change`, --on-failure shrink) relaunches the workers, which log `resume`, not `restart`: without it the
    shrink and the grow-back would count as `other`. Wall time runs from
    the last `run_start` event (records before it belong to an earlier run in the same directory).
    """
    records = current_run(records)  # an earlier, unrelated run in the same directory does not count
    starts = [r["time"] for r in records if r.get("event") == RUN_START.name]
    steps = [r for r in records if is_step(r)]
    if not starts and steps:
        starts = [steps[0]["time"] - steps[0].get("step_time_s", 0.0)]
    wall = end_time - (min(starts) if starts else end_time)
    last_by_step = {record["step"]: index for index, record in enumerate(records) if is_step(record)}
    productive = lost = 0.0
    lost_steps = 0
    for index, record in enumerate(records):
        if not is_step(record):
            continue
        if last_by_step[record["step"]] == index:
            productive += record.get("step_time_s", 0.0)
        else:
            lost += record.get("step_time_s", 0.0)
            lost_steps += 1
    stall = sum(r.get("stall_s", 0.0) for r in records if r.get("event") in STALL_EVENTS)
    # an optimizer step that waited for an async save's copy counted that wait in its step time
    productive = max(0.0, productive - sum(r.get("stall_s", 0.0) for r in records
                                           if r.get("event") == CHECKPOINT_WAIT.name))
    recoveries = []
    failure_time = None
    for record in records:
        kind = record.get("event")
        if kind in (RESTART.name, PLAN_CHANGE.name, ROLLBACK.name) and failure_time is None:
            # the failure began after the last sign of progress (a step or a save), not when it was noticed:
            # a hang's detection time is part of its cost
            progress = [r["time"] for r in records if r["time"] < record["time"]
                        and (r.get("event") is None or r.get("event") in (CHECKPOINT.name, RUN_START.name))]
            failure_time = max(progress) if progress and kind != ROLLBACK.name else record["time"]
        elif is_step(record) and failure_time is not None:
            gap = record["time"] - record.get("step_time_s", 0.0) - failure_time
            recoveries.append(max(0.0, gap))
            failure_time = None
    recovery = sum(recoveries)
    breakdown = GoodputBreakdown(wall_s=wall, productive_s=productive, lost_s=lost,
                                 checkpoint_stall_s=stall, recovery_s=recovery)
    # each launch (a --resume, a Slurm requeue) counts its torchrun attempts from 0 again: count the events too
    restart_events = [r for r in records if r.get("event") == RESTART.name]
    restarts = max([r.get("attempt", 0) for r in restart_events] + [len(restart_events)])
    return {"restarts": restarts,
            "rollbacks": sum(1 for r in records if r.get("event") == ROLLBACK.name),
            "faults_injected": sum(1 for r in records if r.get("event") == FAULT.name),
            "lost_steps": lost_steps, "recovery_s": round(recovery, 3),
            "checkpoint_stall_s": round(stall, 3), "goodput": round(breakdown.goodput, 4),
            "time_breakdown_s": {k: round(v, 3) for k, v in breakdown.to_dict().items()}}  # type: ignore[typeddict-item]
