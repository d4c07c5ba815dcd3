"""Reading spec files (TOML or JSON) with errors that say what to fix."""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

from bastion.errors import ConfigError, did_you_mean

DATA_DIR = Path(__file__).parent / "data"


def read_mapping(path: Path) -> dict[str, Any]:
    """Load a TOML or JSON file as a dict; any problem becomes a ConfigError naming the file."""
    if not path.exists():
        raise ConfigError(f"File not found: {path}", fix="check the path, or use a preset name instead.")
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a TOML/JSON file.", fix="give the path of the file itself.")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:  # JSON/TOML syntax, or a number of over 4,300 digits
        raise ConfigError(f"Cannot parse {path}: {str(exc)[:300]}",
                          fix="write it as TOML (.toml) or JSON (.json).") from exc
    except RecursionError as exc:
        raise ConfigError(f"Cannot parse {path}: it is nested too deeply.",
                          fix="write it as one flat table of fields (TOML `name = value` lines or one JSON "
                              "object).") from exc
    except OSError as exc:
        raise ConfigError(f"Cannot read {path}: {exc.strerror or exc}.",
                          fix="check the file's permissions, or give another path.") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold one object (a table of fields), not {type(data).__name__}.",
                          fix="write the fields as TOML `name = value` lines or as one JSON object.")
    if not data:
        raise ConfigError(f"{path} is empty: it holds no fields.",
                          fix="write the fields into it (TOML `name = value` lines or one JSON object).")
    return data


def check_keys(data: dict[str, Any], cls: type, what: str, extra_ok: tuple[str, ...] = ()) -> None:
    """Reject unknown keys with a did-you-mean, so a typo never silently becomes a default."""
    known = {f.name for f in fields(cls)} | set(extra_ok)
    for key in data:
        if key not in known:
            raise ConfigError(f"Unknown field '{key}' in {what}.{did_you_mean(key, known)}",
                              fix=f"use only these fields: {', '.join(sorted(known))}.")


def coerce(value: Any, typ: Any, name: str, what: str) -> Any:
    """Convert a parsed value to the field's declared type, or say which field is wrong."""
    typ_name = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    try:
        if typ_name.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if typ_name.startswith("float"):
            if isinstance(value, bool) or not math.isfinite(float(value)):
                raise ValueError
            return float(value)
        if typ_name.startswith("bool"):
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes", "on"):
                    return True
                if value.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if typ_name.startswith("str"):
            return str(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(f"Field '{name}' in {what} must be {typ_name.split(' ')[0]}, got {value!r}.",
                          fix=f"correct '{name}'.") from exc
    return value
