"""Whether a run directory already holds another run, and `--overwrite`: setting that run aside.

A directory holds a run once `bastion train` committed anything there (any of layout.RUN_MARKERS). That run is
*this* run when the model, the plan and the settings that shape the trained weights (data, seed, sequence length,
optimizer) are the ones asked for now: starting again continues it (--resume is the default). Anything else is
another run, and `bastion train` / `bastion launch` refuse it unless told what to do: `--resume` continues it with the
new settings (a new plan reshards its checkpoint), `--overwrite` starts over. Starting over deletes nothing: the old
run's files move into RUN_DIR/replaced-YYYYmmdd-HHMMSS/ (and the command says so), where `bastion report` can still
read them and the user deletes them when done.

Only the user-facing entries check this (`commands/train_cmds.resolve_run`, which `launch` calls too): a torchrun
restart, a Slurm requeue or a Kubernetes pod restart starts `bastion _worker`, which resumes by design.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.rundir.layout import (
    CHECKPOINTS_DIR,
    FINAL_PARAMS_FILE,
    LAUNCH_DIR,
    LAUNCH_RECORD_FILE,
    LOGS_DIR,
    MODEL_FILE,
    PLAN_FILE,
    PROFILE_DIR,
    RUN_CONFIG_FILE,
    RUN_MARKERS,
    TENSORBOARD_DIR,
    RunDirError,
)

#: the `train` settings of run_config.json that shape the trained weights (with the model and the plan); --steps,
#: checkpointing, fault injection and logging options may change between starts of one run
IDENTITY_SETTINGS = ("data", "seed", "seq_len", "lr", "init_from", "betas", "weight_decay", "eps", "warmup_steps",
                     "lr_decay", "min_lr_ratio", "max_grad_norm")
#: everything a run writes into its directory (what --overwrite moves aside); other files stay where they are
RUN_ENTRIES = (*RUN_MARKERS, CHECKPOINTS_DIR, FINAL_PARAMS_FILE, RUN_CONFIG_FILE, LAUNCH_RECORD_FILE, TENSORBOARD_DIR,
               PROFILE_DIR, LOGS_DIR, LAUNCH_DIR)
#: the folder --overwrite moves a replaced run into (strftime pattern, UTC)
REPLACED_PATTERN = "replaced-%Y%m%d-%H%M%S"


@dataclass(frozen=True)
class Occupant:
    """The run a directory holds, compared with the one asked for."""

    run_dir: Path
    #: what differs, one "what: old → new" text each; empty when it is the same run
    differences: tuple[str, ...]

    @property
    def is_same_run(self) -> bool:
        return not self.differences


def _recorded(run_dir: Path) -> dict[str, Any] | None:
    """The held run's model, plan and settings: from run_config.json, else (a run of an older bastion) from
    model.json and plan.json; None when neither can be read."""
    def read(name: str) -> Any:
        try:
            return json.loads((run_dir / name).read_text())
        except (OSError, ValueError):
            return None

    config = read(RUN_CONFIG_FILE)
    if isinstance(config, dict) and isinstance(config.get("train"), dict):
        return {"model": config.get("model"), "plan": config.get("plan"), "train": config["train"]}
    model, plan = read(MODEL_FILE), read(PLAN_FILE)
    if isinstance(model, dict):
        return {"model": model, "plan": plan, "train": {}}
    return None


def _same_value(key: str, old: Any, new: Any) -> bool:
    if key == "data" and isinstance(old, str) and isinstance(new, str):
        return os.path.abspath(old) == os.path.abspath(new)
    if isinstance(old, list | tuple) and isinstance(new, list | tuple):
        return list(old) == list(new)
    return old == new


def _dict_differences(old: Any, new: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """Keys both sides have whose values differ (a key an older file lacks is not a difference)."""
    if not isinstance(old, dict):
        return []
    return [key for key in new if key in old and key not in ignore and not _same_value(key, old[key], new[key])]


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 40 else f"{text[:37]}…"


def find_occupant(run_dir: Path, config: dict[str, Any]) -> Occupant | None:
    """The committed run in `run_dir` compared with `config` (a run config, launch/worker.py); None when the directory
    holds no run yet."""
    run_dir = Path(run_dir)
    if not any((run_dir / name).exists() for name in RUN_MARKERS):
        return None
    held = _recorded(run_dir)
    if held is None:
        return Occupant(run_dir, ("its model and plan cannot be read (no readable run_config.json or model.json)",))
    differences = []
    model_keys = _dict_differences(held["model"], config["model"], ignore=("source", "seq_len"))
    if model_keys:
        old_name, new_name = held["model"].get("name"), config["model"].get("name")
        differences.append(f"model {old_name} → {new_name}" if old_name != new_name
                           else f"model {new_name} (differs in {', '.join(model_keys)})")
    plan_keys = _dict_differences(held["plan"], config["plan"])
    if plan_keys:
        differences.append("plan " + ", ".join(f"{k} {_short(held['plan'][k])} → {_short(config['plan'][k])}"
                                               for k in plan_keys))
    for key in _dict_differences(held["train"], config["train"]):
        # --init-from seeds step 0 only: a resumed run may leave it out (its checkpoint holds the weights)
        if key in IDENTITY_SETTINGS and not (key == "init_from" and config["train"][key] is None):
            differences.append(f"{key} {_short(held['train'][key])} → {_short(config['train'][key])}")
    return Occupant(run_dir, tuple(differences))


def check_occupant(run_dir: Path, config: dict[str, Any], resume: bool, overwrite: bool) -> Occupant | None:
    """Refuse to start in a directory holding another run unless `resume` (asked for explicitly) or `overwrite`.
    Returns the occupant (None: the directory holds no run). Reads only."""
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite contradict each other: one continues the run in --run-dir, the "
                          "other starts over there.", fix="give one of them.")
    occupant = find_occupant(run_dir, config)
    if occupant is None or occupant.is_same_run or resume or overwrite:
        return occupant
    raise RunDirError(
        f"--run-dir {run_dir} holds another run: {'; '.join(occupant.differences)}.",
        fix=f"add --resume to continue that run with these settings, --overwrite to start over (its files move to "
            f"{Path(run_dir) / REPLACED_PATTERN.replace('%Y%m%d-%H%M%S', 'DATE-TIME')}/), or give a new "
            f"--run-dir.")


def set_aside(run_dir: Path) -> tuple[Path, list[str]] | None:
    """Move the run's files (RUN_ENTRIES) into a new RUN_DIR/replaced-DATE-TIME/ folder: (that folder, the names
    moved), or None when there was nothing to move. Call with the run directory's lock held."""
    run_dir = Path(run_dir)
    present = [name for name in RUN_ENTRIES if (run_dir / name).exists()]
    if not present:
        return None
    stamp = time.strftime(REPLACED_PATTERN, time.gmtime())
    target = run_dir / stamp
    suffix = 1
    while target.exists():  # two overwrites within one second
        target = run_dir / f"{stamp}-{suffix}"
        suffix += 1
    target.mkdir()
    for name in present:
        os.replace(run_dir / name, target / name)
    return target, present
