"""A pipeline schedule registered from a test trains exactly like one process on 2 real gloo processes: the
runtime finds its torch class, places its chunks and runs it through the registry alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.equivalence import max_differences, run_cases
from registered_schedule_worker import ALIAS, register

pytestmark = [pytest.mark.dist, pytest.mark.timeout(600)]

WORKER = Path(__file__).with_name("registered_schedule_worker.py")


@pytest.fixture
def registered() -> Iterator[None]:
    from bastion.specs.schedules import SCHEDULES

    register()
    yield
    del SCHEDULES[ALIAS.name]


def test_registered_schedule_matches_one_process(tmp_path: Path, token_data: Path, registered: None,
                                                equivalence_reference) -> None:
    ref_losses, ref_params = equivalence_reference("tiny")
    plan = dict(pp=2, pp_schedule=ALIAS.name, vpp=2, micro_batch=2, global_batch=8, precision="fp32")
    result = run_cases(tmp_path, token_data, 2, {"alias": plan}, worker=WORKER)["alias"]
    loss_diff, param_diff = max_differences(result, ref_losses, ref_params)
    assert loss_diff < 1e-5 and param_diff < 1e-5
    assert result.summary["plan"]["pp_schedule"] == ALIAS.name
    # the worker's predictor knew the schedule too: the run has a prediction, not a note why there is none
    assert "step_time_s" in result.summary["predicted"], result.summary["predicted"]
