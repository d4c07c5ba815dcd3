"""What `bastion train` prints, as a person sees it: an injected kill is one line (the tracebacks of the ranks that
saw their peer die go to RUN_DIR/logs/), DTensor's redistribution advice is not printed, and `--json` ends with the
run's summary as one JSON object on stdout (everything else on stderr)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.dist, pytest.mark.timeout(400)]


def test_a_killed_rank_is_one_line_and_json_is_the_summary(token_data, tmp_path):
    plan = tmp_path / "plan.json"
    # dp2 × tp2: tensor-parallel DTensors whose redistributions torch would advise about
    plan.write_text(json.dumps({"dp": 2, "tp": 2, "zero_stage": 3, "micro_batch": 1, "global_batch": 2,
                                "precision": "fp32"}))
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    env.pop("BASTION_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "bastion", "train", "--model", "tiny", "--plan", str(plan),
                           "--data", str(token_data), "--steps", "4", "--run-dir", str(run_dir), "--seq-len", "32",
                           "--no-progress", "--checkpoint-every", "1", "--sync-checkpoint", "--inject",
                           "kill:rank=1,step=3", "--max-restarts", "1", "--json"],
                          capture_output=True, text=True, timeout=360, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(done.stdout)  # stdout is the one JSON object
    assert summary["run_dir"] == str(run_dir) and summary["finished"] and summary["restarts"] == 1
    assert done.stderr.count("injected fault fired: kill:rank=1,step=3") == 1
    assert "While redistributing" not in done.stderr and "closing signal" not in done.stderr
    # the peers of the killed rank failed in their next collective: the fault's line says why, their tracebacks
    # are in their log files
    assert "Traceback" not in done.stderr and "worker failed" not in done.stderr, done.stderr[-4000:]
    logs = sorted((run_dir / "logs").glob("rank-*.log"))
    assert [log.name for log in logs] == ["rank-00000.log", "rank-00002.log", "rank-00003.log"]
    assert all("Connection" in log.read_text() and "Traceback" in log.read_text() for log in logs)
    print(done.stderr)
