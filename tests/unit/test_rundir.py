"""The run-directory contract (bastion/rundir/): one home for its file names, records and accounting, torch-free,
and a run directory written before the package existed still reports the same figures."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bastion.report import build_report, load_run
from bastion.rundir import layout
from bastion.rundir.metrics import MetricsWriter, log_event, read_metrics
from bastion.rundir.records import (
    EVENT_KINDS,
    MOE_STEP_FIELDS,
    REPLICA_STEP_FIELDS,
    StepRecord,
    current_run,
    is_step,
)
from bastion.rundir.summary import EVAL_FIELDS, RunSummary, TimeBreakdown, read_summary

SRC = Path(__file__).resolve().parents[2] / "src" / "bastion"
DATA = Path(__file__).parent / "data"
#: written by `bastion train` at main 4c82808 (before bastion/rundir/): tiny, dp 2, 6 steps, sync checkpoints
#: every 2, rank 1 killed at step 4 and one restart; checkpoints kept as their manifests only
OLD_RUN = DATA / "run_before_rundir"


def imported_modules(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` anywhere in the file names (function-level ones too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("package", ["report", "launch", "rundir"])
def test_readers_of_the_run_directory_import_nothing_from_the_runtime(package: str) -> None:
    offenders = {str(path.relative_to(SRC)): sorted(n for n in imported_modules(path)
                                                     if n == "bastion.runtime" or n.startswith("bastion.runtime."))
                 for path in sorted((SRC / package).rglob("*.py"))}
    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_scan_sees_function_level_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from bastion.runtime.recovery import account\n    import bastion.runtime\n")
    assert {"bastion.runtime.recovery", "bastion.runtime"} <= imported_modules(module)


def test_the_package_and_its_readers_do_not_import_torch() -> None:
    modules = [f"bastion.rundir.{p.stem}" for p in sorted((SRC / "rundir").glob("*.py")) if p.stem != "__init__"]
    code = (f"import sys, bastion.rundir, {', '.join(modules)}, bastion.report, bastion.launch.slurm\n"
            "sys.exit('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(SRC.parent)})
    assert done.returncode == 0, done.stderr or "importing them imported torch"


def test_each_run_directory_file_name_is_written_down_once() -> None:
    names = {'"metrics.jsonl"': 0, '"summary.json"': 0, '"model.json"': 0, '"final_params.pt"': 0}
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for name in names:
            names[name] += text.count(name)
    assert names == dict.fromkeys(names, 1)


def logged_event_kinds() -> dict[str, str]:
    """kind -> file, for every `log_event(run_dir, "kind", ...)` in the sources (a conditional kind too)."""
    found = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "log_event" and len(node.args) > 1:
                for part in ast.walk(node.args[1]):
                    if isinstance(part, ast.Constant) and isinstance(part.value, str):
                        found[part.value] = str(path.relative_to(SRC))
    return found


def test_every_event_the_runtime_logs_is_a_registered_kind() -> None:
    logged = logged_event_kinds()
    assert {"run_start", "restart", "resume", "checkpoint", "checkpoint_committed", "rollback", "fault"} <= set(logged)
    assert {kind: where for kind, where in logged.items() if kind not in EVENT_KINDS} == {}


def test_an_unregistered_event_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="register it"):
        log_event(tmp_path, "checkpointed")
    assert not (tmp_path / layout.METRICS_FILE).exists()


def test_a_torn_line_is_counted_and_untimed_lines_are_not_records(tmp_path: Path) -> None:
    writer = MetricsWriter(tmp_path, enabled=True)
    writer.write({"step": 1, "loss": 5.0, "time": 10.0})
    writer.close()
    log_event(tmp_path, "run_start", world_size=1, plan={})
    with (tmp_path / layout.METRICS_FILE).open("a") as out:
        out.write('{"step": 2}\n[1]\n\n{"step": 3, "lo')
    metrics = read_metrics(tmp_path)
    assert [r.get("step", r.get("event")) for r in metrics.records] == [1, "run_start"]
    assert metrics.unreadable == 3   # untimed, not an object, cut short; the blank line is nothing
    assert current_run(metrics.records) == metrics.records[1:]


def test_the_record_types_match_what_the_runtime_wrote() -> None:
    records = read_metrics(OLD_RUN).records
    steps = [r for r in records if is_step(r)]
    # a dense run from before the per-rank section times: every field but those and the mixture-of-experts ones
    assert steps and all(set(r) == set(StepRecord.__annotations__) - set(MOE_STEP_FIELDS)
                         - set(REPLICA_STEP_FIELDS) - {"rank_sections_s", "rank_cpu_sections_s"} for r in steps)
    events = [r for r in records if not is_step(r)]
    assert {r["event"] for r in events} == {"run_start", "checkpoint", "checkpoint_committed", "fault", "restart"}
    for record in events:
        assert set(record) - {"event", "time"} <= set(EVENT_KINDS[record["event"]].fields), record
    summary = read_summary(OLD_RUN)
    # a run without --eval-every, recorded before stragglers and plan changes were
    assert set(summary) == set(RunSummary.__annotations__) - set(EVAL_FIELDS) - {"stragglers", "plan_changes",
                                                                                  "replica_groups"}
    assert set(summary["time_breakdown_s"]) == set(TimeBreakdown.__annotations__)


def figures(report: dict) -> dict:
    """The report's figures; the run panel and the wall-clock spans (added after the recording) describe the run
    and its time line, they are not figures the rundir package computes."""
    # stragglers and plan changes are reported since this run was recorded; it had none
    assert report["failures"].pop("stragglers") == [] and report["failures"].pop("plan_changes") == []
    return {k: v for k, v in report.items() if k not in ("run_dir", "state", "sources", "panel", "wallclock")}


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    # a checkout gives the files its own times: the summary must not look older than the records it covers
    last = max(r["time"] for r in read_metrics(run).records)
    os.utime(run / layout.SUMMARY_FILE, (last + 60, last + 60))
    return run


def test_a_run_directory_from_before_the_package_reports_the_same_figures(old_run: Path) -> None:
    expected = json.loads((DATA / "run_before_rundir.report.json").read_text())
    report = build_report(load_run(old_run))
    assert report["state"] == "finished: 6 steps"
    assert json.loads(json.dumps(figures(report))) == expected["finished"]
    assert report["failures"]["restarts"] == 1 and report["failures"]["checkpoints_on_disk"] == [2, 4, 6]

    # predicted now, by today's predictor: its MFU counts causal attention once since the MFU fix (issue 19), so
    # the recorded `cluster` figures carry that one value (0.0939 under the old convention); the rest is as recorded
    predicted_now = build_report(load_run(old_run), cluster="cpu:2")
    # the one predicted_figures (rundir/predicted.py) also gives the per-stage model state the runtime records
    assert predicted_now["predicted"].pop("model_state_bytes_by_stage") \
        == report["predicted"]["model_state_bytes_by_stage"]
    assert json.loads(json.dumps(figures(predicted_now))) == expected["cluster"]

    (old_run / layout.SUMMARY_FILE).unlink()   # as if it had died before the end: accounting from metrics.jsonl
    unfinished = build_report(load_run(old_run))
    assert unfinished["state"].startswith("unfinished: no summary.json yet")
    assert json.loads(json.dumps(figures(unfinished))) == expected["no_summary"]


def test_a_summary_from_before_the_finished_field_is_final_only_when_it_reached_its_steps(old_run: Path) -> None:
    """`bastion report` and `bastion status` tell it the same way (rundir/summary.py summary_is_final)."""
    path = old_run / layout.SUMMARY_FILE
    summary = json.loads(path.read_text())
    del summary["finished"]
    summary["config"]["steps"] = 8
    times = os.stat(path)
    path.write_text(json.dumps(summary))
    os.utime(path, (times.st_atime, times.st_mtime))
    report = build_report(load_run(old_run))
    assert report["state"] == "stopped early at step 6 of 8 (a restart resumes it)" and not report["finished"]


def test_an_fp8_runs_prediction_is_for_the_torchao_recipe_the_runtime_runs() -> None:
    """summary.json's prediction of an fp8 plan costs the recipe `bastion train --fp8-recipe` runs (torchao's
    tensorwise by default), not the predictor's general default (Transformer Engine's delayed scaling)."""
    from bastion.predict import PredictOptions, estimate
    from bastion.rundir.predicted import predicted_figures
    from bastion.specs import ParallelPlan, load_cluster, load_model

    spec = load_model("llama-1.5b")
    plan = ParallelPlan(micro_batch=8, global_batch=8, precision="fp8")
    step = {recipe: predicted_figures(spec, plan, "h100-sxm:1", spec.seq_len, fp8_recipe=recipe)["step_time_s"]
            for recipe in ("tensorwise", "rowwise", "rowwise_with_gw_hp")}
    assert predicted_figures(spec, plan, "h100-sxm:1", spec.seq_len)["step_time_s"] == step["tensorwise"]
    delayed = estimate(spec, load_cluster("h100-sxm:1"), plan, options=PredictOptions(fp8_recipe="delayed"))
    assert step["tensorwise"] != delayed.step_time_s
    # rowwise scales cost more quantisation traffic than one scale per tensor (predict/data/fp8_recipes.toml);
    # the bf16 weight-gradient GEMM of rowwise_with_gw_hp is costed as rowwise
    assert step["rowwise"] > step["tensorwise"]
    assert step["rowwise_with_gw_hp"] == step["rowwise"]


@pytest.mark.parametrize("compiled", [False, True])
def test_a_runs_prediction_is_what_estimate_predicts_for_bastions_runtime(compiled: bool) -> None:
    """summary.json's prediction is `bastion estimate --software bastion` (`bastion-compiled` for --compile): the
    stack's options in full — FSDP2 on the runtime's schedule with fp32 gradients, the runtime's expert layout —
    and the model states a pipelined ZeRO-2 stage holds through the step (its gradients whole)."""
    from dataclasses import replace

    from bastion.predict import estimate
    from bastion.predict.memory import model_state_bytes
    from bastion.predict.software import software_stack
    from bastion.rundir.predicted import predicted_figures
    from bastion.specs import ParallelPlan, load_cluster, load_model

    spec = load_model("llama3-8b")
    plan = ParallelPlan(dp=4, pp=2, zero_stage=2, micro_batch=1, global_batch=32, precision="bf16")
    figures = predicted_figures(spec, plan, "h100-sxm:8", spec.seq_len, compiled=compiled)
    options = replace(software_stack("bastion-compiled" if compiled else "bastion").options, fp8_recipe="tensorwise")
    expected = estimate(spec, load_cluster("h100-sxm:8"), plan, spec.seq_len, options=options)
    assert figures["step_time_s"] == expected.step_time_s
    assert figures["memory_bytes"]["grads"] == float(expected.memory.grads)
    held = model_state_bytes(spec, plan, 0, runtime_fsdp=True)
    assert figures["model_state_bytes_by_stage"]["0"] == held
    assert held["grads"] > model_state_bytes(spec, plan, 0)["grads"]  # whole, not sharded over dp 4
