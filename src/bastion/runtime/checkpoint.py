"""Distributed checkpoints with DCP: tensors through `torch.distributed.checkpoint`, everything else as JSON.

What is saved: the model and optimizer (as DCP tensors keyed by the full model's parameter names, so a checkpoint
saved under one plan loads under any other: DCP reshards), plus JSON for the rest: step, data position, LR
schedule, plan, model spec, the optimizer's hyper-parameters and per-rank RNG states. Loading never unpickles an
object of ours: tensors come back through DCP, the rest through `json`; DCP's own metadata pickle is read through
a restricted unpickler (`checkpoint_trust.py`), so a checkpoint cannot run code.

Saving is synchronous (`dcp.save`, the loop waits) or asynchronous (`dcp.async_save`: the loop waits only while
the state is staged into a copy; the write runs on a background thread over a dedicated gloo group, so its
collectives never interleave with the training's). Either way the directory is sealed by
`rundir.checkpoints.commit` (fsync, manifest, rename) on rank 0 once every rank's files are on disk.
"""

from __future__ import annotations

import base64
import json
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from bastion.errors import CheckpointError
from bastion.rundir import checkpoints as files
from bastion.runtime import checkpoint_trust

STATE_JSON = "state.json"
_FLAT = StateDictOptions(flatten_optimizer_state_dict=True)


@dataclass(frozen=True)
class CheckpointConfig:
    """Where and how often to checkpoint."""

    #: directory holding `step-NNNNNNNN/` checkpoints (RUN_DIR/checkpoints)
    directory: Path
    #: save after every N optimizer steps (0 = never)
    every: int = 0
    #: retention: keep the newest K and every step that is a multiple of `keep_every` (0 = none)
    retention: files.RetentionPolicy = field(default_factory=files.RetentionPolicy)
    #: overlap writing with training (`dcp.async_save`) instead of blocking the loop
    async_save: bool = True
    #: authenticate manifests with this key (HMAC-SHA256) and refuse checkpoints it does not authenticate
    key: bytes | None = field(default=None, repr=False)


# ---- model + optimizer state <-> (tensors for DCP, JSON for the rest) --------------------------------

def capture_tensors_and_hparams(model_parts: Sequence[torch.nn.Module],
                                optimizers: Sequence[torch.optim.Optimizer]) -> tuple[dict, dict]:
    """The model/optimizer state of this rank, split into DCP tensors and JSON-able optimizer settings.

    `model_parts[i]` is optimised by `optimizers[i]` (one pair per pipeline chunk on this rank). Keys are the
    full model's parameter names, identical under every plan.
    """
    tensors: dict[str, Any] = {}
    hparams: dict[str, Any] = {}
    for part, optimizer in zip(model_parts, optimizers, strict=True):
        for key, value in get_model_state_dict(part).items():
            tensors[f"model.{key}"] = value
        for key, value in get_optimizer_state_dict(part, optimizer, options=_FLAT).items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{key}"] = value
            else:
                hparams[key] = list(value) if isinstance(value, tuple) else value
    return tensors, hparams


def restore_tensors_and_hparams(model_parts: Sequence[torch.nn.Module], optimizers: Sequence[torch.optim.Optimizer],
                                tensors: dict, hparams: dict) -> None:
    """Put loaded tensors (in the layout `capture_tensors_and_hparams` made) and settings back in place."""
    for part, optimizer in zip(model_parts, optimizers, strict=True):
        model_sd = {k: tensors[f"model.{k}"] for k in get_model_state_dict(part)}
        set_model_state_dict(part, model_sd)
        template = get_optimizer_state_dict(part, optimizer, options=_FLAT)
        optim_sd = {}
        for key, current in template.items():
            if isinstance(current, torch.Tensor):
                optim_sd[key] = tensors[f"optim.{key}"]
            elif key in hparams:
                saved = hparams[key]
                optim_sd[key] = tuple(saved) if isinstance(current, tuple) else saved
            else:  # a silently kept live value (e.g. the initial lr) would make the resumed run diverge
                raise CheckpointError(f"The checkpoint has no optimizer setting '{key}'.",
                                      fix="resume from a checkpoint of the same model written by bastion.")
        set_optimizer_state_dict(part, optimizer, optim_sd, options=_FLAT)


# ---- RNG ---------------------------------------------------------------------------------------------

def capture_rng() -> dict[str, Any]:
    """This process's RNG states as JSON (torch CPU generator as base64 bytes, Python's as a list)."""
    version, internal, gauss = random.getstate()
    return {"torch_cpu": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
            "python": [version, list(internal), gauss]}


