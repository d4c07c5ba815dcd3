"""Where a run resumes from, checked before any process starts. Pure Python (no torch): reads JSON only.

`--resume-from PATH` accepts a checkpoint (`.../checkpoints/step-NNNNNNNN`), a checkpoints directory or a run
directory; the newest checkpoint whose manifest checks out is used. Nothing is moved or written here: a bad
request is reported with guidance and the run does not start. Neither does a run whose own checkpoints were all
quarantined as bad: starting at step 0 after them takes `--restart-from-scratch`.
"""

from __future__ import annotations

import json
from pathlib import Path

from bastion.errors import CheckpointError, PlanError
from bastion.rundir import checkpoints as cf
from bastion.rundir.layout import checkpoints_dir
from bastion.specs.model import ModelSpec, model_from_mapping
from bastion.specs.plan import ParallelPlan

STATE_JSON = "state.json"


def resolve_resume_source(path: Path, verify: bool = False, key: bytes | None = None) -> cf.CheckpointInfo:
    """The checkpoint `path` designates (verified against its manifest, and authenticated by `key` when one is
    given, when `verify`), or a CheckpointError."""
    path = Path(path)
    hint = "ls RUN_DIR/checkpoints   # committed checkpoints are step-NNNNNNNN directories with a manifest.json"
    if not path.exists():
        raise CheckpointError(f"--resume-from {path}: no such file or directory.",
                              fix="point it at a run directory or one of its checkpoints/step-NNNNNNNN.", hint=hint)
    if (path / cf.MANIFEST).is_file() or path.name.startswith("step-"):
        step = path.name.removeprefix("step-")
        candidates = [cf.CheckpointInfo(int(step) if step.isdigit() else -1, path)]
    else:
        root = checkpoints_dir(path) if checkpoints_dir(path).is_dir() else path
        candidates = list(reversed(cf.committed(root)))
    reasons = []
    for info in candidates:
        reason = cf.verify(info.path, key) if verify else (None if (info.path / cf.MANIFEST).is_file() else "no manifest")
        if reason is None:
            return info
        reasons.append(f"{info.path.name}: {reason}")
    detail = f" ({'; '.join(reasons)})" if reasons else ""
    raise CheckpointError(f"--resume-from {path}: no valid checkpoint there{detail}.",
                          fix="point it at a run directory whose checkpoints/ holds a committed step-NNNNNNNN "
                              "(one with manifest.json), or drop --resume-from to start fresh.", hint=hint)


def all_checkpoints_bad(run_dir: Path) -> CheckpointError:
    """The refusal when every checkpoint of the run in `run_dir` was set aside as bad: what, where, what now."""
    root = Path(run_dir) / "checkpoints"
    lines = [f"  {moved.name}: {cf.quarantine_reason(moved)}" for moved in cf.quarantined_checkpoints(root)]
    return CheckpointError(
        f"Every checkpoint of the run in {run_dir} is bad and was set aside under {root / 'quarantine'}, so "
        f"there is nothing to resume from (starting at step 0 instead would throw the run's progress away "
        f"silently):\n" + "\n".join(lines),
        fix="inspect them (each one's QUARANTINED.txt says why); to start over from step 0 in this run directory "
            "on purpose, rerun with --restart-from-scratch; or resume a checkpoint you trust into a new run "
            "directory with --run-dir NEW --resume-from CHECKPOINT.")


def same_model(saved: dict, current: dict) -> bool:
    """Same parameters: every field but the sequence length (RoPE is not a parameter) and the source note. A field
    a checkpoint of an older bastion lacks counts as its default (the value that checkpoint was trained with)."""
    from dataclasses import MISSING, fields

    defaults = {f.name: f.default for f in fields(ModelSpec) if f.default is not MISSING}
    ignore = ("seq_len", "source")
    return ({k: v for k, v in {**defaults, **saved}.items() if k not in ignore}
            == {k: v for k, v in {**defaults, **current}.items() if k not in ignore})


def checkpoint_model(info: cf.CheckpointInfo) -> ModelSpec:
    try:
        state = json.loads((info.path / STATE_JSON).read_text())
        return model_from_mapping(dict(state["model"]), f"{info.path}/{STATE_JSON}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{info.path} has no readable model description ({exc}).",
                              fix="resume from a checkpoint written by `bastion train`.") from exc


def check_resume_compatible(info: cf.CheckpointInfo, spec: ModelSpec, plan: ParallelPlan,
                            own_run_dir: bool = False) -> None:
    """The checkpoint holds this model, and the plan can hold the checkpoint's model. `own_run_dir`: the checkpoint
    is in this run's --run-dir (the run dir belongs to another run), not one named by --resume-from."""
    saved = checkpoint_model(info)
    if not same_model(saved.to_dict(), spec.to_dict()):
        differences = [k for k, v in saved.to_dict().items()
                       if spec.to_dict().get(k) != v and k not in ("source", "seq_len")]
        raise CheckpointError(
            f"The checkpoint at {info.path} holds model '{saved.name}', but this run builds '{spec.name}' "
            f"(they differ in {', '.join(differences) or 'name'}).",
            fix=f"resume with --model {saved.name} (or the model file it was trained with), or "
                + (f"give a new --run-dir for '{spec.name}' (this one holds another run)." if own_run_dir
                   else "start a new run without --resume-from."))
    try:
        plan.validate(saved)
    except PlanError as exc:
        raise PlanError(f"This plan cannot hold the checkpoint's model '{saved.name}': {exc.problem}",
                        fix=exc.fix, reason=exc.reason) from exc


def preflight_resume(run_dir: Path, resume: bool, resume_from: str | None, spec: ModelSpec,
                     plan: ParallelPlan, key: bytes | None = None,
                     restart_from_scratch: bool = False) -> cf.CheckpointInfo | None:
    """The checkpoint the workers will start from (checked), or None for a fresh start. A run directory whose
    checkpoints were all quarantined is refused unless `restart_from_scratch` (or another start is named)."""
    own = cf.committed(checkpoints_dir(run_dir)) if resume else []
    for info in reversed(own):
        if not (info.path / cf.MANIFEST).is_file():
            continue
        try:
            checkpoint_model(info)
        except CheckpointError:  # damaged: the workers verify it, set it aside and fall back
            continue
        check_resume_compatible(info, spec, plan, own_run_dir=True)
        return info
    if resume_from:
        info = resolve_resume_source(Path(resume_from), verify=True, key=key)
        check_resume_compatible(info, spec, plan)
        return info
    if resume and not own and not restart_from_scratch and cf.quarantined_checkpoints(checkpoints_dir(run_dir)):
        raise all_checkpoints_bad(run_dir)
    return None
