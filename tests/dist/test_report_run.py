"""`bastion report` on a real run: 2 gloo processes train `tiny` with a rank killed at step 4 and one restart.

Sync checkpoints every 2 steps make the arithmetic exact: step 2's checkpoint is committed before step 3 runs, the
kill at the start of step 4 ends the group after step 3 was recorded, the restarted group resumes from step 2 and
records step 3 again. So the report must show 1 restart, 1 recomputed step (3, blamed on the restart), and leave
step 1 (warm-up) and the first step after the restart out of the measured step time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

pytestmark = [pytest.mark.dist, pytest.mark.timeout(300)]

STEPS = 6
PLAN = {"dp": 2, "tp": 1, "pp": 1, "zero_stage": 0, "micro_batch": 2, "global_batch": 4, "precision": "fp32"}


def bastion(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    # `report` is registered by importing its module (cli.py lists the command modules)
    code = "import sys, bastion.commands.report_cmds\nfrom bastion.cli import main\nmain(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=240, env=env)


def test_report_counts_the_restart_and_the_recomputed_step(token_data, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(PLAN))
    run_dir, page = tmp_path / "run", tmp_path / "report.html"
    train = bastion("train", "--model", "tiny", "--plan", str(plan), "--data", str(token_data), "--steps", str(STEPS),
                    "--run-dir", str(run_dir), "--nproc", "2", "--no-progress", "--seq-len", "64",
                    "--checkpoint-every", "2", "--sync-checkpoint", "--inject", "kill:rank=1,step=4",
                    "--max-restarts", "1")
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]

    result = bastion("report", str(run_dir), "--json", "--html", str(page))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["finished"] and report["steps_completed"] == STEPS
    failures = report["failures"]
    assert failures["restarts"] == 1 and failures["faults_injected"] == 1 and failures["rollbacks"] == 0
    assert failures["recomputed"] == {"count": 1, "steps": [3], "by_cause": {"restart": 1, "rollback": 0,
                                                                             "other": 0}}
    assert failures["lost_steps"] == 1  # the runtime's own count (summary.json) agrees
    # sync saves at 2 (first launch), 4 and 6: each one logged as begun and as committed
    assert failures["checkpoint_saves"] == failures["checkpoints_committed"] == 3
    assert 0 < failures["goodput"] < 1 and failures["time_breakdown_s"]["recovery_s"] > 0
    assert 0 < failures["predicted_goodput"]["goodput"] <= 1
    assert [(e["event"], e["after_step"]) for e in report["timeline"] if e["event"] in ("fault", "restart")] \
        == [("fault", 3), ("restart", 3)]
    measured = report["measured"]
    # 7 step records (1, 2, 3 | 3, 4, 5, 6): step 1 is warm-up, the second step 3 follows the restart
    assert report["step_records"] == STEPS + 1
    assert (measured["steps_used"], measured["steps_left_out_warmup"], measured["steps_left_out_after_restart"]) \
        == (5, 1, 1)
    assert measured["step_time_s"] > 0 and report["predicted"]["step_time_s"] > 0
    assert report["loss"]["last_step"] == STEPS

    root = ET.fromstring(page.read_text().removeprefix("<!DOCTYPE html>\n"))
    svg = "{http://www.w3.org/2000/svg}"
    charts = {c.find(f"{svg}title").text: c for c in root.iter(f"{svg}svg")}
    # a chart per series the run logs (each a point per step), the memory per rank and the wall-clock timeline
    by_step = ["loss by step", "step time by step", "throughput by step", "MFU by step", "memory by step",
               "gradient norm by step", "learning rate by step"]
    assert list(charts) == [*by_step[:5], "memory per rank vs predicted", *by_step[5:], "wall-clock timeline"]
    for title in by_step:
        assert len(next(charts[title].iter(f"{svg}polyline")).get("points").split()) == STEPS
    rows = {t.text for t in charts["wall-clock timeline"].iter(f"{svg}text")}
    assert {"steps kept", "steps redone", "recovery", "checkpoint stall", "events"} <= rows

    text = bastion("report", str(run_dir))
    assert text.returncode == 0, text.stderr
    assert "1 (1 after restarts)" in text.stdout and "finished: 6 steps" in text.stdout
    print(text.stdout)  # shown with -s: what the report looks like on a real run
