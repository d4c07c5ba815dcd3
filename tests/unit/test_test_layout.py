"""The suite's own layout: pytest imports test modules by basename (no packages), so two test files of one name
in different tiers stop the whole run at collection. Found that way once; checked here before it can recur."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_module_has_a_unique_name() -> None:
    names = Counter(path.name for path in TESTS.rglob("test_*.py"))
    assert not [name for name, count in names.items() if count > 1]
