"""Bad resume requests are refused by `bastion train` before any worker starts, and nothing is written.

Checkpoints here are built directly with checkpoint_files (state.json + a fake tensor file + manifest): the
checks under test read JSON and manifests only, never tensors, so no training run is needed.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bastion.rundir import checkpoints as cf
from bastion.specs.model import load_model
from bastion.specs.plan import ParallelPlan
from helpers.checkpoints import fake_checkpoint
from helpers.cli import run


def snapshot(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    # 5,120 little-endian uint16 ids below the vocabulary of 256 (the pre-start check scans them)
    (out / "tokens.bin").write_bytes(b"".join(i.to_bytes(2, "little") for i in range(256)) * 20)
    (out / "meta.json").write_text(json.dumps({"dtype": "uint16", "num_tokens": 5120, "vocab_size": 256,
                                               "tokenizer": "byte", "documents": 1}))
    return out


@pytest.fixture()
def plan_file(tmp_path) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"dp": 2, "zero_stage": 3, "micro_batch": 1, "global_batch": 2,
                                "precision": "fp32"}))
    return path


def train(capsys: pytest.CaptureFixture[str], dataset: Path, plan: Path, run_dir: Path, *extra: str,
          nproc: int = 2) -> subprocess.CompletedProcess:
    """`bastion train` in this process (each request here is refused before any worker would start, so no
    interpreter of its own is needed): its exit code, stdout and stderr."""
    argv = ["train", "--model", "tiny", "--plan", str(plan), "--data", str(dataset), "--steps", "4", "--run-dir",
            str(run_dir), "--nproc", str(nproc), *extra]
    return subprocess.CompletedProcess(argv, *run(argv, capsys))


def test_resume_from_a_path_without_checkpoint(capsys, tmp_path, dataset, plan_file):
    empty = tmp_path / "old-run"
    (empty / "checkpoints" / cf.temp_dir_name(2)).mkdir(parents=True)  # an unfinished save is not a checkpoint
    before = snapshot(empty)
    result = train(capsys, dataset, plan_file, tmp_path / "new-run", "--resume-from", str(empty))
    assert result.returncode == 2
    assert "no valid checkpoint there" in result.stderr and "To fix:" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(empty) == before and not (tmp_path / "new-run").exists()
    missing = train(capsys, dataset, plan_file, tmp_path / "new-run", "--resume-from", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no such file or directory" in missing.stderr


def test_resume_from_a_corrupt_checkpoint_names_the_damage(capsys, tmp_path, dataset, plan_file):
    old = tmp_path / "old-run"
    path = fake_checkpoint(old, "tiny")
    (path / "__0_0.distcp").write_bytes(b"\1" * 64)
    before = snapshot(old)
    result = train(capsys, dataset, plan_file, tmp_path / "new-run", "--resume-from", str(path))
    assert result.returncode == 2 and "does not match its sha256" in result.stderr
    assert snapshot(old) == before  # reported, not quarantined: it is not this run's checkpoint


def test_checkpoint_of_another_model_is_refused(capsys, tmp_path, dataset, plan_file):
    old = tmp_path / "old-run"
    fake_checkpoint(old, "small")
    before = snapshot(old)
    result = train(capsys, dataset, plan_file, tmp_path / "new-run", "--resume-from", str(old))
    assert result.returncode == 2
    assert "holds model 'small'" in result.stderr and "--model small" in result.stderr
    assert snapshot(old) == before and not (tmp_path / "new-run").exists()
    # the same when the run directory itself holds the other model's checkpoints (a restart with a wrong flag)
    result = train(capsys, dataset, plan_file, old)
    assert result.returncode == 2 and "holds model 'small'" in result.stderr
    assert snapshot(old) == before


def test_plan_that_cannot_hold_the_checkpoint_model_is_refused(capsys, tmp_path, dataset):
    old = tmp_path / "old-run"
    fake_checkpoint(old, "tiny")
    before = snapshot(old)
    plan = tmp_path / "tp3.json"  # tiny has 4 heads: tp = 3 cannot split them
    plan.write_text(json.dumps({"tp": 3, "micro_batch": 1, "global_batch": 1, "precision": "fp32"}))
    result = train(capsys, dataset, plan, tmp_path / "new", "--resume-from", str(old), nproc=3)
    assert result.returncode == 2 and "does not divide the 4 attention heads" in result.stderr
    assert snapshot(old) == before and not (tmp_path / "new").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--checkpoint-every", "often"], "neither a step count nor 'auto'"),
    (["--inject", "kil:step=2"], "Did you mean 'kill'"),
    (["--inject", "kill:rank=5,step=2"], "targets rank 5"),
    (["--inject", "corrupt-latest"], "needs checkpoints"),
])
def test_bad_fault_tolerance_options_are_guidance_errors(capsys, tmp_path, dataset, plan_file, args, message):
    result = train(capsys, dataset, plan_file, tmp_path / "run", *args)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_run_whose_checkpoints_were_all_quarantined_is_refused(capsys, tmp_path, dataset, plan_file):
    from bastion.runtime.resume_source import preflight_resume

    run_dir = tmp_path / "run"
    bad = fake_checkpoint(run_dir, "tiny", step=6)
    cf.quarantine(bad, "untrusted checkpoint: .metadata names posix.system")
    cf.discard_unfinished(run_dir / "checkpoints")  # an unfinished save alone would not count
    before = snapshot(run_dir)
    result = train(capsys, dataset, plan_file, run_dir)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Every checkpoint of the run" in result.stderr and "step-00000006" in result.stderr
    assert "posix.system" in result.stderr and "--restart-from-scratch" in result.stderr
    assert snapshot(run_dir) == before
    spec, plan = load_model("tiny"), ParallelPlan.load(plan_file)
    assert preflight_resume(run_dir, True, None, spec, plan, restart_from_scratch=True) is None
    assert preflight_resume(run_dir, False, None, spec, plan) is None  # --no-resume: a deliberate new start


def test_with_a_key_an_unauthenticated_checkpoint_is_refused(capsys, tmp_path, dataset, plan_file):
    old = tmp_path / "old-run"
    fake_checkpoint(old, "tiny")  # written without a key
    key_file = tmp_path / "ckpt.key"
    key_file.write_text("a key of more than sixteen bytes")
    result = train(capsys, dataset, plan_file, tmp_path / "new-run", "--resume-from", str(old),
                   "--checkpoint-key-file", str(key_file))
    assert result.returncode == 2 and "not authenticated" in result.stderr and "To fix:" in result.stderr
    key_file.write_text("short")
    result = train(capsys, dataset, plan_file, tmp_path / "new-run", "--checkpoint-key-file", str(key_file))
    assert result.returncode == 2 and "at least 16 are needed" in result.stderr
    assert not (tmp_path / "new-run").exists()
