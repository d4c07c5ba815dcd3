"""`bastion report` from hand-written run directories (written with the runtime's own torch-free writers).

Every timeline below is small enough to check by hand; the numbers in the asserts are worked out in comments.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import bastion.commands.report_cmds  # noqa: F401 - registers `report` (cli.py lists it once the lead adds it)
from bastion.cli import app
from bastion.report import RunDirError, build_report, load_run
from bastion.report.analysis import steady_steps
from bastion.rundir.metrics import log_event
from helpers.report_runs import PLAN, TOKENS_PER_STEP, new_run, step


# ---- steady step time ----------------------------------------------------------------------------------
def test_steady_median_leaves_out_warmup_and_the_first_step_after_each_restart(tmp_path):
    run = new_run(tmp_path)
    log_event(run, "run_start", time=0.0, world_size=2)
    step(run, 1, 1.0, 9.0)    # warm-up: left out
    step(run, 2, 2.0, 0.1)
    step(run, 3, 3.0, 0.2)
    step(run, 4, 4.0, 0.3)
    log_event(run, "restart", time=10.0, attempt=1, resumed_from_step=2)
    step(run, 3, 11.0, 7.0)   # first step of the restarted process: left out
    step(run, 4, 12.0, 0.4)
    log_event(run, "resume", time=20.0, attempt=0, resumed_from_step=4)
    step(run, 5, 21.0, 8.0)   # first step after a resume: left out
    step(run, 6, 22.0, 0.5)
    report = build_report(load_run(run))
    measured = report["measured"]
    # used: 0.1, 0.2, 0.3, 0.4, 0.5 -> median 0.3 (with the three left-out steps it would be 0.4)
    assert measured["step_time_s"] == pytest.approx(0.3)
    assert (measured["steps_used"], measured["steps_left_out_warmup"], measured["steps_left_out_after_restart"]) \
        == (5, 1, 2)
    assert measured["tokens_per_s"] == pytest.approx(TOKENS_PER_STEP / 0.3)
    assert measured["mfu"] == pytest.approx(0.01 / 0.3)
    assert measured["peak_mem_bytes"] == 0.25 * 2**30
    assert "5 steady step(s)" in report["sources"]["measured"]


def test_warmup_steps_is_a_count_of_leading_step_records(tmp_path):
    run = new_run(tmp_path)
    log_event(run, "run_start", time=0.0)
    for number, seconds in enumerate([5.0, 4.0, 1.0, 2.0, 3.0], start=1):
        step(run, number, float(number), seconds)
    records = load_run(run).records
    assert steady_steps(records, 0).median_s == 3.0
    assert steady_steps(records, 2).median_s == 2.0
    assert steady_steps(records, 5).median_s is None


def test_records_of_an_earlier_run_in_the_same_directory_are_ignored(tmp_path):
    run = new_run(tmp_path)
    log_event(run, "run_start", time=0.0)
    step(run, 1, 1.0, 50.0)
    step(run, 2, 2.0, 50.0)
    log_event(run, "run_start", time=100.0)
    step(run, 1, 101.0, 1.0)
    step(run, 2, 102.0, 2.0)
    step(run, 3, 103.0, 4.0)
    report = build_report(load_run(run))
    assert report["measured"]["step_time_s"] == 3.0  # median of 2.0 and 4.0; step 1 is warm-up
    assert report["failures"]["recomputed"]["count"] == 0  # the old run's steps 1-2 were not recomputed


# ---- what failures cost -----------------------------------------------------------------------------------
def test_restart_and_rollback_recomputed_steps_and_goodput(failing_run):
    report = build_report(load_run(failing_run))
    failures = report["failures"]
    # step records 1,2,3 | 3,4 | 3,4,5: the first 3 was redone after the restart, the second 3 and 4 after the
    # rollback (it went back to step 2's checkpoint)
    assert failures["recomputed"] == {"count": 3, "steps": [3, 3, 4],
                                      "by_cause": {"restart": 1, "rollback": 2, "other": 0}}
    assert failures["lost_steps"] == 3 and failures["restarts"] == 1 and failures["rollbacks"] == 1
    assert failures["faults_injected"] == 2
    parts = failures["time_breakdown_s"]
    # wall: 100 -> 115.5 (the last record; no summary.json). productive: the 5 kept steps × 1 s; lost: 3 × 1 s.
    # recovery: the restart counts from the last progress (step 3 ended at 103.2) to the next step's start
    # (111 - 1 = 110): 6.8 s; the rollback from 112.5 to the next step's start (113.5 - 1): 0 s.
    assert parts["wall_s"] == pytest.approx(15.5)
    assert parts["productive_s"] == pytest.approx(5.0)
    assert parts["lost_s"] == pytest.approx(3.0)
    assert parts["checkpoint_stall_s"] == pytest.approx(0.2)
    assert parts["recovery_s"] == pytest.approx(6.8)
    assert parts["other_s"] == pytest.approx(15.5 - 5 - 3 - 0.2 - 6.8)
    assert failures["goodput"] == pytest.approx(5.0 / 15.5, abs=1e-4)
    assert "metrics.jsonl" in report["sources"]["failures"]
    assert failures["checkpoint_saves"] == 1
    # the step after the restart is left out of the step time; the one after the rollback is not (same process)
    assert report["measured"]["steps_left_out_after_restart"] == 1
    assert report["measured"]["steps_used"] == 8 - 1 - 1


def test_predicted_goodput_uses_the_reliability_model(failing_run):
    summary = {"finished": True, "steps": 5, "world_size": 2, "config": {"steps": 5, "resilience": {
        "checkpoint_every": 2, "mtbf_hours": 1.0}}}
    (failing_run / "summary.json").write_text(json.dumps(summary))
    report = build_report(load_run(failing_run))
    predicted = report["failures"]["predicted_goodput"]
    # interval = 2 steps × 1 s; stall = 0.2 s (one save); MTBF 3600 s; restart 0:
    # 2 / 2.2 × (1 - (2/2 + 0.2/2) / 3600)
    assert predicted["goodput"] == pytest.approx(2 / 2.2 * (1 - 1.1 / 3600))
    assert (predicted["interval_s"], predicted["stall_s"], predicted["mtbf_hours"]) == (2.0, 0.2, 1.0)
    assert "--mtbf-hours" in predicted["note"]


def test_a_finished_run_takes_the_runtimes_accounting_from_summary_json(failing_run):
    breakdown = {"wall_s": 20.0, "productive_s": 5.0, "lost_s": 3.0, "checkpoint_stall_s": 0.2,
                 "recovery_s": 6.8, "other_s": 5.0, "goodput": 0.25}
    summary = {"finished": True, "steps": 5, "world_size": 2, "restarts": 1, "rollbacks": 1, "faults_injected": 2,
               "lost_steps": 3, "recovery_s": 6.8, "checkpoint_stall_s": 0.2, "goodput": 0.25,
               "time_breakdown_s": breakdown, "predicted": {"step_time_s": 0.5, "tokens_per_s": 512.0,
                                                            "mfu": 0.02, "memory_bytes": {"total": 2**20}},
               "measured": {"peak_mem_bytes": 2**29, "peak_mem_kind": "process RSS"}}
    (failing_run / "summary.json").write_text(json.dumps(summary))
    report = build_report(load_run(failing_run))
    assert report["failures"]["goodput"] == 0.25 and report["failures"]["time_breakdown_s"] == breakdown
    assert report["sources"]["failures"].startswith("summary.json")
    assert report["state"] == "finished: 5 steps" and report["finished"]
    assert report["predicted"]["step_time_s"] == 0.5
    assert report["measured"]["peak_mem_bytes"] == 2**29  # summary's RSS is above the records' 0.25 GiB


def test_loss_summary_and_nan_events(failing_run):
    loss = build_report(load_run(failing_run))["loss"]
    # kept records: steps 1..5 with losses 5.5, 5.4, 5.3, 5.1, 5.15
    assert (loss["first"], loss["first_step"], loss["last"], loss["last_step"]) == (5.5, 1, 5.15, 5)
    assert (loss["min"], loss["min_step"]) == (5.1, 4)
    assert loss["nan_faults"] == [{"step": 5, "rank": 0}]
    assert loss["rollbacks"] == [{"step": 5, "reason": "gradient norm is nan", "resumed_from_step": 2,
                                  "skipped_sample_ids": [16, 20]}]


def test_timeline_lists_failures_after_the_step_they_followed(failing_run):
    timeline = build_report(load_run(failing_run))["timeline"]
    assert [(e["event"], e["after_step"], e["t_s"]) for e in timeline] == [
        ("run_start", 0, 0.0), ("fault", 3, 3.3), ("restart", 3, 10.0), ("fault", 4, 12.1), ("rollback", 4, 12.5)]


def test_prediction_for_an_unfinished_run_from_plan_and_model(failing_run):
    report = build_report(load_run(failing_run))
    assert report["predicted"] == {} and "--cluster" in report["sources"]["predicted"]
    assert report["state"].startswith("unfinished") and not report["finished"]
    predicted = build_report(load_run(failing_run), cluster="cpu:2")["predicted"]
    assert predicted["step_time_s"] > 0 and predicted["memory_bytes"]["total"] > 0


# ---- files that are missing, empty or cut short ---------------------------------------------------------
def test_a_truncated_last_line_is_skipped_and_counted(failing_run):
    with (failing_run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "loss": 5.0, "step_ti')
    run = load_run(failing_run)
    assert run.unreadable_lines == 1
    assert build_report(run)["steps_completed"] == 5


@pytest.mark.parametrize(("setup", "message"), [
    (lambda d: None, "does not exist"),
    (lambda d: d.write_text("x"), "is a file"),
    (lambda d: d.mkdir(), "not a run directory"),
    (lambda d: (d.mkdir(), PLAN.save(d / "plan.json")), "no metrics yet"),
    (lambda d: (d.mkdir(), log_event(d, "run_start", time=1.0)), "no complete step record"),
    (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text('{"step": 1, "lo')), "did not parse"),
    (lambda d: (d.mkdir(), (d / "summary.json").write_text('{"steps": 3, "fin')), "not valid JSON"),
])
def test_unusable_run_directories_raise_guidance(tmp_path, setup, message):
    run_dir = tmp_path / "run"
    setup(run_dir)
    with pytest.raises(RunDirError, match=message) as info:
        load_run(run_dir)
    assert info.value.fix


def test_cli_errors_exit_2_with_guidance_and_no_traceback(tmp_path):
    code = ("import bastion.commands.report_cmds\nfrom bastion.cli import main\n"
            f"main(['report', {str(tmp_path / 'missing')!r}])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "To fix:" in proc.stderr and "Traceback" not in proc.stderr


# ---- the command ---------------------------------------------------------------------------------------------
def test_cli_prints_the_three_parts_and_json(failing_run):
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(failing_run)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for text in ("predicted vs measured", "where the wall time went", "steps recomputed", "3 (1 after restarts, "
                 "2 after rollbacks)", "goodput measured", "32.26%", "unfinished", "rollback at step 5"):
        assert text in result.output, text
    result = runner.invoke(app, ["report", str(failing_run), "--json"])
    data = json.loads(result.output)
    assert data["failures"]["recomputed"]["count"] == 3
    assert set(data) >= {"predicted", "measured", "failures", "timeline", "loss", "sources", "state"}


def test_report_does_not_import_torch(failing_run):
    code = ("import sys\nimport bastion.commands.report_cmds\nfrom bastion.cli import main\n"
            f"try:\n    main(['report', {str(failing_run)!r}, '--json', '--html', {str(failing_run / 'r.html')!r}])\n"
            "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print('TORCH', 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("TORCH False")


def test_demo_comparison_comes_from_report(capsys):
    from rich.console import Console

    from bastion.commands import demo_cmds
    from bastion.report import comparison_rows, print_comparison

    assert demo_cmds.print_comparison is print_comparison
    predicted = {"step_time_s": 0.5, "tokens_per_s": 1000.0, "mfu": 0.1, "memory_bytes": {"total": 2**20,
                                                                                            "params": 100.0}}
    measured = {"step_time_s": 1.0, "tokens_per_s": 500.0, "mfu": 0.05, "peak_mem_bytes": 2**21,
                "model_state_bytes_by_rank": [{"params": 100, "grads": 0, "optimizer": 0}]}
    rows = {r["figure"]: r for r in comparison_rows(predicted, measured)}
    assert rows["step time"]["ratio"] == 2.0 and rows["MFU"]["ratio"] == 0.5
    assert rows["peak memory per device"]["ratio"] == 2.0 and rows["params (fullest rank)"]["ratio"] == 1.0
    assert rows["grads (fullest rank)"]["ratio"] is None  # no prediction: no ratio, not a crash
    summary = {"predicted": predicted, "measured": measured, "final_loss": 4.25, "steps": 3, "params_sha256": "ab"}
    print_comparison(summary, Console(width=200, force_terminal=False))
    out = capsys.readouterr().out
    assert "final loss 4.2500 after 3 steps" in out and "2.00" in out


def test_nan_values_become_null_in_json(tmp_path):
    run = new_run(tmp_path)
    log_event(run, "run_start", time=0.0)
    step(run, 1, 1.0, 1.0, loss=5.0)
    step(run, 2, 2.0, 1.0, loss=math.nan)
    step(run, 3, 3.0, 1.0, loss=4.0)
    report = build_report(load_run(run))
    assert report["loss"]["non_finite_steps"] == [2]
    assert (report["loss"]["min"], report["loss"]["last"]) == (4.0, 4.0)
    json.dumps(report, allow_nan=False)  # raises if a NaN leaked into the report


# ---- resumed runs, restarts over several launches, committed checkpoints --------------------------------------
def test_a_summary_left_by_an_earlier_process_of_a_resumed_run_is_set_aside(failing_run):
    # the first launch stopped early at step 3 and wrote summary.json at t=105; the restart at 110 is later
    early = {"finished": False, "steps": 3, "world_size": 2, "restarts": 0, "time_breakdown_s": {"wall_s": 5.0},
             "goodput": 0.6, "config": {"steps": 5}}
    path = failing_run / "summary.json"
    path.write_text(json.dumps(early))
    os.utime(path, (105.0, 105.0))
    report = build_report(load_run(failing_run))
    assert report["state"].startswith("unfinished: summary.json set aside") and not report["finished"]
    assert "restart" in report["state"]
    assert report["sources"]["failures"].startswith("metrics.jsonl")  # not the earlier process's accounting
    assert report["failures"]["time_breakdown_s"]["wall_s"] == pytest.approx(15.5)
    # written after every record but ending at step 3 while the records reach step 5: set aside too
    os.utime(path, None)
    run = load_run(failing_run)
    assert run.summary is None and "step 3" in run.stale_summary and "step 5" in run.state()
    # the summary of the run that wrote every record is used
    path.write_text(json.dumps({**early, "finished": True, "steps": 5}))
    run = load_run(failing_run)
    assert run.summary is not None and run.stale_summary is None and run.finished


def test_restarts_are_counted_over_every_launch_of_a_resumed_run(failing_run):
    # a second launch (--resume): its attempt counter starts from 0 again, so its restart is attempt 1 too
    log_event(failing_run, "resume", time=130.0, attempt=0, resumed_from_step=5, world_size=2)
    step(failing_run, 6, 131.0, 1.0)
    log_event(failing_run, "restart", time=140.0, attempt=1, resumed_from_step=5, world_size=2)
    step(failing_run, 6, 141.0, 1.0)
    report = build_report(load_run(failing_run))
    assert report["failures"]["restarts"] == 2


def test_committed_checkpoints_come_from_checkpoint_committed_events(tmp_path):
    run = new_run(tmp_path)
    log_event(run, "run_start", time=0.0, world_size=2)
    for number in range(1, 7):
        step(run, number, float(number), 1.0)
        if number % 2 == 0:  # async saves at 2, 4, 6; 2 and 4 reached disk a step later, 6 never did (killed)
            log_event(run, "checkpoint", time=number + 0.1, step=number, stall_s=0.01, mode="async")
        if number in (3, 5):
            log_event(run, "checkpoint_committed", time=number + 0.2, step=number - 1, committed_unix=number + 0.15)
    report = build_report(load_run(run))
    assert report["failures"]["checkpoint_saves"] == 3
    assert report["failures"]["checkpoints_committed"] == 2
    result = CliRunner().invoke(app, ["report", str(run)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "3 / 2" in result.output


def test_a_run_seeded_with_resume_from_marks_its_resume_at_the_step_it_resumed_from(tmp_path):
    from bastion.report.html import failure_markers

    run = new_run(tmp_path)
    log_event(run, "run_start", time=0.0, world_size=2)
    log_event(run, "resume", time=1.0, attempt=0, resumed_from_step=10, world_size=2)
    for number in range(11, 15):
        step(run, number, float(number), 1.0)
    report = build_report(load_run(run))
    assert report["steps_completed"] == 14 and report["failures"]["recomputed"]["count"] == 0
    assert report["measured"]["steps_left_out_warmup"] == 1
    # at step 10, not 0: a marker at 0 would stretch the charts' step axis over steps this run never ran
    assert [(m.x, m.label) for m in failure_markers(report)] == [(10, "resume → step 10")]
