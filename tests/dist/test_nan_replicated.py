"""A NaN on one replica of plain data parallelism (ZeRO 0: gradients all-reduced, then replicated) must be seen
by every rank: all roll back together and skip the batch. Before the gradient-norm check was made collective,
only the poisoned rank rolled back, the other stepped on, and the run hung until the watchdog fired."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.cli import bastion, records

pytestmark = [pytest.mark.dist, pytest.mark.timeout(600)]

STEPS, NAN_STEP = 6, 4
PLAN = {"dp": 2, "zero_stage": 0, "micro_batch": 2, "global_batch": 4, "precision": "fp32"}


def train(run_dir: Path, data: Path, plan: Path, *extra: str) -> dict:
    result = bastion("train", "--model", "tiny", "--plan", str(plan), "--data", str(data), "--steps", str(STEPS),
                     "--run-dir", str(run_dir), "--nproc", "2", "--no-progress", "--hang-timeout-s", "60", *extra,
                     timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-4000:]
    return json.loads((run_dir / "summary.json").read_text())


def test_a_nan_on_one_replica_rolls_every_rank_back(tmp_path: Path, token_data: Path) -> None:
    plan = tmp_path / "dp2.json"
    plan.write_text(json.dumps(PLAN))
    reference = train(tmp_path / "reference", token_data, plan, "--skip-batch", str(NAN_STEP))
    run_dir = tmp_path / "poisoned"
    poisoned = train(run_dir, token_data, plan, "--checkpoint-every", "2", "--inject", f"nan:rank=1,step={NAN_STEP}")
    recs = records(run_dir)
    rollbacks = [r for r in recs if r.get("event") == "rollback"]
    assert len(rollbacks) == 1 and rollbacks[0]["step"] == NAN_STEP and "nan" in rollbacks[0]["reason"]
    assert not [r for r in recs if r.get("event") in ("hang", "restart")]  # handled in place, no watchdog
    assert poisoned["steps"] == STEPS
    # every save that began (async, the default) is later logged as committed, at or after its start
    began = {r["step"]: r["time"] for r in recs if r.get("event") == "checkpoint"}
    committed = {r["step"]: r["committed_unix"] for r in recs if r.get("event") == "checkpoint_committed"}
    assert began and set(committed) == set(began) >= set(poisoned["checkpoints"])
    assert all(committed[step] >= began[step] for step in began)
    assert poisoned["params_sha256"] == reference["params_sha256"]
