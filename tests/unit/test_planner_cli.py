"""`bastion plan` as a user runs it: JSON shape, --save, the explanation, and guidance errors (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bastion.specs import ParallelPlan
from helpers.cli import bastion


def test_json_is_the_documented_object_best_first_and_save_writes_the_winner(tmp_path: Path) -> None:
    saved = tmp_path / "plan.json"
    out = bastion("plan", "--model", "tiny", "--cluster", "cpu:4", "--global-batch", "8", "--top", "3", "--json",
                  "--save", str(saved))
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data) == {"evaluated", "feasible", "seconds", "objective", "rejected", "plans", "software", "rates"}
    assert data["rates"] == "datasheet: catalog row 'cpu'"
    assert data["objective"] == "time-p90"  # the default: ranked by the upper end of each plan's interval
    assert data["software"] == "bastion"
    assert data["evaluated"] == data["feasible"] + sum(data["rejected"].values())
    assert len(data["plans"]) == 3
    for entry in data["plans"]:
        assert set(entry) == {"plan", "step_time_s", "predicted_p10_s", "predicted_p90_s", "tokens_per_s", "mfu",
                              "memory_gib", "breakdown", "runtime"}
        assert entry["runtime"] == {"executes": True}  # `bastion train` runs every one of them
        assert entry["predicted_p10_s"] < entry["step_time_s"] < entry["predicted_p90_s"]
        assert entry["breakdown"]["time_s"]["step"] == pytest.approx(entry["step_time_s"])
        assert entry["breakdown"]["memory_gib"]["total"] == pytest.approx(entry["memory_gib"])
        assert entry["tokens_per_s"] == pytest.approx(8 * 64 / entry["step_time_s"])
    upper = [p["predicted_p90_s"] for p in data["plans"]]
    assert upper == sorted(upper)
    assert ParallelPlan.load(saved) == ParallelPlan.from_dict(data["plans"][0]["plan"])


def test_plans_the_runtime_does_not_execute_are_marked_in_plan_and_estimate() -> None:
    """Experts split wider than tp without folding (etp 4 with tp 2) are predicted and planned, but `bastion
    train` refuses them:
    both commands say so, in text and JSON, with the fix; estimate says train runs ep folded over tp ranks, with
    etp 1 or 2."""
    pins = ("--model", "tiny-moe", "--cluster", "cpu:8", "--global-batch", "8", "--fix", "tp=2", "--fix", "etp=4",
            "--top", "2")
    data = json.loads(bastion("plan", *pins, "--json").stdout)
    for entry in data["plans"]:
        assert entry["plan"]["etp"] == 4 and entry["runtime"]["executes"] is False
        assert "etp = 4 with tp = 2" in entry["runtime"]["refusal"] and "etp = 1" in entry["runtime"]["fix"]
    text = bastion("plan", *pins)
    assert text.returncode == 0 and "does not execute #1, #2" in text.stdout
    flags = ("-m", "tiny-moe", "-c", "cpu:8", "--dp", "4", "--tp", "2", "--ep", "2", "--global-batch", "8")
    refused = json.loads(bastion("estimate", *flags, "--etp", "4", "--json").stdout)
    assert refused["runtime"]["executes"] is False
    assert refused["assumptions"][0].startswith("`bastion train` does not execute this plan")
    assert json.loads(bastion("estimate", *flags, "--etp", "2", "--json").stdout)["runtime"] == {"executes": True}
    # ep 8 over dp 4 folds the expert groups over the tp ranks: predicted as Megatron-Core lays it out, which is
    # how train runs it, with etp 1 and with the experts split in width too (etp 2)
    folded = json.loads(bastion("estimate", *flags[:8], "--ep", "8", "--global-batch", "8", "--json").stdout)
    assert folded["experts"]["placement"]["folded_over_tp"] and folded["experts"]["layout"] == "megatron"
    assert folded["runtime"] == {"executes": True}
    split = json.loads(bastion("estimate", "-m", "small-moe", *flags[2:4], "--dp", "2", "--tp", "4", "--ep", "4",
                               "--etp", "2", "--global-batch", "8", "--json").stdout)
    assert split["experts"]["placement"]["folded_over_tp"]
    assert split["runtime"] == {"executes": True}


def test_text_output_explains_the_winner_and_counts_rejections() -> None:
    out = bastion("plan", "-m", "tiny", "-c", "cpu:4", "-b", "8", "--top", "2")
    assert out.returncode == 0, out.stderr
    assert "why #1 beats #2" in out.stdout
    assert "best by time-p90" in out.stdout and "p10-p90" in out.stdout
    assert "rejected:" in out.stdout and "tp does not divide heads" in out.stdout


def test_nothing_fits_names_a_computed_way_out_that_really_fits() -> None:
    out = bastion("plan", "-m", "llama2-7b", "-c", "a100-40g:1", "-b", "8", "-s", "4096")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "To fix" in out.stderr and "fits" in out.stderr
    # the suggestion names a GPU count; planning with it must find a plan
    line = next(ln for ln in out.stderr.splitlines() if "--gpus" in ln)
    count = line.split("--gpus ")[1].split(")")[0]
    again = bastion("plan", "-m", "llama2-7b", "-c", "a100-40g:1", "-b", "8", "-s", "4096", "--gpus", count, "--json",
                    "--top", "1")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["feasible"] > 0


def test_no_valid_plan_reports_the_rule_and_the_pin_to_drop() -> None:
    out = bastion("plan", "-m", "tiny", "-c", "cpu:4", "-b", "6", "--fix", "dp=4")
    assert out.returncode == 2
    assert "batch not divisible" in out.stderr
    assert "drop --fix dp=4" in out.stderr


@pytest.mark.parametrize("args,expected", [
    (["--gpus", "8..4"], "--gpus 8..4"),
    (["--gpus", "lots"], "not a device count"),
    (["--objective", "speed"], "Unknown objective"),
    (["--precision", "bf17"], "Did you mean 'bf16'"),
    (["--fix", "tq=2"], "Did you mean 'tp'"),
    (["--fix", "tp"], "FIELD=VALUE"),
    (["--top", "0"], "--top"),
])
def test_bad_input_is_a_guidance_error(args: list[str], expected: str) -> None:
    out = bastion("plan", "-m", "tiny", "-c", "cpu:4", "-b", "8", *args)
    assert out.returncode == 2, out.stdout
    assert expected in out.stderr
    assert "To fix" in out.stderr and "Traceback" not in out.stderr


def test_gpu_range_searches_every_listed_size() -> None:
    def run(gpus: str) -> dict:
        out = bastion("plan", "-m", "tiny", "-c", "cpu:4", "-b", "8", "--gpus", gpus, "--json", "--top", "50")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    ranged, singles = run("2..4"), [run(n) for n in ("2", "3", "4")]
    assert ranged["evaluated"] == sum(s["evaluated"] for s in singles)
    # "feasible" counts predicted plans that fit; each search's step-time bound settles a different share
    assert ranged["evaluated"] == ranged["feasible"] + sum(ranged["rejected"].values())
    # 3 devices run tiny's 4 layers as pp 3: the embedding and the head take a layer's slot each
    assert {p["plan"]["pp"] for p in singles[1]["plans"]} == {3}
    sizes = {p["plan"]["dp"] * p["plan"]["tp"] * p["plan"]["pp"] * p["plan"]["cp"] for p in ranged["plans"]}
    assert sizes <= {2, 3, 4} and 4 in sizes
    best = max(p["tokens_per_s"] for s in singles for p in s["plans"])
    assert ranged["plans"][0]["tokens_per_s"] == pytest.approx(best)


def test_goodput_shows_the_recovery_policies_side_by_side_and_recommends_one() -> None:
    args = ["plan", "--model", "llama2-7b", "--cluster", "h100-sxm:16", "--global-batch", "64", "--seq-len", "4096",
            "--objective", "goodput", "--gpus", "16", "--top", "2"]
    found = json.loads(bastion(*args, "--json").stdout)
    winner = found["plans"][0]["recovery_policies"]
    by_name = {p["policy"]: p for p in winner["policies"]}
    assert list(by_name) == ["requeue", "shrink", "spares", "replica-drop"]
    best = max((p for p in winner["policies"] if p["applicable"]), key=lambda p: p["goodput"])
    assert winner["recommended"] == best["policy"] and 0 < best["goodput"] <= 1
    assert not by_name["spares"]["applicable"] or by_name["spares"]["allocated_nodes"] > 2
    text = bastion(*args).stdout
    line = next(line for line in text.splitlines() if line.startswith("winner's recovery policies"))
    assert f"→ {winner['recommended']}" in line and "requeue " in line and "shrink " in line
    # other objectives leave the policies out
    assert "recovery_policies" not in json.loads(bastion(*args[:-6], "--gpus", "16", "--json").stdout)["plans"][0]
