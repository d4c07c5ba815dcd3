"""The figures of `bastion report`: predicted vs measured, where the wall time went, and the loss. Pure Python.

Every figure says where it comes from (`sources`), because a finished run has summary.json (the runtime's own
figures) and an unfinished one only metrics.jsonl.

Steady step time: the median `step_time_s` of the step records of the current run (from its last `run_start`),
leaving out the first `warmup_steps` step records (allocator, autotuning and lazy initialisation) and the first
step after each restart or resume (a new process pays the same start-up again). Recomputed steps count: each was
a real step. The runtime's own summary figure leaves out only the first step of the last process.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from bastion.report.panel import run_panel
from bastion.report.run_files import RunFiles, finite
from bastion.report.wallclock import wallclock_spans
from bastion.rundir import records as kinds
from bastion.rundir.accounting import account
from bastion.rundir.layout import MODEL_FILE, PLAN_FILE
from bastion.rundir.predicted import predicted_figures as predict_run
from bastion.rundir.records import RESTART_EVENTS, current_run, is_event, is_step
from bastion.rundir.summary import plan_change_entries, straggler_entries

#: step records left out at the start of a run by default (summary.json's runtime figure leaves out one too)
WARMUP_STEPS = 1
#: events shown on the timeline (checkpoints are summarised, there may be thousands)
TIMELINE_EVENTS = tuple(kind.name for kind in (
    kinds.RUN_START, kinds.FAULT, kinds.HANG, kinds.RESTART, kinds.RESUME, kinds.ROLLBACK, kinds.SKIP_BATCH,
    kinds.CHECKPOINT_CORRUPT, kinds.CHECKPOINT_INTERVAL, kinds.PREEMPTED, kinds.STRAGGLER, kinds.HEALTH_CHECK,
    kinds.PLAN_CHANGE, kinds.REPLICA_GROUP_DROP, kinds.REPLICA_GROUP_JOIN))


# ---- steady step time ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SteadySteps:
    """Which step records the steady step time uses, and why the others were left out."""

    #: indices (into the current run's records) of the step records used
    used: list[int]
    warmup: list[int]
    after_restart: list[int]
    median_s: float | None


def steady_steps(records: list[dict[str, Any]], warmup_steps: int = WARMUP_STEPS) -> SteadySteps:
    """Split the step records of `records` (already `current_run`) into warm-up, first-after-restart and used."""
    used, warmup, after_restart = [], [], []
    seen = 0
    cold = False
    for index, record in enumerate(records):
        if record.get("event") in RESTART_EVENTS:
            cold = True
            continue
        if not is_step(record):
            continue
        if seen < warmup_steps:
            warmup.append(index)
        elif cold:
            after_restart.append(index)
        else:
            used.append(index)
        seen += 1
        cold = False
    times = [records[i]["step_time_s"] for i in used if finite(records[i].get("step_time_s")) is not None]
    return SteadySteps(used, warmup, after_restart, statistics.median(times) if times else None)


def measured_figures(run: RunFiles, warmup_steps: int = WARMUP_STEPS) -> dict[str, Any]:
    """Measured step time, tokens/s, MFU and peak memory from metrics.jsonl (steady steps only)."""
    records = current_run(run.records)
    steady = steady_steps(records, warmup_steps)
    step_records = [r for r in records if is_step(r)]
    out: dict[str, Any] = {
        "step_time_s": steady.median_s,
        "steps_used": len(steady.used),
        "steps_left_out_warmup": len(steady.warmup),
        "steps_left_out_after_restart": len(steady.after_restart),
        "tokens_per_s": None, "mfu": None,
    }
    median = steady.median_s
    if median:
        # every record of a run moves the same tokens and FLOPs: tokens/s × step time is the step's token count
        sample = next((records[i] for i in steady.used if finite(records[i].get("tokens_per_s"))), None)
        if sample is not None:
            out["tokens_per_s"] = sample["tokens_per_s"] * sample["step_time_s"] / median
        sample = next((records[i] for i in steady.used if finite(records[i].get("mfu"))), None)
        if sample is not None:
            out["mfu"] = sample["mfu"] * sample["step_time_s"] / median
    memory = [finite(r.get("mem_gib")) for r in step_records]
    memory = [m for m in memory if m is not None]
    out["peak_mem_bytes"] = max(memory) * 2**30 if memory else None
    summary_measured = (run.summary or {}).get("measured") or {}
    if finite(summary_measured.get("peak_mem_bytes")) is not None:
        out["peak_mem_bytes"] = max(out["peak_mem_bytes"] or 0.0, float(summary_measured["peak_mem_bytes"]))
    out["peak_mem_kind"] = summary_measured.get("peak_mem_kind", "rank 0's mem_gib in metrics.jsonl")
    return out


# ---- prediction ------------------------------------------------------------------------------------------
def predicted_figures(run: RunFiles, cluster: str | None = None) -> tuple[dict[str, Any], str]:
    """(the predictor's figures, where they come from): summary.json's, or computed now from plan.json +
    model.json on `cluster` (torch-free), or an empty dict with a note."""
    recorded = (run.summary or {}).get("predicted")
    if recorded and cluster is None:
        return recorded, "summary.json (predicted by `bastion train` at the end of the run)"
    if cluster is None:
        return {}, "none: the run has not written summary.json yet; pass --cluster to predict from plan.json"
    if run.plan is None or run.model is None:
        return {}, "none: plan.json or model.json is missing from the run directory"
    from bastion.errors import BastionError
    from bastion.specs.model import model_from_mapping
    from bastion.specs.plan import ParallelPlan

    try:
        spec = model_from_mapping(dict(run.model), MODEL_FILE)
        plan = ParallelPlan.from_dict(dict(run.plan), PLAN_FILE)
    except BastionError as exc:
        return {}, f"none: {exc.problem}"
    figures = predict_run(spec, plan, cluster, spec.seq_len)
    if "note" in figures:
        return {}, f"none: {figures['note']}"
    return figures, f"computed now by bastion.predict from plan.json + model.json on {cluster}"


# ---- failures and what they cost ------------------------------------------------------------------------
def recomputed_steps(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Step records superseded by a later record of the same step, each blamed on the next restart/rollback."""
    last_index = {r["step"]: i for i, r in enumerate(records) if is_step(r)}
    by_cause = {"restart": 0, "rollback": 0, "other": 0}
    steps: list[int] = []
    for index, record in enumerate(records):
        if not is_step(record) or last_index[record["step"]] == index:
            continue
        steps.append(record["step"])
        cause = next((r["event"] for r in records[index + 1:] if is_event(r, *RESTART_EVENTS, kinds.ROLLBACK.name)),
                     "other")
        by_cause["restart" if cause in RESTART_EVENTS else cause] += 1
    return {"count": len(steps), "steps": steps, "by_cause": by_cause}


def failure_accounting(run: RunFiles) -> tuple[dict[str, Any], str]:
    """The runtime's accounting (rundir/accounting.py `account`): from summary.json when the run wrote it, else
    recomputed from metrics.jsonl up to its last record."""
    if run.summary is not None and "time_breakdown_s" in run.summary:
        keys = ("restarts", "rollbacks", "faults_injected", "lost_steps", "recovery_s", "checkpoint_stall_s",
                "goodput", "time_breakdown_s")
        return ({k: run.summary[k] for k in keys if k in run.summary},
                "summary.json (the runtime's account() at the end of the run)")
    end = max(r["time"] for r in run.records)
    return account(run.records, end), "metrics.jsonl up to its last record (rundir/accounting.py account())"


def predicted_goodput(run: RunFiles, step_time_s: float | None, accounting: dict[str, Any]) -> dict[str, Any]:
    """What bastion's reliability model expects for this run's checkpoint interval, save stall and MTBF.

    The run does not record this, so it is computed here with bastion.reliability: interval = checkpoint every
    N steps × the measured steady step time (the whole run when it never checkpoints), stall = the measured mean
    blocking time per save, MTBF = --mtbf-hours or the published failure rate × devices, restart cost 0.
    """
    from bastion.reliability import default_failure_model, expected_goodput

    if not step_time_s:
        return {"goodput": None, "note": "no steady step time measured"}
    records = current_run(run.records)
    config = (run.summary or {}).get("config") or {}
    resilience = config.get("resilience") or {}
    every = resilience.get("checkpoint_every")
    chosen = [r for r in records if is_event(r, kinds.CHECKPOINT_INTERVAL.name)]
    saves = [r for r in records if is_event(r, kinds.CHECKPOINT.name)]
    if chosen:
        every, every_source = int(chosen[-1]["every_steps"]), "--checkpoint-every auto (checkpoint_interval event)"
    elif isinstance(every, int) and every > 0:
        every_source = "--checkpoint-every in summary.json's config"
    elif every is None and len(saves) >= 2:
        every, every_source = saves[1]["step"] - saves[0]["step"], "spacing of the checkpoint events"
    else:
        every, every_source = 0, "no checkpoints"
    steps = config.get("steps") or max((r["step"] for r in records if is_step(r)), default=1)
    interval_s = (every if every else steps) * step_time_s
    stall_s = accounting.get("checkpoint_stall_s", 0.0) / len(saves) if saves else 0.0
    world = (run.summary or {}).get("world_size") or next(
        (r.get("world_size") for r in records if is_event(r, kinds.RUN_START.name)), None) or 1
    if resilience.get("mtbf_hours"):
        mtbf_h, mtbf_source = float(resilience["mtbf_hours"]), "--mtbf-hours"
    else:
        model = default_failure_model()
        mtbf_h = model.mtbf_hours(world)
        mtbf_source = f"{model.name}: {model.gpu_hours_per_failure:,.0f} device-hours per failure / {world} devices"
    value = expected_goodput(interval_s, stall_s, mtbf_h * 3600.0)
    return {"goodput": value, "checkpoint_every_steps": every, "interval_s": interval_s, "stall_s": stall_s,
            "mtbf_hours": mtbf_h, "restart_s": 0.0,
            "note": (f"bastion.reliability.expected_goodput (computed by the report): interval {every_source} × "
                     f"the steady step time, stall = mean measured blocking save time, MTBF from {mtbf_source}, "
                     f"restart cost 0; natural failures only (injected faults and start-up time are not in it)")}


# ---- timeline and loss -----------------------------------------------------------------------------------
def timeline(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The notable events, with seconds since the run started and the last step completed before each."""
    t0 = min(r["time"] for r in records)
    out, last_step = [], 0
    for record in records:
        if is_step(record):
            last_step = record["step"]
            continue
        if record.get("event") not in TIMELINE_EVENTS:
            continue
        entry = {"t_s": round(record["time"] - t0, 3), "event": record["event"], "after_step": last_step}
        for key in ("step", "attempt", "resumed_from_step", "fault", "spec", "rank", "reason", "world_size",
                    "every_steps", "skipped_sample_ids", "sample_ids", "factor", "baseline", "ok", "problems", "from_world", "to_world",
                    "lost_ranks", "groups", "participating", "replica_group"):
            if key in record:
                entry[key] = record[key]
        out.append(entry)
    return out


def kept_steps(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last record of every step (the one whose update the final model holds), in step order."""
    last: dict[int, dict[str, Any]] = {}
    for record in records:
        if is_step(record):
            last[record["step"]] = record
    return [last[step] for step in sorted(last)]


def loss_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    kept = kept_steps(records)
    finite_losses = [(r["step"], finite(r.get("loss"))) for r in kept]
    good = [(s, v) for s, v in finite_losses if v is not None]
    best = min(good, key=lambda sv: sv[1]) if good else (None, None)
    return {
        "first": good[0][1] if good else None, "first_step": good[0][0] if good else None,
        "last": good[-1][1] if good else None, "last_step": good[-1][0] if good else None,
        "min": best[1], "min_step": best[0],
        "non_finite_steps": [s for s, v in finite_losses if v is None],
        "nan_faults": [{"step": r.get("step"), "rank": r.get("rank")} for r in records
                       if is_event(r, kinds.FAULT.name) and r.get("fault") == "nan"],
        "rollbacks": [{k: r.get(k) for k in ("step", "reason", "resumed_from_step", "skipped_sample_ids")}
                      for r in records if is_event(r, kinds.ROLLBACK.name)],
        # only with --eval-every (a report of any other run is unchanged)
        **({"eval": held_out_losses(records)} if any(is_event(r, kinds.EVAL.name) for r in records) else {}),
    }


def held_out_losses(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last `eval` record of every step (--eval-every), in step order."""
    last = {r["step"]: r for r in records if is_event(r, kinds.EVAL.name)}
    return [{k: last[step].get(k) for k in ("step", "eval_loss", "perplexity")} for step in sorted(last)]


def log_files(run: RunFiles) -> dict[str, Any]:
    """--tensorboard and --profile outputs in the run directory (paths relative to it), for the report's links."""
    from bastion.rundir.layout import PROFILE_DIR, TENSORBOARD_DIR

    board = run.path / TENSORBOARD_DIR
    profile = run.path / PROFILE_DIR
    return {"tensorboard": TENSORBOARD_DIR if board.is_dir() else None,
            "profile": sorted(f"{PROFILE_DIR}/{p.name}" for p in profile.iterdir()) if profile.is_dir() else []}


# ---- everything ------------------------------------------------------------------------------------------
def build_report(run: RunFiles, warmup_steps: int = WARMUP_STEPS, cluster: str | None = None) -> dict[str, Any]:
    """The whole report as one JSON-able object (what `bastion report --json` prints)."""
    records = current_run(run.records)
    measured = measured_figures(run, warmup_steps)
    predicted, predicted_source = predicted_figures(run, cluster)
    accounting, accounting_source = failure_accounting(run)
    saves = [r for r in records if is_event(r, kinds.CHECKPOINT.name)]
    committed = [r["step"] for r in records if is_event(r, kinds.CHECKPOINT_COMMITTED.name)]
    # checkpoints on disk but no commit events: a runtime that did not log them (None: not known)
    committed_count = None if not committed and run.checkpoint_steps else len(committed)
    # restart events, over every launch of the run: each launch's `attempt` counts from 0 again (--resume)
    restart_events = sum(1 for r in records if is_event(r, kinds.RESTART.name))
    accounting["restarts"] = max(accounting.get("restarts", 0), restart_events)
    logs = log_files(run)
    report = {
        "run_dir": str(run.path),
        "state": run.state(),
        "finished": run.finished,
        "model": (run.model or {}).get("name") or (run.summary or {}).get("model"),
        "plan": run.plan or (run.summary or {}).get("plan"),
        "world_size": (run.summary or {}).get("world_size") or next(
            (r.get("world_size") for r in records if is_event(r, kinds.RUN_START.name)), None),
        "steps_completed": max((r["step"] for r in records if is_step(r)), default=0),
        "step_records": sum(1 for r in records if is_step(r)),
        "unreadable_lines": run.unreadable_lines,
        "predicted": predicted,
        "measured": measured,
        "failures": {
            **accounting,
            "recomputed": recomputed_steps(records),
            "checkpoint_saves": len(saves),
            "checkpoints_committed": committed_count,
            "checkpoints_on_disk": run.checkpoint_steps,
            "predicted_goodput": predicted_goodput(run, measured["step_time_s"], accounting),
            "stragglers": straggler_entries(records),
            "plan_changes": plan_change_entries(records),
        },
        "timeline": timeline(records),
        "loss": loss_summary(records),
        **({"logs": logs} if logs["tensorboard"] or logs["profile"] else {}),  # --tensorboard, --profile
        "sources": {
            "predicted": predicted_source,
            "measured": (f"metrics.jsonl: median step_time_s of {measured['steps_used']} steady step(s), leaving "
                         f"out {measured['steps_left_out_warmup']} warm-up step(s) and "
                         f"{measured['steps_left_out_after_restart']} first step(s) after a restart; memory: rank 0's "
                         f"peak ({measured['peak_mem_kind']})"),
            "failures": accounting_source,
            "recomputed": "metrics.jsonl: step records superseded by a later record of the same step",
        },
        "wallclock": wallclock_spans(records),
    }
    report["panel"] = run_panel(run, report)
    return report
