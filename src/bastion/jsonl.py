"""Reading JSON-lines files that other processes append to (RUN_DIR/metrics.jsonl, the job registry's jobs.jsonl).

A writer killed mid-append leaves its last line cut short, and a reader may look while a line is being written;
such a line is skipped, not an error. Pure Python, no torch: `bastion status` and `bastion launch` read these files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json_lines_counted(path: Path) -> tuple[list[Any], int]:
    """(every line of `path` that parses as JSON, in file order; how many non-blank lines did not parse).

    ([], 0) when there is no such file. A line that does not parse (cut short, or cut inside a multi-byte
    character) is skipped wherever it is. Lines are split on newlines only (bytes), so a JSON string holding
    U+2028 and the like stays one line.
    """
    path = Path(path)
    if not path.is_file():
        return [], 0
    values = []
    bad = 0
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            values.append(json.loads(line))
        except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
            bad += 1
    return values, bad


def read_json_lines(path: Path) -> list[Any]:
    """Every line of `path` that parses as JSON, in file order; [] when there is no such file."""
    return read_json_lines_counted(path)[0]
