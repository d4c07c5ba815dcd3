"""Fixtures shared by the unit tests (helpers live in tests/helpers/)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from helpers.report_runs import write_failing_run


@contextlib.contextmanager
def _hang_guard(seconds: int, what: str) -> Iterator[None]:
    def hung(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s: {what}")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture()
def hang_guard() -> Callable[[int, str], AbstractContextManager[None]]:
    """`with hang_guard(seconds, what):` fails the test with a TimeoutError naming `what` instead of letting
    unbounded work hang the suite (a guard against hangs, not a timing assertion)."""
    return _hang_guard


@pytest.fixture
def failing_run(tmp_path: Path) -> Path:
    """A run with a kill, a restart and a NaN rollback (helpers/report_runs.py: write_failing_run)."""
    return write_failing_run(tmp_path)