def restore_rng(state: dict[str, Any]) -> None:
    raw = base64.b64decode(state["torch_cpu"])
    torch.set_rng_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# ---- saving ------------------------------------------------------------------------------------------

#: how the async stager copies: on its own thread, no pinned or shared memory
STAGING = StagingOptions(False, False, True, False)


def stager_survives_a_save(version: str = torch.__version__) -> bool:
    """Whether one DefaultStager can serve several saves. torch 2.11's closes its state-dict copier after every
    staging (clearing its deepcopy table), so a second save through it fails with KeyError: <class 'type'>;
    torch 2.13's stays open and keeps its CPU copies between saves."""
    major, minor = (int(part) for part in version.split("+")[0].split(".")[:2])
    return (major, minor) >= (2, 13)


@dataclass
class _PendingSave:
    step: int
    temp_dir: Path
    final_dir: Path
    future: Any
    started: float
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    #: a stager made for this save alone (closed once it is written)
    own_stager: Any = None


class Checkpointer:
    """Saves and loads this run's checkpoints; one instance per rank, used collectively by all ranks."""

    def __init__(self, config: CheckpointConfig, rank: int = 0, world_size: int = 1,
                 async_group: dist.ProcessGroup | None = None) -> None:
        self.config = config
        self.rank = rank
        self.world_size = world_size
        self.async_group = async_group
        self._pending: _PendingSave | None = None
        #: (step, unix time) of every commit by this process (rank 0 only), in order, for events
        self.commits: list[tuple[int, float]] = []
        #: seconds the training loop spent blocked in saves (staging + waiting for a previous save)
        self.stall_s = 0.0
        #: hook for fault injection: called on every rank after the data is written, before the commit
        self.before_commit = None
        # One stager for the run (torch >= 2.13; one per save before, see stager_survives_a_save): it keeps its
        # CPU copies between saves, so only the first save allocates
        # (fresh pages cost more than the copy itself). It copies on its own thread (no pinned or shared memory):
        # the copy overlaps the next forward/backward, and `wait_staged()` holds the optimizer step until the
        # copy is complete, so no update can leak into the checkpoint.
        self._stager = DefaultStager(STAGING) if config.async_save and stager_survives_a_save() else None
        self._staging: Any = None

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def due(self, step: int) -> bool:
        return self.config.every > 0 and step % self.config.every == 0

    def save(self, step: int, tensors: dict, run_state: dict, rank_state: dict) -> float:
        """Checkpoint `step`. Returns the seconds the caller was blocked. Collective: every rank calls it."""
        start = time.perf_counter()
        self.wait()  # one save in flight at a time; waiting for it counts as stall
        root = self.config.directory
        temp_dir = root / files.temp_dir_name(step)
        final_dir = root / files.step_dir_name(step)
        if self.rank == 0:
            if final_dir.exists():
                raise CheckpointError(f"A checkpoint for step {step} already exists at {final_dir}.",
                                      fix="resume from it (--resume) or choose a new --run-dir.")
            temp_dir.mkdir(parents=True, exist_ok=True)
            files.write_json_durably(temp_dir / STATE_JSON, run_state)
        self._barrier()  # the temp dir exists before anyone writes into it
        files.write_json_durably(temp_dir / f"rank{self.rank:05d}.json", rank_state)
        if self.config.async_save:
            own = None if self._stager is not None else DefaultStager(STAGING)
            future = dcp.async_save(tensors, checkpoint_id=str(temp_dir), process_group=self.async_group,
                                    async_stager=self._stager or own, no_dist=not self.distributed)
            self._staging = getattr(future, "staging_completion", None)
            future = getattr(future, "upload_completion", future)
            pending = _PendingSave(step, temp_dir, final_dir, future, time.perf_counter(), own_stager=own)
            future.add_done_callback(lambda f, p=pending: self._finish(p))
            self._pending = pending
        else:
            dcp.save(tensors, checkpoint_id=str(temp_dir), no_dist=not self.distributed)
            pending = _PendingSave(step, temp_dir, final_dir, None, time.perf_counter())
            self._finish(pending)
            self._raise_if_failed(pending)
            self._barrier()  # synchronous means committed on return, on every rank
        blocked = time.perf_counter() - start
        self.stall_s += blocked
        return blocked

    def _finish(self, pending: _PendingSave) -> None:
        """Runs once this rank's part is written (on the writer thread for async saves)."""
        try:
            if pending.future is not None:
                pending.future.result()
            if self.before_commit is not None:
                self.before_commit(pending.step)
            # DCP's coordinator (rank 0) writes its metadata only after every rank reported its files written,
            # so rank 0 finishing means the whole checkpoint is on disk.
            if self.rank == 0:
                files.commit(pending.temp_dir, pending.final_dir, pending.step, key=self.config.key)
                self.commits.append((pending.step, time.time()))
                files.prune(self.config.directory, self.config.retention)
        except BaseException as exc:  # surfaced on the training thread by wait()/poll()
            pending.error = exc
        finally:
            if pending.own_stager is not None:
                pending.own_stager.close()
            pending.done.set()

    def _raise_if_failed(self, pending: _PendingSave) -> None:
        if pending.error is not None:
            raise CheckpointError(f"Saving the checkpoint of step {pending.step} failed: {pending.error}",
                                  fix="check free disk space and permissions of the run directory.") \
                from pending.error

    def poll(self) -> None:
        """Non-blocking: forget a finished async save, raising if it failed."""
        pending = self._pending
        if pending is not None and pending.done.is_set():
            self._pending = None
            self._raise_if_failed(pending)

    def wait_staged(self) -> float:
        """Block until the save in flight has copied the state (call before anything modifies it)."""
        staging, self._staging = self._staging, None
        if staging is None:
            return 0.0
        start = time.perf_counter()
        staging.result()
        blocked = time.perf_counter() - start
        self.stall_s += blocked
        return blocked

    def wait(self) -> None:
        """Block until the save in flight (if any) is written and, on rank 0, committed."""
        self.wait_staged()
        pending = self._pending
        if pending is None:
            return
        pending.done.wait()
        self._pending = None
        self._raise_if_failed(pending)

    def close(self) -> None:
        """Finish the save in flight and free the staging copies."""
        self.wait()
        if self._stager is not None:
            self._stager.close()
            self._stager = None

    def _barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    # ---- loading ---------------------------------------------------------------------------------
    def newest_valid(self, on_bad=None) -> files.CheckpointInfo | None:
        """Rank 0 verifies manifests and DCP metadata (quarantining bad ones) and every rank gets its answer."""
        step = -1
        if self.rank == 0:
            files.discard_unfinished(self.config.directory)
            info = files.newest_valid(self.config.directory, on_bad=on_bad, key=self.config.key,
                                      check=checkpoint_trust.metadata_problem)
            step = info.step if info else -1
        if self.distributed:
            box = torch.tensor([step], dtype=torch.int64)
            dist.broadcast(box, src=0)
            step = int(box.item())
        if step < 0:
            return None
        return files.CheckpointInfo(step, self.config.directory / files.step_dir_name(step))


