"""A small YAML writer for Kubernetes manifests (mappings, lists, strings, numbers, booleans).

Why not PyYAML: it is not a runtime dependency of bastion, and manifests need only this subset. Any string that a
YAML reader could take for something else (a number, a boolean, null, or text with special characters) is written
as a JSON string, which YAML reads as a double-quoted scalar with the same value.
"""

from __future__ import annotations

import json
import re
from typing import Any

_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./\-]*$")
_RESERVED = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if value is None:
        return "null"
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _RESERVED:
        return text
    return json.dumps(text, ensure_ascii=False)


def _lines(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    out: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            label = f"{pad}{_scalar(key)}:"
            if isinstance(item, dict | list) and item:
                out.append(label)
                out.extend(_lines(item, indent + (2 if isinstance(item, dict) else 0)))
            elif _literal_block_ok(item):
                # a file's text (the plan's JSON) stays readable as a literal block
                body = item.removesuffix("\n")
                out.append(f"{label} |" if item.endswith("\n") else f"{label} |-")  # keep or strip the last newline
                out.extend(f"{pad}  {line}" if line else "" for line in body.split("\n"))
            else:
                out.append(f"{label} {_empty_or_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list) and item:
                nested = _lines(item, indent + 2)
                # the first line of a nested block moves up beside the "- "
                out.append(f"{pad}- {nested[0].lstrip()}")
                out.extend(nested[1:])
            else:
                out.append(f"{pad}- {_empty_or_scalar(item)}")
    else:
        out.append(f"{pad}{_scalar(value)}")
    return out


def _literal_block_ok(value: Any) -> bool:
    """Multi-line text YAML can hold verbatim in a `|` block: no other control characters, and a first line
    that does not start with a space (it would set the block's indentation)."""
    return (isinstance(value, str) and "\n" in value and not value.startswith((" ", "\n"))
            and not re.search(r"[\x00-\x09\x0b-\x1f\x7f]", value) and not value.endswith("\n\n"))


def _empty_or_scalar(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


def dump_all(documents: list[dict[str, Any]]) -> str:
    """Several documents separated by `---`, the form `kubectl apply -f` reads."""
    return "".join("---\n" + "\n".join(_lines(doc, 0)) + "\n" for doc in documents)
