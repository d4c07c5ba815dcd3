"""RUN_DIR/summary.json: what rank 0 writes when the run ends (or stops early), and reading it back.

Summaries from before the `finished` field are read too: whether they are final is then told by comparing the
steps done with the steps asked for.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import UnionType
from typing import Any, NotRequired, TypedDict, Union, get_args, get_origin, get_type_hints, is_typeddict

from bastion.rundir.layout import SUMMARY_FILE, RunDirError
from bastion.rundir.records import (
    PLAN_CHANGE,
    RESTART_EVENTS,
    RUN_START,
    STRAGGLER,
    current_run,
    is_event,
    is_step,
)


class TimeBreakdown(TypedDict):
    """Where the wall time went, seconds, and productive / wall (bastion.reliability.GoodputBreakdown.to_dict)."""

    wall_s: float
    productive_s: float
    lost_s: float
    checkpoint_stall_s: float
    recovery_s: float
    other_s: float
    goodput: float


class Accounting(TypedDict):
    """What failures cost (rundir/accounting.py `account`); also the accounting fields of summary.json."""

    restarts: int
    rollbacks: int
    faults_injected: int
    lost_steps: int
    recovery_s: float
    checkpoint_stall_s: float
    goodput: float
    time_breakdown_s: TimeBreakdown


class StragglerEntry(TypedDict):
    """A rank found persistently slow (a `straggler` event of metrics.jsonl)."""

    rank: int
    #: the step at which it was found
    step: int
    #: its median compute time / the baseline (its peers' median, or the predicted step time)
    factor: float


class PlanChangeEntry(TypedDict):
    """A re-plan for another world size (a `plan_change` event of metrics.jsonl)."""

    #: the checkpoint step the new plan resumed from
    step: int
    from_world: int
    to_world: int
    #: the new plan (ParallelPlan.to_dict)
    plan: dict[str, Any]


class RunSummary(TypedDict):
    """summary.json. The accounting fields (Accounting, `checkpoints`, `skipped_batch_starts`) are there when the
    runtime's resilience wrote them (every run since they exist)."""

    steps: int
    #: False when a stop (SIGTERM before a time limit or preemption, --stop-after-step) ended the run early: the
    #: summary is then partial and a requeued or restarted job resumes and rewrites it (absent in old summaries)
    finished: NotRequired[bool]
    final_loss: float | None
    losses: list[float]
    params_sha256: str | None
    world_size: int
    plan: dict[str, Any]
    model: str
    seed: int
    #: rundir/predicted.py `predicted_figures`
    predicted: dict[str, Any]
    measured: dict[str, Any]
    notes: list[str]
    #: the TrainConfig, as a dict
    config: dict[str, Any]
    restarts: NotRequired[int]
    rollbacks: NotRequired[int]
    faults_injected: NotRequired[int]
    lost_steps: NotRequired[int]
    recovery_s: NotRequired[float]
    checkpoint_stall_s: NotRequired[float]
    goodput: NotRequired[float]
    time_breakdown_s: NotRequired[TimeBreakdown]
    checkpoints: NotRequired[list[int]]
    skipped_batch_starts: NotRequired[list[int]]
    #: with --eval-every: the last evaluation's held-out loss and exp() of it, and every evaluation of the launch
    eval_loss: NotRequired[float]
    perplexity: NotRequired[float]
    evals: NotRequired[list[dict[str, Any]]]

    #: ranks found persistently slow, in the order found (absent in summaries from before it was recorded)
    stragglers: NotRequired[list[StragglerEntry]]
    #: re-plans for another world size, in order (absent in summaries from before they existed)
    plan_changes: NotRequired[list[PlanChangeEntry]]
    #: --fault-tolerance torchft only (runtime/replicas.py replica_summary): the number of replica groups, the
    #: steps some group missed, drops, rejoins, and the samples trained on and dropped (the missing groups' shares)
    replica_groups: NotRequired[dict[str, int]]


#: the fields only a run with --eval-every has
EVAL_FIELDS = ("eval_loss", "perplexity", "evals")


def perplexity(loss: float) -> float:
    """exp(loss), capped where exp overflows (an untrained model's loss can be large)."""
    return math.exp(min(loss, 700.0))


def eval_summary(evals: list[dict[str, Any]]) -> dict[str, Any]:
    """summary.json's evaluation fields from the run's `eval` records (none without --eval-every)."""
    if not evals:
        return {}
    return {"eval_loss": evals[-1]["eval_loss"], "perplexity": evals[-1]["perplexity"],
            "evals": [{k: e[k] for k in ("step", "eval_loss", "perplexity")} for e in evals]}


def straggler_entries(records: list[dict[str, Any]]) -> list[StragglerEntry]:
    """summary.json's `stragglers` from the `straggler` events of the current run."""
    return [{"rank": r["rank"], "step": r["step"], "factor": r["factor"]}
            for r in current_run(records) if is_event(r, STRAGGLER.name)]


