"""Named software stacks (data/software.toml): the PredictOptions a training code implies, and which
publications ran which, so `validate` predicts each published run with the kernels it actually used."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from functools import cache

from bastion.errors import ConfigError, did_you_mean
from bastion.predict.calibration import DATA_DIR
from bastion.predict.options import PredictOptions

#: what a row of a publication the table does not list is predicted with
DEFAULT_PUBLISHED_STACK = "production"
_META = ("description", "source", "publications", "mentions")


@dataclass(frozen=True)
class SoftwareStack:
    name: str
    description: str
    source: str
    options: PredictOptions
    publications: tuple[str, ...] = ()
    #: how a case row's `source` names this software (case-insensitive substrings)
    mentions: tuple[str, ...] = ()


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
                                     options=options, publications=tuple(entry.get("publications", ())),
                                     mentions=tuple(entry.get("mentions", ())))
    return stacks


def software_stack(name: str) -> SoftwareStack:
    stacks = software_stacks()
    if name not in stacks:
        raise ConfigError(f"Unknown software stack '{name}'.{did_you_mean(name, stacks)}",
                          fix=f"use one of: {', '.join(stacks)}.")
    return stacks[name]


@cache
def published_stack(source_group: str) -> SoftwareStack | None:
    """The stack a publication's runs used, or None when the table does not list it."""
    for stack in software_stacks().values():
        if source_group in stack.publications:
            return stack
    return None


def mentioned_stack(source: str) -> SoftwareStack | None:
    """The stack whose software a row's `source` text names, or None (no stack, or more than one, is named)."""
    text = source.lower()
    named = [s for s in software_stacks().values() if any(m.lower() in text for m in s.mentions)]
    return named[0] if len(named) == 1 else None
