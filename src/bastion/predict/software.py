"""Named software stacks (data/software.toml): the PredictOptions a training code implies. `--software NAME`
names one; a framework release implies one (predict/frameworks.py)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from functools import cache

from bastion.errors import ConfigError, did_you_mean
from bastion.predict.calibration import DATA_DIR
from bastion.predict.options import PredictOptions

_META = ("description", "source")


@dataclass(frozen=True)
class SoftwareStack:
    name: str
    description: str
    source: str
    options: PredictOptions


@cache
def software_stacks() -> dict[str, SoftwareStack]:
    table = tomllib.loads((DATA_DIR / "software.toml").read_text())
    known = {f.name for f in fields(PredictOptions)}
    stacks = {}
    for name, entry in table.items():
        unknown = set(entry) - known - set(_META)
        if unknown:  # a typo in the data file must not silently fall back to a default
            raise ConfigError(f"software.toml [{name}] has unknown fields: {', '.join(sorted(unknown))}.")
        options = PredictOptions(**{k: v for k, v in entry.items() if k in known})
        stacks[name] = SoftwareStack(name=name, description=entry["description"], source=entry["source"],
                                     options=options)
    return stacks


def software_stack(name: str) -> SoftwareStack:
    stacks = software_stacks()
    if name not in stacks:
        raise ConfigError(f"Unknown software stack '{name}'.{did_you_mean(name, stacks)}",
                          fix=f"use one of: {', '.join(stacks)}.")
    return stacks[name]
