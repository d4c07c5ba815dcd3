"""Checkpoint directories on disk: atomic commit, manifest check, retention. Pure Python (no torch).

A checkpoint is a directory `step-NNNNNNNN/` under the run's `checkpoints/`. It is written as
`.tmp-step-NNNNNNNN/`, every file fsynced, then `manifest.json` (size and sha256 of every other file) is written
and fsynced, and only then is the directory renamed into place (and the parent fsynced). A rename is atomic on
POSIX file systems, so a reader sees either no checkpoint or a complete one. A directory without a manifest, or
whose files disagree with it, does not count as a checkpoint: `newest_valid` sets it aside under `quarantine/`
and falls back to the previous one.

With a checkpoint key (`checkpoint_key.py`) the manifest also carries an HMAC-SHA256 of its own content, so
whoever can write the checkpoint volume but lacks the key cannot forge one: `verify` with the key refuses a
manifest without it or with a mismatching one. A checkpoint holding a symbolic link is refused either way (its
files must be the ones the manifest hashed, inside the directory).
"""

from __future__ import annotations

import hashlib
import hmac
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
#: manifest field holding the HMAC-SHA256 (hex) of the rest of the manifest, present when saved with a key
MANIFEST_MAC = "hmac_sha256"
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


def manifest_mac(manifest: dict, key: bytes) -> str:
    """HMAC-SHA256 of the manifest's content (every field but the HMAC itself, as canonical JSON)."""
    content = {k: v for k, v in manifest.items() if k != MANIFEST_MAC}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def commit(temp_dir: Path, final_dir: Path, step: int, key: bytes | None = None) -> Path:
    """Seal a fully written temporary checkpoint directory: fsync, manifest (authenticated with `key` when one is
    given), rename. Returns the final path."""
    if final_dir.exists():
        raise CheckpointError(f"Checkpoint {final_dir} already exists; refusing to overwrite it.",
                              fix="resume from it, or use a new --run-dir.")
    files = {}
    for path in _data_files(temp_dir):
        _fsync_path(path)
        files[str(path.relative_to(temp_dir))] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    manifest = {"format": MANIFEST_FORMAT, "step": step, "created_unix": time.time(), "files": files}
    if key is not None:
        manifest[MANIFEST_MAC] = manifest_mac(manifest, key)
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


def _symbolic_link(directory: Path) -> str | None:
    """The first symbolic link at or under `directory` (relative name), if any."""
    if directory.is_symlink():
        return "."
    for parent, dirs, names in os.walk(directory):  # does not follow links: they are listed, not entered
        for name in sorted(dirs + names):
            if os.path.islink(os.path.join(parent, name)):
                return os.path.relpath(os.path.join(parent, name), directory)
    return None


def verify(path: Path, key: bytes | None = None) -> str | None:
    """None if the manifest matches every file byte for byte (and, given `key`, carries that key's HMAC), else
    the reason it does not."""
    if (link := _symbolic_link(path)) is not None:
        return f"{link} is a symbolic link (a checkpoint holds regular files only)"
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
    if not isinstance(files, dict) or not all(
            isinstance(e, dict) and type(e.get("bytes")) is int and isinstance(e.get("sha256"), str)
            for e in files.values()):
        return "manifest does not give every file its bytes and sha256"
    if key is not None:
        mac = manifest.get(MANIFEST_MAC)
        if not isinstance(mac, str):
            return "manifest is not authenticated (no HMAC), but a checkpoint key is set"
        if not hmac.compare_digest(mac, manifest_mac(manifest, key)):
            return "manifest HMAC does not match the checkpoint key (another key, or altered)"
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
    # never written through a link the checkpoint holds (or is): that could overwrite any file of the user
    inside, beside = _reason_files(target)
    create = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(beside if target.is_symlink() else inside, create, 0o644)
    except FileExistsError:  # the checkpoint brought its own file (or link) of that name
        fd = os.open(beside, create, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(reason + "\n")
    return target


def _reason_files(moved: Path) -> tuple[Path, Path]:
    """Where `quarantine` leaves its reason: inside the directory, or beside it when that is not safe."""
    return moved / "QUARANTINED.txt", moved.with_name(f"{moved.name}.QUARANTINED.txt")


def quarantine_reason(moved: Path) -> str:
    """The first line of the reason a quarantined checkpoint was set aside for."""
    inside, beside = _reason_files(moved)
    note = beside if beside.is_file() else inside
    try:
        return note.read_text().strip().splitlines()[0][:200]
    except (OSError, IndexError):
        return "reason not recorded"


def discard_unfinished(root: Path) -> list[Path]:
    """Set aside temporary directories left by a save that was interrupted. Returns where they went."""
    if not root.is_dir():
        return []
    moved = [_quarantine_unless_gone(child, "unfinished save (no commit)")
             for child in sorted(root.iterdir()) if child.name.startswith(".tmp-") and child.is_dir()]
    return [path for path in moved if path is not None]


def _quarantine_unless_gone(path: Path, reason: str) -> Path | None:
    """`quarantine`, or None when another process set `path` aside first (the torchft replica groups of a fresh
    launch each check the run's one checkpoint directory)."""
    try:
        return quarantine(path, reason)
    except FileNotFoundError:
        if path.exists():
            raise
        return None


def quarantined_checkpoints(root: Path) -> list[Path]:
    """Committed checkpoints of `root` that were set aside as bad (not unfinished saves), oldest first."""
    quarantine_dir = root / "quarantine"
    if not quarantine_dir.is_dir():
        return []
    return sorted(p for p in quarantine_dir.iterdir()
                  if _STEP_DIR.match(p.name[:len("step-00000000")]) and not p.name.endswith(".QUARANTINED.txt"))


def newest_valid(root: Path, on_bad=None, key: bytes | None = None, check=None) -> CheckpointInfo | None:
    """The newest checkpoint whose manifest checks out (with `key`: and is authenticated by it) and that passes
    `check(path) -> reason | None` when given. Bad ones are quarantined and reported via `on_bad`."""
    for info in reversed(committed(root)):
        reason = verify(info.path, key)
        if reason is None and check is not None:
            reason = check(info.path)
        if reason is None:
            return info
        moved = _quarantine_unless_gone(info.path, reason)
        if on_bad is not None and moved is not None:
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