def plan_change_entries(records: list[dict[str, Any]]) -> list[PlanChangeEntry]:
    """summary.json's `plan_changes` from the `plan_change` events of the current run."""
    return [{"step": r["step"], "from_world": r["from_world"], "to_world": r["to_world"], "plan": r["plan"]}
            for r in current_run(records) if is_event(r, PLAN_CHANGE.name)]


def summary_path(run_dir: Path) -> Path:
    return Path(run_dir) / SUMMARY_FILE


def write_summary(run_dir: Path, summary: RunSummary) -> None:
    summary_path(run_dir).write_text(json.dumps(summary, indent=2) + "\n")


def _json_types(hint: Any) -> tuple[type, ...]:
    """The JSON values (as json.loads makes them) a field typed `hint` may hold; () for any."""
    if hint is Any:
        return ()
    if get_origin(hint) in (Union, UnionType):
        return tuple(t for arg in get_args(hint) for t in (_json_types(arg) or (object,)))
    base = get_origin(hint) or hint
    if base is float:
        return (int, float)
    if base is type(None):
        return (type(None),)
    return (dict,) if is_typeddict(base) else (base,)


def field_problem(data: dict[str, Any], shape: Any) -> str | None:
    """The first field of `data` whose value is not of the type the TypedDict `shape` gives it (a bool is no
    number), or None: a file of the run directory damaged by hand or by another program, told before a reader
    meets it as a TypeError."""
    for name, hint in get_type_hints(shape).items():
        allowed = _json_types(hint)
        if name not in data or not allowed or object in allowed:
            continue
        value = data[name]
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            names = {**_JSON_NAMES, int: "a number" if float in allowed else "a whole number", float: "a number"}
            kinds = " or ".join(sorted({names.get(t, t.__name__) for t in allowed}))
            return f"'{name}' is {json.dumps(value)[:40]}, not {kinds}"
    return None


_JSON_NAMES = {dict: "an object", list: "a list", str: "a string", bool: "true or false", type(None): "null"}


def read_json_object(path: Path, shape: Any = None) -> dict[str, Any] | None:
    """A JSON object file of the run directory (whose fields have the types of the TypedDict `shape`, when
    given); None when absent; RunDirError with guidance when unreadable."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError, RecursionError) as exc:  # RecursionError: nested too deeply to be bastion's
        raise RunDirError(
            f"{path} is not valid JSON ({exc}); it was cut short or is being written.",
            fix=(f"if the run is finishing, wait a moment and rerun; otherwise move {path.name} aside and "
                 f"the report is made from metrics.jsonl alone."),
            hint=f"bastion report {path.parent}") from exc
    if not isinstance(data, dict):
        raise RunDirError(f"{path} holds {type(data).__name__}, not a JSON object.",
                          fix=f"move {path.name} aside; it was not written by `bastion train`.")
    problem = field_problem(data, shape) if shape is not None else None
    if problem is not None:
        raise RunDirError(f"{path} is damaged: {problem}.",
                          fix=f"move {path.name} aside (or restore it); it was not written so by `bastion train`.")
    return data


def read_summary(run_dir: Path) -> RunSummary | None:
    """summary.json, or None while the run has not written it; RunDirError when it is not a JSON object."""
    return read_json_object(summary_path(run_dir))  # type: ignore[return-value]


def summary_is_final(summary: dict[str, Any]) -> bool:
    """Whether summary.json was written at the end of the run, not at a stop (preemption, time limit,
    --stop-after-step) that a requeue or restart resumes from. Summaries from before the "finished" field compare
    the steps done with the steps asked for."""
    if "finished" in summary:
        return bool(summary["finished"])
    asked = (summary.get("config") or {}).get("steps")
    done = summary.get("steps")
    if isinstance(asked, int) and isinstance(done, int):
        return done >= asked
    return True  # nothing to tell by: read it as final


#: a file system may keep modification times to the second (or two): a record this much later is after the write
_MTIME_SLACK_S = 2.0


def stale_summary_reason(summary: dict[str, Any], written: float, records: list[dict[str, Any]]) -> str | None:
    """Why `summary` (written at `written`, Unix time) is not the current run's, or None when it is."""
    current = current_run(records)
    later = [r for r in current if is_event(r, RUN_START.name, *RESTART_EVENTS)
             and r["time"] > written + _MTIME_SLACK_S]
    if later:
        return f"it was written before the {later[-1]['event']} logged in metrics.jsonl (an earlier process's)"
    steps = max((r["step"] for r in current if is_step(r)), default=None)
    if isinstance(summary.get("steps"), int) and steps is not None and steps > summary["steps"]:
        return f"it ends at step {summary['steps']}, metrics.jsonl has reached step {steps} since"
    return None
