"""One run per run directory: while a real `bastion train` runs, a second one on the same directory is refused with
guidance (exit 2) before touching anything; the first completes, and its checkpoints resume fine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bastion.jsonl import read_json_lines

pytestmark = [pytest.mark.dist, pytest.mark.timeout(400)]

PLAN = {"dp": 2, "micro_batch": 1, "global_batch": 2, "precision": "fp32"}


def _train(plan: Path, data: Path, run_dir: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "bastion", "train", "--model", "tiny", "--plan", str(plan), "--data", str(data),
            "--steps", str(steps), "--run-dir", str(run_dir), "--no-progress", "--seq-len", "64",
            "--checkpoint-every", "2", "--sync-checkpoint"]


def _snapshot(run_dir: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _with_descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found = [pid]
    for candidate in found:
        found += [child for child, parent in parents.items() if parent == candidate]
    return found


def test_a_second_run_on_the_same_directory_is_refused(token_data, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(PLAN))
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(_train(plan, token_data, run_dir, 6), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 200
        while not (run_dir / "metrics.jsonl").exists():   # the workers are up and writing
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first run never started training"
            time.sleep(0.2)
        # freeze the first run (front process, torchrun, workers) so it is surely still running, and so nothing
        # but the second run could change the directory meanwhile
        frozen = _with_descendants(first.pid)   # torchrun starts its workers in sessions of their own
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            before = _snapshot(run_dir)
            second = subprocess.run(_train(plan, token_data, run_dir, 6), capture_output=True, text=True, env=env,
                                    timeout=120)
            after = _snapshot(run_dir)
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        assert second.returncode == 2, second.stdout + second.stderr
        assert "is in use by another run" in second.stderr and f"pid {first.pid}" in second.stderr
        assert "To fix:" in second.stderr and "Traceback" not in second.stderr
        assert after == before   # refused before touching anything
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, out[-3000:] + err[-3000:]
    assert (run_dir / "run.lock").read_text() == ""   # released: the owner record is gone

    # the first run's checkpoints resume fine: continue it to step 8
    more = subprocess.run(_train(plan, token_data, run_dir, 8), capture_output=True, text=True, env=env, timeout=300)
    assert more.returncode == 0, more.stdout[-3000:] + more.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 8
    resumes = [r for r in read_json_lines(run_dir / "metrics.jsonl") if r.get("event") == "resume"]
    assert resumes and resumes[-1]["resumed_from_step"] == 6


def test_a_lock_left_by_a_killed_run_is_reported_and_taken_over(tmp_path):
    """flock dies with its holder: a run killed with SIGKILL leaves only its owner record, which the next run
    names (and takes over)."""
    from bastion.rundir.layout import LOCK_FILE
    from bastion.rundir.lock import acquire

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
                               "from bastion.rundir.lock import acquire\nacquire(Path(sys.argv[1]))\n"
                               "print('held', flush=True)\ntime.sleep(60)", str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    from bastion.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        acquire(tmp_path)
    assert f"pid {holder.pid}" in refused.value.problem and refused.value.fix
    holder.kill()
    holder.wait()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == holder.pid   # the record outlives the holder
    with acquire(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert (tmp_path / LOCK_FILE).read_text() == ""
