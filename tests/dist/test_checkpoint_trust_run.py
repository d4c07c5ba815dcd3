"""A checkpoint cannot run code, and bad checkpoints are set aside, end to end: real `bastion train` launches of 2
gloo processes (FSDP dp2) on one run directory.

1. Steps 1–6, checkpoints at 2, 4, 6. Then step 6's `.metadata` becomes a pickle that runs a shell command and
   step 4's rank-1 state file loses its RNG, each with the manifest recomputed so the sha256 check passes.
2. Resume to step 8: step 6 is quarantined as untrusted (the command never runs, in any worker), step 4 verifies
   but fails to load on rank 1 and is quarantined too, and the run continues from step 2.
3. Every checkpoint damaged: the run is refused (exit 2) with guidance naming what was quarantined, again when
   rerun, and starts over at step 0 only with --restart-from-scratch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers.cli import bastion, records

from bastion.rundir import checkpoints as cf

pytestmark = [pytest.mark.dist, pytest.mark.timeout(900)]

PLAN = {"dp": 2, "zero_stage": 3, "micro_batch": 1, "global_batch": 4, "precision": "fp32"}


def reseal(path: Path) -> None:
    """Recompute a committed checkpoint's manifest over its current files, as anyone with write access could."""
    step = int(path.name.removeprefix("step-"))
    temp = path.with_name(cf.temp_dir_name(step))
    os.rename(path, temp)
    (temp / cf.MANIFEST).unlink()
    cf.commit(temp, path, step)


def train(run_dir: Path, data: Path, plan: Path, steps: int, *extra: str):
    return bastion("train", "--model", "tiny", "--plan", str(plan), "--data", str(data), "--steps", str(steps),
                   "--run-dir", str(run_dir), "--nproc", "2", "--no-progress", "--checkpoint-every", "2", *extra)


def test_untrusted_and_unloadable_checkpoints_are_set_aside_and_all_bad_is_refused(tmp_path, token_data):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(PLAN))
    run_dir = tmp_path / "run"
    first = train(run_dir, token_data, plan, 6, "--sync-checkpoint")
    assert first.returncode == 0, first.stderr[-4000:]
    root = run_dir / "checkpoints"
    assert [c.step for c in cf.committed(root)] == [2, 4, 6]

    marker = tmp_path / "code-ran"
    (root / "step-00000006" / ".metadata").write_bytes(b"cposix\nsystem\n(Vtouch " + str(marker).encode()
                                                       + b"\ntR.")
    reseal(root / "step-00000006")
    (root / "step-00000004" / "rank00001.json").write_text("{}")
    reseal(root / "step-00000004")
    assert cf.verify(root / "step-00000006") is None and cf.verify(root / "step-00000004") is None

    resumed = train(run_dir, token_data, plan, 8)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert not marker.exists()
    reasons = {p.name[:13]: (p / "QUARANTINED.txt").read_text() for p in cf.quarantined_checkpoints(root)}
    assert "untrusted checkpoint" in reasons["step-00000006"] and "posix.system" in reasons["step-00000006"]
    assert "failed to load" in reasons["step-00000004"]
    recs = records(run_dir)
    assert [r["resumed_from_step"] for r in recs if r.get("event") == "resume"] == [2]
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 8

    for info in cf.committed(root):  # now every checkpoint is bad
        (info.path / "state.json").write_text("{")
    refused = train(run_dir, token_data, plan, 10)
    assert refused.returncode == 2
    assert "Every checkpoint of the run" in refused.stderr and "--restart-from-scratch" in refused.stderr
    assert "step-00000008" in refused.stderr and not cf.committed(root)
    again = train(run_dir, token_data, plan, 10)  # refused before any worker starts
    assert again.returncode == 2 and "Every checkpoint of the run" in again.stderr and "To fix:" in again.stderr
    assert "Traceback" not in again.stderr

    fresh = train(run_dir, token_data, plan, 10, "--restart-from-scratch")
    assert fresh.returncode == 0, fresh.stderr[-4000:]
    steps = [r["step"] for r in records(run_dir) if "event" not in r]
    assert steps[-10:] == list(range(1, 11))  # the whole run again from step 1
    assert not marker.exists()
