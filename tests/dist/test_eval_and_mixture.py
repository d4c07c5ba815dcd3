"""Evaluation on the held-out split and data mixtures under real multi-process gloo runs: the eval loss of every
plan (dp×tp, pp×dp with 1f1b and interleaved-1f1b, zero 3, cp×dp) equals the single-process run's within 1e-5, and so do the training losses of a two-dataset mixture (the
mixture's global sample order does not depend on the plan)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from bastion.runtime.data import prepare_dataset
from bastion.specs.plan import ParallelPlan
from helpers.cli import bastion

pytestmark = [pytest.mark.dist, pytest.mark.timeout(900)]

WORKER = Path(__file__).with_name("equivalence_worker.py")
STEPS = 4
EVAL = {"eval_every": 2, "eval_batches": 2}
PLANS = {
    "dp2_tp2": {"dp": 2, "tp": 2, "micro_batch": 2, "global_batch": 4, "precision": "fp32"},
    "pp2_dp2": {"dp": 2, "pp": 2, "pp_schedule": "1f1b", "micro_batch": 1, "global_batch": 4, "precision": "fp32"},
    "dp4_zero3": {"dp": 4, "zero_stage": 3, "micro_batch": 1, "global_batch": 4, "precision": "fp32"},
    "pp2_dp2_interleaved": {"dp": 2, "pp": 2, "pp_schedule": "interleaved-1f1b", "vpp": 2, "micro_batch": 1,
                            "global_batch": 4, "precision": "fp32"},
    "cp2_dp2": {"dp": 2, "cp": 2, "micro_batch": 2, "global_batch": 4, "precision": "fp32"},
}
SINGLE = {"dp": 1, "micro_batch": 2, "global_batch": 4, "precision": "fp32"}


def _launch(tmp_path: Path, world: int, cases: list[dict], data: str) -> dict[str, dict]:
    from bastion.launch.local import free_port

    for case in cases:
        case["plan"] = str(ParallelPlan(**case.pop("plan_dict")).save(tmp_path / f"{case['name']}.json"))
        case["run_dir"] = str(tmp_path / case["name"])
        case.setdefault("model", "tiny")
    spec = tmp_path / f"cases-{world}.json"
    spec.write_text(json.dumps({"data": data, "steps": STEPS, "cases": cases}))
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={world}",
                           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", str(WORKER), str(spec)],
                          env=env, capture_output=True, text=True, timeout=800)
    assert done.returncode == 0, done.stderr[-6000:]
    return {c["name"]: json.loads((Path(c["run_dir"]) / "summary.json").read_text()) for c in cases}


@pytest.fixture(scope="module")
def held_out_data(tmp_path_factory) -> tuple[Path, Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    out = tmp_path_factory.mktemp("heldout")
    prepare_dataset(sorted((stdlib / "json").glob("*.py")), out / "json", eval_fraction=0.2)
    prepare_dataset(sorted((stdlib / "email").glob("*.py")), out / "email", eval_fraction=0.2, max_bytes=120_000)
    return out / "json", out / "email"


def test_eval_loss_and_mixture_are_the_same_under_every_plan(tmp_path, held_out_data):
    first, second = held_out_data
    mixture = f"{first}=0.7,{second}=0.3"
    options = {"options": {**EVAL, "seq_len": 64}}
    single = _launch(tmp_path, 1, [{"name": "single", "plan_dict": SINGLE, **options},
                                   {"name": "single_mix", "plan_dict": SINGLE, "data": mixture, **options}],
                     str(first))
    parallel = _launch(tmp_path, 4, [{"name": name, "plan_dict": plan, **options} for name, plan in PLANS.items()]
                       + [{"name": "dp2_tp2_mix", "plan_dict": PLANS["dp2_tp2"], "data": mixture, **options}],
                       str(first))
    reference = single["single"]
    assert [e["step"] for e in reference["evals"]] == [2, 4]
    for name in PLANS:
        got = parallel[name]
        assert [e["step"] for e in got["evals"]] == [2, 4]
        for mine, ref in zip(got["evals"], reference["evals"], strict=True):
            assert mine["eval_loss"] == pytest.approx(ref["eval_loss"], abs=1e-5), name
        assert got["losses"] == pytest.approx(reference["losses"], abs=1e-5), name
        assert got["perplexity"] == pytest.approx(reference["perplexity"], rel=1e-4)
    mix, mix_ref = parallel["dp2_tp2_mix"], single["single_mix"]
    assert mix["losses"] == pytest.approx(mix_ref["losses"], abs=1e-5)
    assert mix["eval_loss"] == pytest.approx(mix_ref["eval_loss"], abs=1e-5)
    assert mix_ref["losses"] != pytest.approx(reference["losses"], abs=1e-3)  # the mixture reads other samples
    # eval records in metrics.jsonl (the run-directory contract)
    records = [json.loads(line) for line in (tmp_path / "pp2_dp2" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r.get("event") == "eval"]
    assert [r["step"] for r in evals] == [2, 4] and all(r["samples"] == 8 for r in evals)


def test_resuming_a_mixture_with_other_weights_is_refused_and_keeps_the_checkpoint(tmp_path, held_out_data):
    """A user error at resume (other mixture weights): exit 2 with the fix, no torchrun traceback, and the
    checkpoint is kept (not quarantined as a bad one); the original --data then resumes it."""
    first, second = held_out_data
    plan = str(ParallelPlan(**SINGLE).save(tmp_path / "plan.json"))
    common = ["train", "--model", "tiny", "--plan", plan, "--run-dir", str(tmp_path / "run"), "--nproc", "1"]
    started = bastion(*common, "--data", f"{first}=0.7,{second}=0.3", "--steps", "2")
    assert started.returncode == 0, started.stderr[-3000:]
    changed = bastion(*common, "--data", f"{first}=0.5,{second}=0.5", "--steps", "4")
    assert changed.returncode == 2 and "holds another run" in changed.stderr, changed.stderr[-3000:]
    # told to resume anyway, the checkpoint itself refuses: its sample order came from other data
    forced = bastion(*common, "--data", f"{first}=0.5,{second}=0.5", "--steps", "4", "--resume")
    assert forced.returncode == 2, forced.stderr[-3000:]
    assert "other data than this run's --data" in forced.stderr and "To fix:" in forced.stderr
    assert "Traceback" not in forced.stderr and "ChildFailedError" not in forced.stderr
    assert not (tmp_path / "run" / "checkpoints" / "quarantine").exists()
    resumed = bastion(*common, "--data", f"{first}=0.7,{second}=0.3", "--steps", "4")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
