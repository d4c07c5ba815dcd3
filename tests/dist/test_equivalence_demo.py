"""`bastion demo --quick` (what `make run` does, shortened): corpus, planner's hybrid plan, 4 processes, report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.dist, pytest.mark.timeout(900)]


def test_quick_demo_trains_a_hybrid_plan_and_reports_predicted_vs_measured(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bastion", "demo", "--quick", "--json", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=850)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    plan = summary["plan"]
    assert sum(plan[d] > 1 for d in ("dp", "tp", "pp")) >= 2 and plan["dp"] * plan["tp"] * plan["pp"] == 4
    assert summary["steps"] == 4 and summary["losses"][-1] < summary["losses"][0]
    assert summary["predicted"]["step_time_s"] > 0 and summary["measured"]["step_time_s"] > 0
    assert len(summary["params_sha256"]) == 64
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "step" in m and "loss" in m]
    assert [m["step"] for m in steps] == [1, 2, 3, 4]
    for key in ("loss", "grad_norm", "lr", "tokens_per_s", "step_time_s", "mfu", "mem_gib"):
        assert all(key in m for m in steps), key
