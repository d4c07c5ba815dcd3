"""Resume a context-parallel run on other layouts: one 6-step run that changes plan twice.

cp2 × dp2 ZeRO 3 (4 processes) → cp2 × tp2 with sequence parallelism (4) → dp2 ZeRO 2 without cp (2),
checkpointing and stopping every 2 steps; DCP reshards the model and optimizer at each change (the ZeRO shards of
the first layout are spread over dp × cp). Against an uninterrupted single-process run: every step's loss and the
final weights and Adam moments agree to fp32 round-off, and no sample is skipped or repeated.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_resume_reshard import bastion, step_records

pytestmark = [pytest.mark.dist, pytest.mark.timeout(900)]

STEPS = 6
GLOBAL_BATCH = 8
BASE = {"micro_batch": 2, "global_batch": GLOBAL_BATCH, "precision": "fp32"}
SEGMENTS = [  # (plan, processes, stop after step)
    ({"cp": 2, "dp": 2, "zero_stage": 3, "micro_batch": 1}, 4, 2),
    ({"cp": 2, "tp": 2, "sequence_parallel": True}, 4, 4),
    ({"dp": 2, "zero_stage": 2}, 2, 0),
]


def train(run_dir: Path, data: Path, plan: dict, nproc: int, *extra: str) -> None:
    plan_file = run_dir.parent / f"plan-{run_dir.name}-{len(list(run_dir.parent.glob('plan-*')))}.json"
    plan_file.write_text(json.dumps({**BASE, **plan}))
    result = bastion("train", "--model", "tiny", "--plan", str(plan_file), "--data", str(data), "--steps",
                     str(STEPS), "--run-dir", str(run_dir), "--nproc", str(nproc), "--no-progress",
                     "--checkpoint-every", "2", "--sync-checkpoint", *extra)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


def final_state(run_dir: Path) -> dict:
    """Model weights and Adam moments of the last checkpoint, loaded through DCP into plain tensors."""
    import torch
    import torch.distributed.checkpoint as dcp

    path = run_dir / "checkpoints" / f"step-{STEPS:08d}"
    metadata = dcp.FileSystemReader(str(path)).read_metadata()
    wanted = {k: torch.empty(m.size, dtype=m.properties.dtype)
              for k, m in metadata.state_dict_metadata.items()
              if k.startswith("model.") or k.endswith((".exp_avg", ".exp_avg_sq"))}
    dcp.load(wanted, checkpoint_id=str(path), no_dist=True)
    return wanted


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("reshard-cp")
    data = root / "data"
    assert bastion("data", "prepare", str(Path(json.__file__).parent), "--out", str(data)).returncode == 0
    reference = root / "reference"
    reference.mkdir()
    train(reference, data, {}, 1)
    switched = root / "switched"
    switched.mkdir()
    for plan, nproc, stop in SEGMENTS:
        train(switched, data, plan, nproc, *(["--stop-after-step", str(stop)] if stop else []))
    return reference, switched


def test_cp_run_resumed_on_other_layouts_where_it_stopped(runs):
    _, switched = runs
    events = [json.loads(line) for line in (switched / "metrics.jsonl").read_text().splitlines()]
    resumes = [e for e in events if e.get("event") == "resume"]
    assert [r["resumed_from_step"] for r in resumes] == [2, 4]
    assert [(r["world_size"], r["plan"]["cp"], r["plan"]["tp"], r["plan"]["dp"]) for r in resumes] == [
        (4, 2, 2, 1), (2, 1, 1, 2)]
    recs = step_records(switched)
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))
    assert [i for r in recs for i in range(*r["sample_ids"])] == list(range(STEPS * GLOBAL_BATCH))


def test_cp_losses_weights_and_optimizer_state_carry_over(runs):
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
