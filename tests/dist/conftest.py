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
    prepare_dataset([stdlib / "json", stdlib / "email"], out, max_bytes=200_000)
    return out
