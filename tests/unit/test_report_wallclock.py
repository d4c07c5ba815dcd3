"""The report's wall-clock timeline spans and run panel, on real runs (tests/unit/data/run_clean, run_faults: see
test_report_browser.py), and `bastion report` with several run directories."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from bastion.cli import app
from bastion.report import build_report, load_run
from bastion.rundir.records import current_run

DATA = Path(__file__).parent / "data"


def spans(name: str) -> dict[str, list[dict]]:
    report = build_report(load_run(DATA / name))
    out: dict[str, list[dict]] = {}
    for span in report["wallclock"]:
        out.setdefault(span["row"], []).append(span)
    return out


def test_a_killed_and_rolled_back_run_shows_redone_steps_recovery_and_background_writes():
    rows = spans("run_faults")
    records = current_run(load_run(DATA / "run_faults").records)
    t0 = min(r["time"] for r in records)
    kill = next(r for r in records if r.get("fault") == "kill")
    restart = next(r for r in records if r.get("event") == "restart")
    # the kill at step 5 loses step 4 (its checkpoint never committed: resumed from 2, so 3 and 4 are redone);
    # the NaN at step 9 is refused before it is recorded, so nothing is redone for it
    assert [s["label"].split(":")[0] for s in rows["steps redone"]] == ["step 3 (redone later)",
                                                                        "step 4 (redone later)"]
    first, second = rows["recovery"]
    assert first["start_s"] == round(kill["time"] - t0, 4) and first["end_s"] > restart["time"] - t0
    assert "restart" in first["label"] and "rollback" in second["label"]
    # every background write ends at its commit, after the loop went on; the save of step 4 cut short by the kill
    # has none (the step 4 saved again after the restart is another save)
    commits = sorted(round(r["time"] - t0, 4) for r in records if r.get("event") == "checkpoint_committed")
    assert sorted(s["end_s"] for s in rows["checkpoint write"]) == commits
    assert len(rows["checkpoint stall"]) == sum(1 for r in records if r.get("event") in ("checkpoint",
                                                                                       "checkpoint_wait"))
    assert [s["label"].split(" ")[0] for s in rows["events"]] == ["fault", "restart", "fault", "rollback"]


def test_a_clean_run_has_only_steps_and_checkpoints_and_says_its_bf16_plan_ran_in_fp32():
    assert set(spans("run_clean")) == {"steps kept", "checkpoint stall", "checkpoint write"}
    panel = build_report(load_run(DATA / "run_clean"))["panel"]
    assert panel["precision"] == {"plan": "bf16", "run": "fp32",
                                  "note": "plan precision bf16: running fp32 on CPU (bitwise-comparable runs)"}
    rows = dict(panel["rows"])
    assert rows["tokens seen"].startswith("3,072 in 12 kept steps of 256 tokens")  # 12 × 4 sequences × 64
    assert panel["config_source"] == "run_config.json" and panel["config"]["train"]["seed"] == 0


def test_several_run_directories_make_one_comparison(tmp_path):
    page = tmp_path / "cmp.html"
    result = CliRunner().invoke(app, ["report", str(DATA / "run_clean"), str(DATA / "run_faults"), "--json",
                                      "--html", str(page)])
    assert result.exit_code == 0, result.output
    reports = json.loads(result.output)
    assert [Path(r["run_dir"]).name for r in reports] == ["run_clean", "run_faults"]
    text = page.read_text()
    assert "2 runs compared" in text and "timeline: run_clean" in text and "timeline: run_faults" in text
