"""Straggler detection and the health check end to end: real `bastion train` launches of 2 gloo processes (dp2,
ZeRO-3).

A rank made three times slower (`--inject slow:rank=1,factor=3`) is named as a straggler within a few steps, in
metrics.jsonl, summary.json and `bastion report`; a clean run of the same plan names none. Every start runs the
health check; a rank whose link waits before each collective (`flaky-link`) fails its bandwidth test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.dist, pytest.mark.timeout(600)]

STEPS = 9
PLAN = {"dp": 2, "pp": 1, "tp": 1, "zero_stage": 3, "micro_batch": 2, "global_batch": 4, "precision": "fp32"}


def bastion(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "bastion", *args], capture_output=True, text=True, timeout=500,
                          env=env)


def train(tmp_path: Path, token_data: Path, name: str, *extra: str) -> tuple[Path, str]:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(PLAN))
    run_dir = tmp_path / name
    result = bastion("train", "--model", "tiny", "--plan", str(plan), "--data", str(token_data), "--steps",
                     str(STEPS), "--run-dir", str(run_dir), "--nproc", "2", "--no-progress", *extra)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return run_dir, result.stdout + result.stderr


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_a_slow_rank_is_named_and_a_clean_run_names_none(tmp_path: Path, token_data: Path) -> None:
    slow, output = train(tmp_path, token_data, "slow", "--inject", "slow:rank=1,factor=3")
    events = [r for r in records(slow) if r.get("event") == "straggler"]
    # found once, after the first step (left out) and a 5-step window: step 6 at the earliest
    assert [e["rank"] for e in events] == [1], events
    assert events[0]["step"] <= 7 and events[0]["baseline"] == "peers" and events[0]["factor"] >= 1.5
    steps = [r for r in records(slow) if "event" not in r]
    # every step carries both ranks' section times; rank 0 waits in the closing collective for rank 1
    assert all(len(r["rank_sections_s"][name]) == 2 for r in steps for name in ("forward_backward", "optimizer",
                                                                                    "sync_wait", "step"))
    assert all(r["rank_sections_s"]["sync_wait"][0] > r["rank_sections_s"]["sync_wait"][1] for r in steps[1:])
    # and their CPU seconds: rank 1 sleeps (its step's wall time, not its CPU time) and rank 0 waits for it in
    # the closing collective blocked, not spinning: a waiting rank leaves its core to others
    cpu = [r["rank_cpu_sections_s"] for r in steps[1:]]
    wall = [r["rank_sections_s"] for r in steps[1:]]
    assert all(len(c[name]) == 2 for c in cpu for name in ("forward_backward", "optimizer", "sync_wait", "step"))
    assert all(c["step"][1] < 0.75 * w["step"][1] for c, w in zip(cpu, wall, strict=True))
    assert all(c["sync_wait"][0] < 0.5 * w["sync_wait"][0] for c, w in zip(cpu, wall, strict=True))
    assert all(c["forward_backward"][rank] > 0 for c in cpu for rank in (0, 1))
    summary = json.loads((slow / "summary.json").read_text())
    assert summary["stragglers"] == [{"rank": 1, "step": events[0]["step"], "factor": events[0]["factor"]}]
    assert "rank 1 is a straggler" in output
    faults = [r for r in records(slow) if r.get("event") == "fault"]
    assert [f["spec"] for f in faults] == ["slow:rank=1,factor=3,from_step=1"]  # recorded once
    report = bastion("report", str(slow))
    assert report.returncode == 0, report.stderr
    assert f"rank 1 at step {events[0]['step']}" in report.stdout

    clean, _ = train(tmp_path, token_data, "clean")
    assert [r for r in records(clean) if r.get("event") == "straggler"] == []
    assert json.loads((clean / "summary.json").read_text())["stragglers"] == []
    health = [r for r in records(clean) if r.get("event") == "health_check"]
    assert len(health) == 1 and health[0]["cluster"] == "cpu:2" and health[0]["gpus"] == {
        "skipped": "CPU run: no GPU to check"}
    assert len(health[0]["all_reduce_s_by_rank"]) == 2 and health[0]["predicted_s"] > 0
    # cpu:2 is the device's default, not a named cluster: the bandwidth is compared, not judged
    assert health[0]["ok"] is True and "not judged" in health[0]["bandwidth_note"]


def test_a_flaky_link_fails_the_health_check(tmp_path: Path, token_data: Path) -> None:
    run_dir, output = train(tmp_path, token_data, "flaky", "--inject", "flaky-link:rank=1,delay_ms=300",
                            "--cluster", "cpu:2")
    health = [r for r in records(run_dir) if r.get("event") == "health_check"]
    # 300 ms before each all-reduce of 4 MiB, predicted in milliseconds on cpu:2
    assert len(health) == 1 and health[0]["ok"] is False and health[0]["ratio"] >= 3
    assert any("all-reduce of 4 MiB" in p for p in health[0]["problems"])
    assert "health check found" in output
    # its peers wait for it at every closing collective too
    # (with a named cluster each rank is also judged against the predicted step time, which cpu:2 misses here)
    assert [e["rank"] for e in records(run_dir) if e.get("event") == "straggler" and e["baseline"] == "peers"] == [1]
