"""What bastion writes for a user: files at paths checked before the work that fills them starts, and JSON that
every parser reads."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bastion.errors import ConfigError


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(".")


def check_output_dir(path: Path, what: str, fix: str) -> Path:
    """A directory `path` can be created (or exists) and takes new files: refuses a file in the way, a read-only
    or virtual file system (/proc), a missing permission. Writes nothing that stays."""
    path = Path(path)
    base = _nearest_existing(path)
    if not base.is_dir():
        raise ConfigError(f"Cannot write {what} to {path}: {base} is a file, not a directory.", fix=fix)
    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as exc:
        raise ConfigError(f"Cannot write {what} to {path}: {base} does not take new files "
                          f"({exc.strerror or exc}).", fix=fix) from exc
    return path


def check_output_file(path: Path, what: str, fix: str, keep: Iterable[str | Path] = ()) -> Path:
    """A file `path` can be written (its directory created if missing): not a directory, not one of the files
    `keep` (the command's inputs: writing would replace what it read), and its directory takes new files
    (check_output_dir)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"Cannot write {what} to {path}: it is a directory.", fix=fix)
    if path.exists() and any(Path(kept).exists() and path.samefile(kept) for kept in keep):
        raise ConfigError(f"Cannot write {what} to {path}: the command reads that file, and writing would "
                          f"replace it.", fix=fix)
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"Cannot write {what} to {path}: the file is not writable.", fix=fix)
    check_output_dir(path.parent, what, fix)
    return path


def write_error(exc: OSError, path: Path, what: str, fix: str) -> ConfigError:
    """An OSError met while writing `path` as a guidance error (a full disk, a path that vanished)."""
    return ConfigError(f"Cannot write {what} to {path}: {exc.strerror or exc}.", fix=fix)


def finite_json(data: Any) -> Any:
    """`data` with every NaN or infinite float replaced by None (JSON null): JSON has no such numbers."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite_json(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [finite_json(value) for value in data]
    return data


def dumps_json(data: Any, **kwargs: Any) -> str:
    """Standard JSON: a NaN or infinite figure (a NaN loss, an unbounded half-life) is written as null, never as
    the `NaN` / `Infinity` that `json.dumps` writes by default and strict parsers reject."""
    return json.dumps(finite_json(data), allow_nan=False, **kwargs)
