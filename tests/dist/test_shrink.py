"""--on-failure shrink end to end: real `bastion train` launches of 4 gloo processes (dp4, ZeRO-3).

Rank 3's node is lost at step 5 with no replacement: the launcher re-plans for the ranks left (dp2, more gradient
accumulation, the same global batch) and relaunches from the newest checkpoint; the node is back at step 7, so the
smaller world stops at the next checkpoint boundary (8) and the run grows back to dp4 and finishes. Every sample
is used exactly once and the losses follow an uninterrupted run over the same samples (the session's single-process
`tiny_reference`, which every plan matches within 1e-5: test_equivalence.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.reshard import GLOBAL_BATCH, STEPS

pytestmark = [pytest.mark.dist, pytest.mark.timeout(900)]

PLAN = {"dp": 4, "pp": 1, "tp": 1, "zero_stage": 3, "micro_batch": 1, "global_batch": GLOBAL_BATCH,
        "precision": "fp32"}


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


def test_a_lost_node_shrinks_the_world_it_grows_back_and_the_run_keeps_its_samples(tmp_path, token_data,
                                                                                   tiny_reference) -> None:
    shrunk, output = train(tmp_path, token_data, "shrunk", "--on-failure", "shrink", "--checkpoint-every", "2",
                           "--sync-checkpoint", "--inject", "lose-node:rank=3,step=5,back_at=7")
    records = [json.loads(line) for line in (shrunk / "metrics.jsonl").read_text().splitlines() if line.strip()]
    changes = [r for r in records if r.get("event") == "plan_change"]
    assert [(c["from_world"], c["to_world"], c["step"], c["reason"]) for c in changes] == [
        (4, 2, 4, "lose-node"), (2, 4, 8, "node back")]
    # it grows back to the plan it had
    assert changes[0]["lost_ranks"] == [3] and changes[0]["plan"]["dp"] == 2
    assert changes[1]["plan"] == changes[0]["from_plan"] and changes[1]["plan"]["dp"] == 4
    assert changes[0]["plan"]["global_batch"] == 8
    assert "continuing on 2 rank(s)" in output and "growing to 4 rank(s) at step 8" in output
    summary = json.loads((shrunk / "summary.json").read_text())
    assert summary["plan_changes"] == [{k: c[k] for k in ("step", "from_world", "to_world", "plan")} for c in changes]
    assert summary["steps"] == STEPS and summary["finished"] and summary["world_size"] == 4
    # the smaller world trained steps 5..8
    worlds = {r["step"]: len(r["rank_sections_s"]["step"]) for r in records if "event" not in r}
    assert [worlds[s] for s in range(1, STEPS + 1)] == [4] * 4 + [2] * 4 + [4] * 2
    # the kept record of every step: all samples exactly once, in the uninterrupted run's order
    kept = {r["step"]: r for r in records if "event" not in r}
    assert sorted(kept) == list(range(1, STEPS + 1))
    seen = [i for r in kept.values() for i in range(*r["sample_ids"])]
    assert sorted(seen) == list(range(STEPS * 8))
    report = subprocess.run([sys.executable, "-m", "bastion", "report", str(shrunk)], capture_output=True, text=True)
    assert report.returncode == 0 and "4 → 2 at step 4, 2 → 4 at step 8" in report.stdout, report.stderr
    expected = json.loads((tiny_reference / "summary.json").read_text())["losses"]
    assert [kept[s]["loss"] for s in range(1, STEPS + 1)] == pytest.approx(expected, abs=1e-5)
