"""Fixtures of the multi-process tests (helpers live in equivalence_helpers.py)."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def token_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~200 KB of byte-level tokens from the standard library's own sources (present on every machine)."""
    from bastion.runtime.data import prepare_dataset

    out = tmp_path_factory.mktemp("tokens")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sources = [path for package in ("json", "email") for path in sorted((stdlib / package).rglob("*.py"))]
    prepare_dataset(sources, out, max_bytes=200_000)  # the .py files only: __pycache__ is binary, and refused
    return out


@pytest.fixture(scope="session")
def tiny_reference(tmp_path_factory: pytest.TempPathFactory, token_data: Path) -> Path:
    """The run directory of an uninterrupted single-process `tiny` run on `token_data` (helpers/reshard.py: STEPS
    steps of GLOBAL_BATCH samples, checkpointed every 2 steps): what the resharding and shrinking tests compare
    against, run once for all of them."""
    from helpers.reshard import single_process_run

    return single_process_run(tmp_path_factory.mktemp("tiny-reference") / "run", token_data)
