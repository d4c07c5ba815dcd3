"""Suite-wide guards: the tests must not rewrite tracked files (benchmarks write results; tests never do), and
they see none of the machine profiles the person running them saved.

The first is on when BASTION_CHECK_TRACKED=1 (what `make test` and its tiers set), so that editing a file while a
test runs during development does not trip it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tracked_changes() -> dict[str, str] | None:
    """Each modified tracked file's `git diff` against HEAD (None outside a git checkout)."""
    try:
        done = subprocess.run(["git", "-C", str(ROOT), "diff", "--no-ext-diff", "HEAD"], capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    per_file: dict[str, str] = {}
    for chunk in done.stdout.split("diff --git ")[1:]:
        per_file[chunk.split("\n", 1)[0]] = chunk
    return per_file


@pytest.fixture(autouse=True, scope="session")
def _own_config_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """bastion's user config directory (saved machine profiles, `--cluster NAME`) is an empty one of the suite's:
    a profile saved in the real home directory must not change a prediction, and no test may write there.
    Subprocesses inherit it."""
    patch = pytest.MonkeyPatch()
    patch.setenv("BASTION_CONFIG_DIR", str(tmp_path_factory.mktemp("bastion-config")))
    yield
    patch.undo()


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config._bastion_tracked_before = (  # type: ignore[attr-defined]
        _tracked_changes() if os.environ.get("BASTION_CHECK_TRACKED") == "1" else None)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = getattr(session.config, "_bastion_tracked_before", None)
    if before is None:
        return
    after = _tracked_changes()
    changed = sorted(name.split(" b/", 1)[-1] for name in set(before) | set(after or {})
                     if after is not None and before.get(name) != after.get(name))
    if changed:
        session.config.get_terminal_writer().line(
            f"\nthe test suite rewrote tracked files: {', '.join(changed)} (tests must write under tmp_path)",
            red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
