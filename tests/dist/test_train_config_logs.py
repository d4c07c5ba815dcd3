"""A real `bastion train --config run.toml` on 2 processes: the final step is saved although no interval was
asked for, the held-out loss is logged and reported, TensorBoard event files and a profiler trace are written;
running it again is refused (nothing left to train); `--checkpoint-every never` saves nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from helpers.cli import bastion

from bastion.runtime.data import prepare_dataset

pytestmark = [pytest.mark.dist, pytest.mark.timeout(600)]

RUN_TOML = """
model = "tiny"
plan = "plan.json"
data = "data"
steps = 4
run_dir = "run"
seq_len = 64
nproc = 2
[optimizer]
lr = 3e-3
[eval]
every = 2
[logging]
progress = false
tensorboard = true
profile = "2:3"
"""


def test_train_from_a_config_file_with_eval_tensorboard_profile_and_a_final_checkpoint(tmp_path):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    prepare_dataset(sorted((stdlib / "json").glob("*.py")), tmp_path / "data", eval_fraction=0.2)
    (tmp_path / "plan.json").write_text(json.dumps({"dp": 2, "micro_batch": 1, "global_batch": 2,
                                                    "precision": "fp32"}))
    (tmp_path / "run.toml").write_text(RUN_TOML)
    done = bastion("train", "--config", "run.toml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step-")) == ["step-00000004"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["checkpoints"] == [4] and [e["step"] for e in summary["evals"]] == [2, 4]
    assert summary["perplexity"] == pytest.approx(2.718281828459045 ** summary["eval_loss"], rel=1e-9)
    # TensorBoard: the figures of metrics.jsonl under their tags
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(run / "tensorboard"))
    board.Reload()
    tags = set(board.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_s", "perf/mem_gib", "eval/loss",
            "run/restarts"} <= tags
    assert [e.step for e in board.Scalars("train/loss")] == [1, 2, 3, 4]
    assert board.Scalars("eval/loss")[-1].value == pytest.approx(summary["eval_loss"], rel=1e-6)
    # the profiler: one Chrome trace per rank
    traces = sorted((run / "profile").glob("trace-rank*.json"))
    assert len(traces) == 2 and json.loads(traces[0].read_text())["traceEvents"]
    # the report shows the held-out loss and links the logs
    report = bastion("report", "run", "--json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert data["loss"]["eval"][-1]["eval_loss"] == pytest.approx(summary["eval_loss"])
    assert data["logs"]["tensorboard"] == "tensorboard" and len(data["logs"]["profile"]) == 2
    # the same run again: its final checkpoint is at --steps, nothing to train; refused, nothing touched
    before = (run / "metrics.jsonl").read_bytes()
    again = bastion("train", "--config", "run.toml", cwd=tmp_path)
    assert again.returncode == 2 and "already reached --steps 4" in again.stderr and "To fix:" in again.stderr
    assert (run / "metrics.jsonl").read_bytes() == before
    # --checkpoint-every never: not even the final step
    never = bastion("train", "--config", "run.toml", "--run-dir", "run-never", "--checkpoint-every", "never",
                    "--set", "logging.tensorboard=false", "--set", "eval.every=0", cwd=tmp_path)
    assert never.returncode == 0, never.stderr[-4000:]
    assert not list((tmp_path / "run-never" / "checkpoints").glob("step-*"))
    assert not (tmp_path / "run-never" / "tensorboard").exists()
