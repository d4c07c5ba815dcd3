"""Fixtures shared by the unit tests (helpers live in tests/helpers/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.report_runs import write_failing_run


@pytest.fixture
def failing_run(tmp_path: Path) -> Path:
    """A run with a kill, a restart and a NaN rollback (helpers/report_runs.py: write_failing_run)."""
    return write_failing_run(tmp_path)
