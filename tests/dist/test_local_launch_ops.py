"""A real `bastion launch --on local` of the `tiny` model, operated from another terminal as a user would:
`bastion status`, `logs` (`-f`), `cancel` read the engine from the run directory; the cancelled run saves and
stops, and the same directory then refuses another run unless --overwrite, which moves the old run aside."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.cli import bastion

pytestmark = [pytest.mark.dist, pytest.mark.timeout(500)]


def _env() -> dict[str, str]:
    import bastion as package

    source = str(Path(package.__file__).parents[1])
    env = {k: v for k, v in os.environ.items() if k != "BASTION_DEBUG"}
    env.update(OMP_NUM_THREADS="1", COLUMNS="200", PYTHONPATH=os.pathsep.join([source, env.get("PYTHONPATH", "")]))
    return env


def _wait_for(condition, what: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _steps(run_dir: Path) -> list[int]:
    from bastion.jsonl import read_json_lines

    return [r["step"] for r in read_json_lines(run_dir / "metrics.jsonl") if "event" not in r]


def test_status_logs_cancel_of_a_local_launch_then_overwrite(tmp_path: Path, token_data: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"micro_batch": 1, "global_batch": 1, "precision": "fp32"}))
    run = tmp_path / "run"
    launch = ["launch", "--on", "local", "--device", "cpu", "--model", "tiny", "--plan", str(plan), "--data",
              str(token_data), "--run-dir", str(run), "--seq-len", "64"]
    launcher = subprocess.Popen([sys.executable, "-m", "bastion", *launch, "--steps", "1000000", "--",
                                 "--no-progress"], env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    follower = None
    try:
        _wait_for(lambda: len(_steps(run)) >= 2 or launcher.poll() is not None, "the first steps")
        assert launcher.poll() is None, launcher.communicate()
        record = json.loads((run / "launch.json").read_text())
        assert record["engine"] == "local" and record["pgid"] == record["pid"] and "exit_code" not in record

        status = bastion("status", str(run))
        assert status.returncode == 0, status.stderr
        assert f"local run {run}: running: at step" in status.stdout
        assert json.loads(bastion("status", str(run), "--json").stdout)["state"] == "running"

        logs = bastion("logs", str(run), "-n", "2")
        assert logs.returncode == 0, logs.stderr
        assert len(logs.stdout.splitlines()) == 2 and all(line.startswith("step ") for line in
                                                           logs.stdout.splitlines())
        # -f follows until the run ends: started now, it stops by itself after the cancel below
        follower = subprocess.Popen([sys.executable, "-m", "bastion", "logs", str(run), "-f", "--json", "-n", "1"],
                                    env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # its first line (the -n 1 backlog) printed: it is following before the run is cancelled
        first_line = follower.stdout.readline()
        cancelled = bastion("cancel", str(run))
        assert cancelled.returncode == 0, cancelled.stderr
        assert "sent SIGTERM to the run's workers" in cancelled.stdout
        _, err = launcher.communicate(timeout=180)
        assert launcher.returncode == 0, err[-3000:]   # the workers saved and stopped: a clean exit, no traceback
        rest, _ = follower.communicate(timeout=60)
        followed = first_line + rest
    finally:
        for process in (launcher, follower):
            if process is not None and process.poll() is None:
                process.kill()
    lines = [json.loads(line) for line in followed.splitlines()]
    assert any(line["source"] == "metrics.jsonl" and line.get("record", {}).get("event") == "preempted"
               for line in lines), lines[-5:]
    stopped_at = json.loads((run / "summary.json").read_text())
    assert stopped_at["finished"] is False
    status = bastion("status", str(run))
    assert f"stopped at step {stopped_at['steps']} of 1000000, checkpointed" in status.stdout, status.stdout
    assert json.loads((run / "launch.json").read_text())["exit_code"] == 0
    again = bastion("cancel", str(run))
    assert again.returncode == 2 and "is not running" in again.stderr

    # the same directory, another seed: refused before anything is written, whatever engine
    before = sorted(p.name for p in run.iterdir())
    refused = bastion(*launch, "--steps", "3", "--", "--seed", "1")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    flat = " ".join(refused.stderr.split())
    assert f"--run-dir {run} holds another run: seed 0 → 1" in flat and "--overwrite" in flat and "--resume" in flat
    assert sorted(p.name for p in run.iterdir()) == before
    # the same run again is no other run: a dry run of the same launch is accepted
    assert bastion(*launch, "--steps", "2000000", "--dry-run").returncode == 0

    fresh = bastion(*launch, "--steps", "3", "--overwrite", "--", "--seed", "1", "--no-progress")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    moved = [p for p in run.iterdir() if p.name.startswith("replaced-")]
    assert len(moved) == 1 and "moved the previous run's" in " ".join(fresh.stderr.split())
    assert (moved[0] / "summary.json").exists() and (moved[0] / "checkpoints").is_dir()
    assert _steps(run) == [1, 2, 3]   # a fresh start: nothing resumed from the old run
    assert "finished: 3 steps" in bastion("status", str(run)).stdout
