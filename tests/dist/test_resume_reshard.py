"""Resume on other plans: one 10-step run that changes plan (and world size) three times.

FSDP dp4 (4 processes) → TP2 (2) → DP2 (2) → PP2 (2), checkpointing every 2 steps and stopping at steps 2, 4 and
6; DCP reshards the model and optimizer at each change. Against an uninterrupted single-process run (the
session's `tiny_reference`): every step's loss and the final weights and Adam moments agree to fp32 round-off, and
the global sample ids of the 10 kept steps are exactly 0..10·G−1 — none skipped, none repeated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.checkpoints import final_state
from helpers.cli import step_records
from helpers.reshard import GLOBAL_BATCH, STEPS, switched_run

pytestmark = [pytest.mark.dist, pytest.mark.timeout(900)]

SEGMENTS = [  # (plan, processes, stop after step)
    ({"dp": 4, "zero_stage": 3, "micro_batch": 1}, 4, 2),
    ({"tp": 2, "sequence_parallel": True}, 2, 4),
    ({"dp": 2, "zero_stage": 2}, 2, 6),
    ({"pp": 2, "pp_schedule": "1f1b"}, 2, 0),
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, token_data, tiny_reference) -> tuple[Path, Path]:
    return tiny_reference, switched_run(tmp_path_factory.mktemp("reshard") / "switched", token_data, SEGMENTS)


def test_every_plan_change_resumed_where_the_last_stopped(runs):
    _, switched = runs
    events = [json.loads(line) for line in (switched / "metrics.jsonl").read_text().splitlines()]
    resumes = [e for e in events if e.get("event") == "resume"]
    assert [r["resumed_from_step"] for r in resumes] == [2, 4, 6]
    assert [(r["world_size"], r["plan"]["tp"], r["plan"]["dp"], r["plan"]["pp"]) for r in resumes] == [
        (2, 2, 1, 1), (2, 1, 2, 1), (2, 1, 1, 2)]
    summary = json.loads((switched / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["restarts"] == 0 and summary["lost_steps"] == 0


def test_sample_ids_across_plan_changes_none_skipped_none_repeated(runs):
    _, switched = runs
    recs = step_records(switched)
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))
    seen = [i for r in recs for i in range(*r["sample_ids"])]
    assert seen == list(range(STEPS * GLOBAL_BATCH))


def test_losses_weights_and_optimizer_state_carry_over(runs):
    import torch

    reference, switched = runs
    ref_losses = [r["loss"] for r in step_records(reference)]
    got_losses = [r["loss"] for r in step_records(switched)]
    assert got_losses == pytest.approx(ref_losses, abs=1e-5)
    expected, got = final_state(reference, STEPS), final_state(switched, STEPS)
    assert sorted(expected) == sorted(got)
    assert any(k.endswith("exp_avg_sq") for k in got)
    for key, tensor in expected.items():
        torch.testing.assert_close(got[key], tensor, rtol=1e-4, atol=1e-5, msg=key)
