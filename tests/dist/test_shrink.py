"""--on-failure shrink end to end: real `bastion train` launches of 4 gloo processes (dp4, ZeRO-3).

Rank 3's node is lost at step 5 with no replacement: the launcher re-plans for the ranks left (dp2, more gradient
accumulation, the same global batch), relaunches from the newest checkpoint and finishes; every sample is used
exactly once and the losses follow an uninterrupted dp4 run over the same samples.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.dist, pytest.mark.timeout(900)]

STEPS = 8
PLAN = {"dp": 4, "pp": 1, "tp": 1, "zero_stage": 3, "micro_batch": 1, "global_batch": 8, "precision": "fp32"}


def train(tmp_path: Path, token_data: Path, name: str, *extra: str) -> tuple[Path, str]:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(PLAN))
    run_dir = tmp_path / name
    result = subprocess.run(
        [sys.executable, "-m", "bastion", "train", "--model", "tiny", "--plan", str(plan), "--data", str(token_data),
         "--steps", str(STEPS), "--run-dir", str(run_dir), "--nproc", "4", "--no-progress", *extra],
        capture_output=True, text=True, timeout=800, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return run_dir, result.stdout + result.stderr


def test_a_lost_node_shrinks_the_world_and_the_run_finishes_on_the_same_samples(tmp_path, token_data) -> None:
    reference, _ = train(tmp_path, token_data, "reference")
    shrunk, output = train(tmp_path, token_data, "shrunk", "--on-failure", "shrink", "--checkpoint-every", "2",
                           "--sync-checkpoint", "--inject", "lose-node:rank=3,step=5")
    records = [json.loads(line) for line in (shrunk / "metrics.jsonl").read_text().splitlines() if line.strip()]
    changes = [r for r in records if r.get("event") == "plan_change"]
    assert len(changes) == 1 and changes[0]["lost_ranks"] == [3]
    assert (changes[0]["from_world"], changes[0]["to_world"], changes[0]["step"]) == (4, 2, 4)
    assert changes[0]["plan"]["dp"] == 2 and changes[0]["plan"]["global_batch"] == 8
    assert "continuing on 2 rank(s)" in output
    summary = json.loads((shrunk / "summary.json").read_text())
    assert summary["plan_changes"] == [{"step": 4, "from_world": 4, "to_world": 2, "plan": changes[0]["plan"]}]
    assert summary["steps"] == STEPS and summary["world_size"] == 2 and summary["plan"]["dp"] == 2
    # the kept record of every step: all samples exactly once, in the uninterrupted run's order
    kept = {r["step"]: r for r in records if "event" not in r}
    assert sorted(kept) == list(range(1, STEPS + 1))
    seen = [i for r in kept.values() for i in range(*r["sample_ids"])]
    assert sorted(seen) == list(range(STEPS * 8))
    report = subprocess.run([sys.executable, "-m", "bastion", "report", str(shrunk)], capture_output=True, text=True)
    assert report.returncode == 0 and "4 → 2 at step 4" in report.stdout, report.stderr
    expected = json.loads((reference / "summary.json").read_text())["losses"]
    assert [kept[s]["loss"] for s in range(1, STEPS + 1)] == pytest.approx(expected, abs=1e-5)
