"""Resume a context-parallel run on other layouts: one 10-step run that changes plan twice.

cp2 × dp2 ZeRO 3 (4 processes) → cp2 × tp2 with sequence parallelism (4) → dp2 ZeRO 2 without cp (2),
checkpointing every 2 steps and stopping at steps 2 and 4; DCP reshards the model and optimizer at each change
(the ZeRO shards of the first layout are spread over dp × cp). Against an uninterrupted single-process run (the
session's `tiny_reference`): every step's loss and the final weights and Adam moments agree to fp32 round-off,
and no sample is skipped or repeated.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.checkpoints import final_state
from helpers.cli import step_records
from helpers.reshard import GLOBAL_BATCH, STEPS, switched_run

pytestmark = [pytest.mark.dist, pytest.mark.timeout(900)]

SEGMENTS = [  # (plan, processes, stop after step)
    ({"cp": 2, "dp": 2, "zero_stage": 3, "micro_batch": 1}, 4, 2),
    ({"cp": 2, "tp": 2, "sequence_parallel": True}, 4, 4),
    ({"dp": 2, "zero_stage": 2}, 2, 0),
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, token_data, tiny_reference) -> tuple[Path, Path]:
    return tiny_reference, switched_run(tmp_path_factory.mktemp("reshard-cp") / "switched", token_data, SEGMENTS)


def test_cp_run_resumed_on_other_layouts_where_it_stopped(runs):
    _, switched = runs
    events = [json.loads(line) for line in (switched / "metrics.jsonl").read_text().splitlines()]
    resumes = [e for e in events if e.get("event") == "resume"]
    assert [r["resumed_from_step"] for r in resumes] == [2, 4]
    assert [(r["world_size"], r["plan"]["cp"], r["plan"]["tp"], r["plan"]["dp"]) for r in resumes] == [
        (4, 2, 2, 1), (2, 1, 1, 2)]
    recs = step_records(switched)
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))
    assert [i for r in recs for i in range(*r["sample_ids"])] == list(range(STEPS * GLOBAL_BATCH))


def test_cp_losses_weights_and_optimizer_state_carry_over(runs):
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
