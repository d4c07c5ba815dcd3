"""Resume on other plans: one 8-step run that changes plan (and world size) three times.

FSDP dp4 (4 processes) → TP2 (2) → DP2 (2) → PP2 (2), checkpointing and stopping every 2 steps; DCP reshards the
model and optimizer at each change. Against an uninterrupted single-process run: every step's loss and the final
weights and Adam moments agree to fp32 round-off, and the global sample ids of the 8 kept steps are exactly
0..8·G−1 — none skipped, none repeated.
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
GLOBAL_BATCH = 8
BASE = {"micro_batch": 2, "global_batch": GLOBAL_BATCH, "precision": "fp32"}
SEGMENTS = [  # (plan, processes, stop after step)
    ({"dp": 4, "zero_stage": 3, "micro_batch": 1}, 4, 2),
    ({"tp": 2, "sequence_parallel": True}, 2, 4),
    ({"dp": 2, "zero_stage": 2}, 2, 6),
    ({"pp": 2, "pp_schedule": "1f1b"}, 2, 0),
]


def bastion(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "bastion", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def train(run_dir: Path, data: Path, plan: dict, nproc: int, *extra: str, steps: int = STEPS,
          model: str = "tiny") -> None:
    plan_file = run_dir.parent / f"plan-{run_dir.name}-{len(list(run_dir.parent.glob('plan-*')))}.json"
    plan_file.write_text(json.dumps({**BASE, **plan}))
    result = bastion("train", "--model", model, "--plan", str(plan_file), "--data", str(data), "--steps",
                     str(steps), "--run-dir", str(run_dir), "--nproc", str(nproc), "--no-progress",
                     "--checkpoint-every", "2", "--sync-checkpoint", *extra)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


def step_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "event" not in r]


def final_state(run_dir: Path, steps: int = STEPS) -> dict:
    """Model weights and Adam moments of the last checkpoint, loaded through DCP into plain tensors."""
    import torch
    import torch.distributed.checkpoint as dcp

    path = run_dir / "checkpoints" / f"step-{steps:08d}"
    metadata = dcp.FileSystemReader(str(path)).read_metadata()
    wanted = {k: torch.empty(m.size, dtype=m.properties.dtype)
              for k, m in metadata.state_dict_metadata.items()
              if k.startswith("model.") or k.endswith((".exp_avg", ".exp_avg_sq"))}
    dcp.load(wanted, checkpoint_id=str(path), no_dist=True)
    return wanted


def reference_and_switched(root: Path, segments: list, steps: int = STEPS, model: str = "tiny"
                           ) -> tuple[Path, Path]:
    """An uninterrupted single-process run, and one that runs `segments` (plan, processes, stop after step) in
    turn in the same run directory, each resuming where the last stopped."""
    data = root / "data"
    assert bastion("data", "prepare", str(Path(json.__file__).parent), "--out", str(data)).returncode == 0
    reference = root / "reference"
    reference.mkdir()
    train(reference, data, {}, 1, steps=steps, model=model)
    switched = root / "switched"
    switched.mkdir()
    for plan, nproc, stop in segments:
        train(switched, data, plan, nproc, *(["--stop-after-step", str(stop)] if stop else []), steps=steps,
              model=model)
    return reference, switched


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    return reference_and_switched(tmp_path_factory.mktemp("reshard"), SEGMENTS)


def test_every_plan_change_resumed_where_the_last_stopped(runs):
    _, switched = runs
    events = [json.loads(line) for line in (switched / "metrics.jsonl").read_text().splitlines()]
    resumes = [e for e in events if e.get("event") == "resume"]
    assert [r["resumed_from_step"] for r in resumes] == [2, 4, 6]
    assert [(r["world_size"], r["plan"]["tp"], r["plan"]["dp"], r["plan"]["pp"]) for r in resumes] == [
        (2, 2, 1, 1), (2, 1, 2, 1), (2, 1, 1, 2)]
    summary = json.loads((switched / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["restarts"] == 0 and summary["lost_steps"] == 0


def test_sample_ids_across_plan_changes_none_skipped_none_repeated(runs):
    _, switched = runs
    recs = step_records(switched)
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))
    seen = [i for r in recs for i in range(*r["sample_ids"])]
    assert seen == list(range(STEPS * GLOBAL_BATCH))


def test_losses_weights_and_optimizer_state_carry_over(runs):
    import torch

    reference, switched = runs
    ref_losses = [r["loss"] for r in step_records(reference)]
    got_losses = [r["loss"] for r in step_records(switched)]
    assert got_losses == pytest.approx(ref_losses, abs=1e-5)
    expected, got = final_state(reference), final_state(switched)
    assert sorted(expected) == sorted(got)
    assert any(k.endswith("exp_avg_sq") for k in got)
    for key, tensor in expected.items():
        torch.testing.assert_close(got[key], tensor, rtol=1e-4, atol=1e-5, msg=key)
