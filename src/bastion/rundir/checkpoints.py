"""Checkpoint directories on disk: atomic commit, manifest check, retention. Pure Python (no torch).

A checkpoint is a directory `step-NNNNNNNN/` under the run's `checkpoints/`. It is written as
`.tmp-step-NNNNNNNN/`, every file fsynced, then `manifest.json` (size and sha256 of every other file) is written
and fsynced, and only then is the directory renamed into place (and the parent fsynced). A rename is atomic on
POSIX file systems, so a reader sees either no checkpoint or a complete one. A directory without a manifest, or
whose files disagree with it, does not count as a checkpoint: `newest_valid` sets it aside under `quarantine/`
and falls back to the previous one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from bastion.errors import CheckpointError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "bastion-checkpoint-v1"
_STEP_DIR = re.compile(r"^step-(\d{8})$")
_HASH_CHUNK = 1 << 22


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def temp_dir_name(step: int) -> str:
    return f".tmp-{step_dir_name(step)}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_durably(path: Path, data: object) -> None:
    """Write JSON to `path` through a temporary file + fsync + rename, so a crash leaves old or new, never half."""
    tmp = path.with_name(f".{path.name}.partial")
    with tmp.open("w") as f:
        json.dump(data, f, indent=1, sort_keys=True, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _data_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def commit(temp_dir: Path, final_dir: Path, step: int) -> Path:
    """Seal a fully written temporary checkpoint directory: fsync, manifest, rename. Returns the final path."""
    if final_dir.exists():
        raise CheckpointError(f"Checkpoint {final_dir} already exists; refusing to overwrite it.",
                              fix="resume from it, or use a new --run-dir.")
    files = {}
    for path in _data_files(temp_dir):
        _fsync_path(path)
        files[str(path.relative_to(temp_dir))] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    manifest = {"format": MANIFEST_FORMAT, "step": step, "created_unix": time.time(), "files": files}
    write_json_durably(temp_dir / MANIFEST, manifest)
    _fsync_path(temp_dir)
    os.rename(temp_dir, final_dir)
    _fsync_path(final_dir.parent)
    return final_dir


@dataclass(frozen=True)
class CheckpointInfo:
    """A committed checkpoint directory (not yet verified unless `verify` said so)."""

    step: int
    path: Path


def verify(path: Path) -> str | None:
    """None if the manifest matches every file byte for byte, else the reason it does not."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return "no manifest (the save never finished)"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        return "manifest is not valid JSON"
    if manifest.get("format") != MANIFEST_FORMAT:
        return f"unknown manifest format {manifest.get('format')!r}"
    present = {str(p.relative_to(path)) for p in _data_files(path)}
    if missing := sorted(set(files) - present):
        return f"missing file {missing[0]}"
    if extra := sorted(present - set(files)):
        return f"file {extra[0]} is not in the manifest"
    for name, entry in files.items():
        file = path / name
        if file.stat().st_size != entry["bytes"]:
            return f"{name} has {file.stat().st_size} bytes, manifest says {entry['bytes']}"
        if _sha256(file) != entry["sha256"]:
            return f"{name} does not match its sha256"
    return None


def committed(root: Path) -> list[CheckpointInfo]:
    """Committed checkpoint directories under `root`, oldest first (not verified)."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir():
            found.append(CheckpointInfo(int(match[1]), child))
    return sorted(found, key=lambda c: c.step)


def with_manifest(root: Path) -> list[CheckpointInfo]:
    """Committed checkpoints that have their manifest, oldest first: what a reader lists (not verified)."""
    return [info for info in committed(root) if (info.path / MANIFEST).is_file()]


def quarantine(path: Path, reason: str) -> Path:
    """Move a bad checkpoint aside (never delete evidence) and leave the reason next to it."""
    target_root = path.parent / "quarantine"
    target_root.mkdir(exist_ok=True)
    target = target_root / f"{path.name.lstrip('.')}-{int(time.time() * 1000)}"
    os.rename(path, target)
    (target / "QUARANTINED.txt").write_text(reason + "\n")
    return target


def discard_unfinished(root: Path) -> list[Path]:
    """Set aside temporary directories left by a save that was interrupted. Returns where they went."""
    if not root.is_dir():
        return []
    return [quarantine(child, "unfinished save (no commit)")
            for child in sorted(root.iterdir()) if child.name.startswith(".tmp-") and child.is_dir()]


def newest_valid(root: Path, on_bad=None) -> CheckpointInfo | None:
    """The newest checkpoint whose manifest checks out. Bad ones are quarantined and reported via `on_bad`."""
    for info in reversed(committed(root)):
        reason = verify(info.path)
        if reason is None:
            return info
        moved = quarantine(info.path, reason)
        if on_bad is not None:
            on_bad(info, reason, moved)
    return None


@dataclass(frozen=True)
class RetentionPolicy:
    """Which committed checkpoints to keep after a new one is committed."""

    #: keep the newest K checkpoints (at least 1)
    keep_last: int = 3
    #: additionally keep every checkpoint whose step is a multiple of N (0 = none)
    keep_every: int = 0

    def keeps(self, steps: list[int]) -> set[int]:
        kept = set(sorted(steps)[-max(1, self.keep_last):])
        if self.keep_every > 0:
            kept |= {s for s in steps if s % self.keep_every == 0}
        return kept


def prune(root: Path, policy: RetentionPolicy) -> list[int]:
    """Delete committed checkpoints the policy does not keep. Returns the deleted steps."""
    infos = committed(root)
    kept = policy.keeps([i.step for i in infos])
    deleted = []
    for info in infos:
        if info.step in kept:
            continue
        # Rename first: a half-deleted directory must never look like a checkpoint.
        trash = info.path.with_name(f".trash-{info.path.name}")
        os.rename(info.path, trash)
        shutil.rmtree(trash, ignore_errors=True)
        deleted.append(info.step)
    return deleted
