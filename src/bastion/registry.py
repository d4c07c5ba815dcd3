"""A registry of named extensions (simulator policies, planner objectives): name -> thing, in registration order.

What every registry needs once: registering under the thing's `name`, the guidance error for an unknown name
(with a did-you-mean), and the names as prose for `--help`. Registries are imported by the command modules at
`bastion --help` time, so this module and what registers into it stay cheap to import.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from bastion.errors import ConfigError, did_you_mean

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    """name -> registered thing; `kind` names it in errors ("policy", "objective")."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, thing: T) -> T:
        """Make `thing` available under `thing.name`; returns it, so it also works as a class decorator."""
        self[thing.name] = thing  # type: ignore[attr-defined]
        return thing

    def named(self, name: str) -> T:
        """The thing registered as `name`; an unknown name is a guidance error."""
        if name not in self:
            raise ConfigError(f"Unknown {self.kind} '{name}'.{did_you_mean(name, self)}",
                              fix=f"use one of: {', '.join(self)}.")
        return self[name]

    def prose(self) -> str:
        """The names as a sentence fragment: 'fifo, backfill or fair'."""
        names = list(self)
        return " or ".join(part for part in (", ".join(names[:-1]), names[-1]) if part) if names else ""
