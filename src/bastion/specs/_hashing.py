"""A hash computed once per frozen spec object.

Models, clusters, plans and predictor options are the keys of the predictor's caches, which the planner hits
hundreds of thousands of times per search; a dataclass's generated `__hash__` rebuilds and hashes the tuple of
every field (and of nested specs) on each lookup. Frozen objects never change, so the first hash is kept.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any


def cached_hash(self: Any) -> int:
    """`__hash__` for a frozen dataclass: assign it in the class body (`__hash__ = cached_hash`)."""
    try:
        return self.__dict__["_cached_hash"]
    except KeyError:
        value = hash(tuple(getattr(self, f.name) for f in fields(self)))
        object.__setattr__(self, "_cached_hash", value)
        return value
