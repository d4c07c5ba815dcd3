"""Fixtures of the multi-process tests, shared by the session (helpers live in tests/helpers/)."""

from __future__ import annotations

import functools
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.equivalence import SharedLaunches


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


@pytest.fixture(scope="session")
def equivalence_runs(tmp_path_factory: pytest.TempPathFactory, token_data: Path) -> SharedLaunches:
    """The cases the collected modules declared (helpers.equivalence.declare) on `token_data`, one torchrun launch
    per world size for the whole session: `equivalence_runs(names)` -> {name: CaseResult}."""
    return SharedLaunches(tmp_path_factory.mktemp("equivalence"), token_data)


@pytest.fixture(scope="session")
def equivalence_reference(token_data: Path) -> Callable[[str], tuple[list[float], dict]]:
    """`equivalence_reference(model)`: the single-process fp32 reference of the equivalence cases (STEPS steps of
    8 samples on `token_data`: losses and final parameters), computed once per model for the session."""
    from helpers.equivalence import reference_run

    return functools.cache(lambda model: reference_run(token_data, model, global_batch=8))


@pytest.fixture(scope="session")
def moe_reference(token_data: Path) -> Callable[[str], Callable]:
    """`moe_reference(model)`: a function of a routing flip (None or helpers.routing.RoutingFlip) giving the MoE
    equivalence cases' single-process reference with its routing (helpers.equivalence.routed_reference), that
    flip forced; each computed once for the session."""
    from helpers.equivalence import routed_reference

    cached = functools.cache(lambda model, flip: routed_reference(token_data, model, flip))
    return lambda model: functools.partial(cached, model)