def read_run_state(path: Path) -> dict[str, Any]:
    """The JSON part of a checkpoint (step, data position, plan, model spec, ...)."""
    try:
        return json.loads((path / STATE_JSON).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} has no readable {STATE_JSON}: {exc}",
                              fix="point --resume-from at a step-NNNNNNNN directory written by bastion.") from exc


def read_all_rank_hparams(path: Path) -> dict[str, Any]:
    """Optimizer settings of every parameter, merged from all ranks' JSON (each rank saved its own share)."""
    merged: dict[str, Any] = {}
    for file in sorted(path.glob("rank*.json")):
        merged.update(json.loads(file.read_text()).get("optimizer", {}))
    return merged


def read_rank_state(path: Path, rank: int) -> dict[str, Any] | None:
    """This rank's JSON state (RNG), or None when the checkpoint was saved by fewer ranks."""
    file = path / f"rank{rank:05d}.json"
    return json.loads(file.read_text()) if file.is_file() else None


def load_tensors(path: Path, tensors: dict, distributed: bool) -> None:
    """Fill `tensors` (this rank's layout) in place from the checkpoint at `path`; DCP reshards as needed.
    Its DCP metadata is checked first (and read again by DCP under the same rules): it cannot run code."""
    if (problem := checkpoint_trust.metadata_problem(path)) is not None:
        raise CheckpointError(f"The checkpoint at {path} cannot be loaded: {problem}.",
                              fix="resume from a checkpoint written by bastion that nobody else could alter "
                                  "(with a checkpoint key, only ones it authenticates are resumed).")
    try:
        dcp.load(tensors, checkpoint_id=str(path), storage_reader=checkpoint_trust.SafeFileSystemReader(path),
                 planner=checkpoint_trust.TensorsOnlyLoadPlanner(), no_dist=not distributed)
    except (Exception, CheckpointException) as exc:  # DCP wraps per-rank errors in a BaseException
        first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"The checkpoint at {path} does not match this model: {first_line[:300]}",
                              fix="resume with the same --model the checkpoint was saved with.") from exc
