"""The example files shipped inside the package (the repository's `examples/` links here), reachable by name from
any directory: `--cluster example:sim`, `--workload example:sim`, `--trace example:trace`, `bastion validate
public`. A value without the `example:` prefix is a path, as always.
"""

from __future__ import annotations

from pathlib import Path

from bastion.errors import ConfigError

EXAMPLES_DIR = Path(__file__).parent
PREFIX = "example:"

#: what a flag takes -> {example name: file under EXAMPLES_DIR}
EXAMPLES: dict[str, dict[str, str]] = {
    "inventory": {"sim": "sim/cluster.toml", "trace": "sim/trace-cluster.toml"},
    "workload": {"sim": "sim/workload.toml", "mixed": "sim/mixed-workload.toml"},
    "trace": {"trace": "sim/trace.csv"},
}


def resolve_example(value: str, kind: str, flag: str) -> str:
    """`example:NAME` -> the packaged file's path; any other value unchanged. An unknown name lists the known."""
    if not value.startswith(PREFIX):
        return value
    from bastion.errors import did_you_mean

    name = value.removeprefix(PREFIX)
    known = EXAMPLES[kind]
    if name not in known:
        listed = ", ".join(PREFIX + n for n in known)
        raise ConfigError(f"{flag} {value}: no packaged example of that name.{did_you_mean(name, known)}",
                          fix=f"use one of: {listed}, or give a file's path.")
    return str(EXAMPLES_DIR / known[name])
