"""A demanding user's mistakes, one per test: each must end in a short guidance message on stderr, exit code 2,
no traceback, nothing on stdout (so `--json` output stays clean), and nothing half-written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from bastion.predict.validate import PUBLIC_CASES
from helpers.checkpoints import fake_checkpoint
from helpers.cli import run, user_error

CaptureFixture = pytest.CaptureFixture[str]


ESTIMATE = ["estimate", "--model", "llama3-70b", "--cluster", "h100-sxm:1024"]


# ---- estimate: impossible flag values ----------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--tp", "--pp", "--cp"])
def test_estimate_zero_degree_is_a_guidance_error(flag: str, capsys: CaptureFixture) -> None:
    # used to divide by zero (tp·pp·cp = 0) with a traceback
    user_error([*ESTIMATE, flag, "0", "--json"], capsys, f"{flag} must be >= 1, got 0")


def test_estimate_negative_tp_names_tp_not_dp(capsys: CaptureFixture) -> None:
    # used to say "Plan field 'dp' must be >= 1, got -512" for --tp -2
    user_error([*ESTIMATE, "--tp", "-2"], capsys, "--tp must be >= 1, got -2")


@pytest.mark.parametrize("value", ["0", "-5"])
def test_estimate_seq_len_must_be_positive(value: str, capsys: CaptureFixture) -> None:
    # --seq-len 0 used to fall back silently to the model's 8192
    user_error([*ESTIMATE, "--seq-len", value], capsys, f"--seq-len must be >= 1, got {value}")


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf"])
def test_estimate_token_budget_must_be_positive_and_finite(value: str, capsys: CaptureFixture) -> None:
    # --tokens -1 used to print a negative time to train (and "tokens": -1.0 in --json)
    user_error([*ESTIMATE, "--tokens", value, "--json"], capsys, "--tokens must be", "To fix: give the token budget")


@pytest.mark.parametrize(("flag", "value", "suggestion"),
                         [("--schedule", "1fb1", "'1f1b'"), ("--recompute", "ful", "'full'"),
                          ("--precision", "bf61", "'bf16'")])
def test_estimate_typo_gets_did_you_mean(flag: str, value: str, suggestion: str, capsys: CaptureFixture) -> None:
    user_error([*ESTIMATE, flag, value], capsys, f"Did you mean {suggestion}?")


# ---- spec files: paths that are directories, empty files ----------------------------------------------
@pytest.mark.parametrize("option", ["--plan", "--model", "--cluster"])
def test_a_directory_instead_of_a_spec_file(option: str, tmp_path: Path, capsys: CaptureFixture) -> None:
    # used to end in IsADirectoryError with a traceback
    given = {"--model": "small", "--cluster": "cpu:4", option: str(tmp_path)}
    argv = ["estimate"] + [item for pair in given.items() for item in pair]
    user_error(argv, capsys, f"{tmp_path} is a directory")


@pytest.mark.parametrize(("name", "text"), [("plan.json", "{}"), ("plan.toml", ""), ("plan.toml", "# nothing\n")])
def test_an_empty_plan_file_is_refused(name: str, text: str, tmp_path: Path, capsys: CaptureFixture) -> None:
    # an empty plan used to become the all-defaults plan (dp 1, batch 1): `bastion train` ran it on 1 process
    path = tmp_path / name
    path.write_text(text)
    user_error(["estimate", "--model", "small", "--cluster", "cpu:4", "--plan", str(path)], capsys,
               "is empty: it holds no fields")


def test_a_missing_plan_file_says_how_to_make_one(tmp_path: Path, capsys: CaptureFixture) -> None:
    msg = user_error(["estimate", "--model", "small", "--cluster", "cpu:4", "--plan", str(tmp_path / "p.json")],
                     capsys, "File not found", "bastion plan ... --save")
    assert "preset" not in msg  # plans have no presets


# ---- model files: values that used to be accepted ------------------------------------------------------
MODEL = "num_layers = 4\nhidden_size = 256\nnum_heads = 4\nffn_hidden_size = 1024\nvocab_size = 1000\n"


@pytest.mark.parametrize(("extra", "expected"), [
    ("num_kv_heads = -1\n", "num_kv_heads must be >= 0, got -1"),
    ("head_dim = -2\n", "head_dim must be >= 0, got -2"),
    ("num_experts = 8\n", "needs 1 <= top_k <= 8, got top_k = 0"),
    ("num_experts = 4\ntop_k = 5\n", "needs 1 <= top_k <= 4"),
])
def test_model_file_impossible_values(extra: str, expected: str, tmp_path: Path, capsys: CaptureFixture) -> None:
    path = tmp_path / "m.toml"
    path.write_text(MODEL + extra)
    user_error(["estimate", "--model", str(path), "--cluster", "h100-sxm:8"], capsys, expected)


def test_model_heads_not_dividing_hidden_names_the_cause(tmp_path: Path, capsys: CaptureFixture) -> None:
    # used to say "RoPE needs an even head_dim, got 83" with no fix
    path = tmp_path / "m.toml"
    path.write_text(MODEL.replace("hidden_size = 256", "hidden_size = 250").replace("num_heads = 4", "num_heads = 3"))
    user_error(["estimate", "--model", str(path), "--cluster", "h100-sxm:8"], capsys,
               "hidden_size 250 is not divisible by num_heads 3", "set head_dim")


# ---- cluster specs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("count", ["-8", "1.5", "many"])
def test_cluster_shorthand_bad_count(count: str, capsys: CaptureFixture) -> None:
    # used to say "Unknown cluster 'h100-sxm:-8'. Did you mean 'h100-sxm'?"
    user_error(["estimate", "--model", "small", "--cluster", f"h100-sxm:{count}"], capsys,
               f"'{count}' is not a device count")


CLUSTER = 'accelerator = "h100-sxm"\nnum_nodes = 2\ngpus_per_node = 8\n'


@pytest.mark.parametrize(("network", "expected"), [
    ("scale_out_bw_gbs = 0\n", "bandwidths must be positive"),  # used to divide by zero with a traceback
    ("scale_up_latency_us = -5\n", "latencies must be >= 0"),
])
def test_cluster_file_bad_network(network: str, expected: str, tmp_path: Path, capsys: CaptureFixture) -> None:
    path = tmp_path / "c.toml"
    path.write_text(CLUSTER + "[network]\n" + network)
    user_error(["estimate", "--model", "small", "--cluster", str(path), "--json"], capsys, expected)


def test_cluster_file_missing_field_message_keeps_the_table_name(tmp_path: Path, capsys: CaptureFixture) -> None:
    # the fix used to read "optionally a  table" (the console ate "[network]" as markup)
    path = tmp_path / "c.toml"
    path.write_text('accelerator = "h100-sxm"\nnum_nodes = 2\n')
    user_error(["estimate", "--model", "small", "--cluster", str(path)], capsys,
               "missing 'gpus_per_node'", "optionally a network table")


# ---- validate: case files ----------------------------------------------------------------------------
def _case_file(tmp_path: Path, **changes: str) -> Path:
    with PUBLIC_CASES.open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = [next(reader), next(reader)]
        header = reader.fieldnames
    rows[0].update(changes)
    path = tmp_path / "cases.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize(("changes", "reason"), [
    ({"iteration_time_s": "nan"}, "iteration_time_s = 'nan' is not a finite number"),  # used to print NaN into --json (invalid JSON)
    ({"iteration_time_s": "inf"}, "iteration_time_s = 'inf' is not a finite number"),
    ({"iteration_time_s": "-3"}, "iteration_time_s = -3 is not a positive time"),
    ({"num_gpus": "-32"}, "num_gpus = -32 is not a positive device count"),  # used to abort the whole file
    ({"num_gpus": "0"}, "num_gpus = 0 is not a positive device count"),  # used to divide by zero
    ({"tp": "eight"}, "tp = 'eight' is not a number"),
])
def test_validate_bad_row_is_skipped_with_its_reason(changes: dict[str, str], reason: str, tmp_path: Path,
                                                      capsys: CaptureFixture) -> None:
    path = _case_file(tmp_path, **changes)
    code, out, err = run(["validate", str(path), "--json"], capsys)
    assert code == 0, err
    data = json.loads(out, parse_constant=lambda name: pytest.fail(f"{name} in --json output"))
    assert data["summary"]["predicted"] == 1
    assert data["skipped"] == [{"case_id": "R0001", "reason": reason}]


def test_validate_directory(tmp_path: Path, capsys: CaptureFixture) -> None:
    user_error(["validate", str(tmp_path), "--json"], capsys, "is a directory, not a case file")


# ---- plan ---------------------------------------------------------------------------------------------
PLAN = ["plan", "--model", "small", "--cluster", "cpu:4", "--global-batch", "8"]


@pytest.mark.parametrize(("pin", "expected"), [
    ("tp=0", "--fix tp=0: tp must be >= 1"),
    ("pp_schedule=1fb1", "Did you mean '1f1b'?"),
    ("zero_stage=4", "--fix zero_stage=4 is not a possible value"),
    ("recompute=ful", "Did you mean 'full'?"),
])
def test_plan_impossible_pin_is_named(pin: str, expected: str, capsys: CaptureFixture) -> None:
    # used to search an empty space and answer "No valid plan ... Rejected: ." with a "drop --fix" advice
    user_error([*PLAN, "--fix", pin, "--json"], capsys, expected)


def test_plan_pin_that_excludes_everything_says_so(capsys: CaptureFixture) -> None:
    msg = user_error([*PLAN, "--fix", "tp=64"], capsys, "--fix tp=64 excludes every plan", "drop --fix tp=64")
    assert "Rejected: ." not in msg


@pytest.mark.parametrize("name", ["plan.yaml", "plan", "adir"])
def test_plan_save_path_is_checked_before_the_search(name: str, tmp_path: Path, capsys: CaptureFixture) -> None:
    # plan.yaml used to be written as JSON that `--plan plan.yaml` could not read back (parsed as TOML);
    # a directory used to raise IsADirectoryError after the whole search
    target = tmp_path / name
    if name == "adir":
        target = tmp_path / "adir.json"
        target.mkdir()
    user_error([*PLAN, "--save", str(target)], capsys, "Cannot save")
    assert sorted(p.name for p in tmp_path.iterdir()) == (["adir.json"] if name == "adir" else [])


def test_plan_save_round_trips_and_leaves_no_temporary_file(tmp_path: Path, capsys: CaptureFixture) -> None:
    from bastion.specs.plan import ParallelPlan

    target = tmp_path / "sub" / "plan.toml"
    code, out, _ = run([*PLAN, "--save", str(target), "--json"], capsys)
    assert code == 0
    assert ParallelPlan.load(target).to_dict() == json.loads(out)["plans"][0]["plan"]
    assert [p.name for p in target.parent.iterdir()] == ["plan.toml"]


# ---- cost ---------------------------------------------------------------------------------------------
COST = ["cost", "--model", "llama3-8b", "--cluster", "h100-sxm:64", "--tokens", "1e12", "--global-batch", "512"]


@pytest.mark.parametrize(("extra", "expected"), [
    (["--mtbf-hours", "-5"], "--mtbf-hours must be > 0, got -5."),  # used to say "got -18000.0" (seconds)
    (["--capex-per-gpu", "-1"], "--capex-per-gpu must be >= 0, got -1"),  # used to price owned GPUs negative
    (["--seq-len", "0"], "--seq-len must be >= 1, got 0"),  # used to fall back to the model's
    (["--pue", "0.5"], "--pue must be >= 1, got 0.5"),
    (["--years", "0"], "--years must be > 0, got 0"),
    (["--electricity", "-1"], "--electricity must be >= 0, got -1"),
    (["--electricity", "inf"], "--electricity must be finite, got inf"),  # used to print "Infinity" in --json
    (["--mtbf-hours", "0"], "To fix: give the job's mean time between failures"),  # used to have no "To fix:"
])
def test_cost_impossible_values(extra: list[str], expected: str, capsys: CaptureFixture) -> None:
    user_error([*COST, *extra, "--json"], capsys, expected)


@pytest.mark.parametrize("tokens", ["nan", "inf"])
def test_cost_token_budget_must_be_finite(tokens: str, capsys: CaptureFixture) -> None:
    # used to print "nan tokens ... wall nan h" (and NaN in --json)
    argv = list(COST)
    argv[argv.index("--tokens") + 1] = tokens
    user_error([*argv, "--json"], capsys, "--tokens must be", "To fix: give the token budget")


def test_cost_plan_and_global_batch_conflict(tmp_path: Path, capsys: CaptureFixture) -> None:
    from bastion.specs.plan import ParallelPlan

    plan = ParallelPlan(dp=64, global_batch=512).save(tmp_path / "plan.json")
    user_error([*COST, "--plan", str(plan)], capsys, "--plan and --global-batch were both given")


# ---- data prepare -------------------------------------------------------------------------------------
@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    from bastion.runtime.data import prepare_dataset

    text = tmp_path / "text.txt"
    text.write_text("some text to train on\n" * 400)
    out = tmp_path / "data"
    prepare_dataset([text], out)
    return out


def _snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


@pytest.mark.parametrize("max_mb", ["0", "-1"])
def test_data_prepare_max_mb_must_be_positive(max_mb: str, dataset: Path, tmp_path: Path,
                                              capsys: CaptureFixture) -> None:
    # --max-mb 0 used to mean "no limit"; --max-mb -1 overwrote the dataset with 0 tokens
    before = _snapshot(dataset)
    user_error(["data", "prepare", str(tmp_path / "text.txt"), "--out", str(dataset), "--max-mb", max_mb], capsys,
               "--max-mb must be > 0")
    assert _snapshot(dataset) == before


def test_data_prepare_empty_text_keeps_the_old_dataset(dataset: Path, tmp_path: Path,
                                                       capsys: CaptureFixture) -> None:
    # used to replace the dataset with a 0-token one and exit 0
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    before = _snapshot(dataset)
    user_error(["data", "prepare", str(empty), "--out", str(dataset), "--json"], capsys, "hold no text")
    assert _snapshot(dataset) == before


def test_data_prepare_interrupted_keeps_the_old_dataset(dataset: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from bastion.runtime import data as data_module

    def interrupted(tokenizer, document):
        raise KeyboardInterrupt

    before = _snapshot(dataset)
    monkeypatch.setattr(data_module, "encode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        data_module.prepare_dataset([tmp_path / "text.txt"], dataset)
    assert _snapshot(dataset) == before  # no half-written tokens.bin, no temporary files left


@pytest.mark.parametrize(("option", "expected"), [("--out", "is a file, not a directory"),
                                                  ("--tokenizer", "Cannot read")])
def test_data_prepare_bad_paths(option: str, expected: str, tmp_path: Path, capsys: CaptureFixture) -> None:
    text = tmp_path / "text.txt"
    text.write_text("hello\n")
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": "1.0"}')  # JSON, but not a tokenizer: used to raise a bare Exception
    argv = ["data", "prepare", str(text), "--out", str(tmp_path / "out")]
    argv = argv[:-2] + ["--out", str(bad)] if option == "--out" else argv + ["--tokenizer", str(bad)]
    user_error(argv, capsys, expected)


# ---- train and launch: refused before any process starts ----------------------------------------------
def _plan(tmp_path: Path, **fields: object) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"dp": 2, "global_batch": 2, "precision": "fp32", **fields}))
    return path


def _train(tmp_path: Path, dataset: Path, *extra: str) -> list[str]:
    return ["train", "--model", "tiny", "--plan", str(_plan(tmp_path)), "--data", str(dataset), "--steps", "2",
            "--run-dir", str(tmp_path / "run"), *extra]


@pytest.mark.parametrize(("extra", "expected"), [
    (["--nproc", "0"], "--nproc must be >= 1, got 0"),
    (["--seq-len", "0"], "--seq-len must be >= 1, got 0"),  # used to mean the model's length
    (["--lr", "-1"], "--lr must be a positive learning rate"),  # used to crash every worker
    (["--lr", "nan"], "--lr must be a positive learning rate"),
    (["--max-restarts", "-1"], "--max-restarts must be >= 0"),  # used to be an AssertionError in torchrun
    (["--cluster", "h100-sxmm:4"], "Did you mean 'h100-sxm'?"),  # used to be ignored (no prediction)
])
def test_train_flag_values(extra: list[str], expected: str, tmp_path: Path, dataset: Path,
                           capsys: CaptureFixture) -> None:
    user_error(_train(tmp_path, dataset, *extra), capsys, expected)
    assert not (tmp_path / "run").exists()


def test_train_run_dir_that_is_a_file(tmp_path: Path, dataset: Path, capsys: CaptureFixture) -> None:
    argv = _train(tmp_path, dataset)
    (tmp_path / "run").write_text("not a directory")
    user_error(argv, capsys, "is a file, not a directory")


def test_train_in_another_models_run_dir(tmp_path: Path, dataset: Path, capsys: CaptureFixture) -> None:
    fake_checkpoint(tmp_path / "run", "small")
    msg = user_error(_train(tmp_path, dataset), capsys, "holds model 'small', but this run builds 'tiny'",
                     "give a new --run-dir")
    assert "without --resume-from" not in msg  # --resume-from was not given


def test_train_no_resume_over_existing_checkpoints(tmp_path: Path, dataset: Path, capsys: CaptureFixture) -> None:
    # used to start N workers that failed at the first save (or deleted the old run's checkpoints by retention)
    checkpoint = fake_checkpoint(tmp_path / "run", "tiny")
    user_error(_train(tmp_path, dataset, "--no-resume"), capsys, "--no-resume, but", "1 checkpoint(s)")
    assert checkpoint.is_dir()


def _launch(tmp_path: Path, dataset: Path, *extra: str) -> list[str]:
    return ["launch", "--on", "slurm", "--device", "cpu", "--model", "tiny", "--plan", str(_plan(tmp_path)),
            "--data", str(dataset), "--run-dir", str(tmp_path / "run"), "--steps", "2", "--dry-run", *extra]


@pytest.mark.parametrize(("extra", "expected"), [
    (["--seq-len", "0"], "--seq-len must be >= 1"),  # the job's workers used to get --seq-len 0
    (["--max-restarts", "-1"], "--max-restarts must be >= 0"),  # used to write torchrun --max-restarts=-1
])
def test_launch_flag_values(extra: list[str], expected: str, tmp_path: Path, dataset: Path,
                            capsys: CaptureFixture) -> None:
    user_error(_launch(tmp_path, dataset, *extra), capsys, expected)


def test_launch_checks_the_dataset_and_the_run_dir_before_writing_a_job(tmp_path: Path, dataset: Path,
                                                                       capsys: CaptureFixture) -> None:
    not_data = tmp_path / "not-data"
    not_data.mkdir()
    user_error(_launch(tmp_path, not_data), capsys, "is not a bastion token dataset")
    fake_checkpoint(tmp_path / "run", "small")
    user_error(_launch(tmp_path, dataset), capsys, "holds model 'small', but this run builds 'tiny'")
    code, out, _ = run(_launch(tmp_path, dataset, "--model", "small", "--steps", "8"), capsys)
    assert code == 0 and out.startswith("#!/bin/bash")


# ---- status / logs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["status", "logs"])
def test_status_and_logs_with_a_run_dir_that_does_not_exist(command: str, tmp_path: Path,
                                                            capsys: CaptureFixture) -> None:
    # status used to print "run X: last step None, checkpoints 0" for a typo'd directory
    user_error([command, "12345", "--run-dir", str(tmp_path / "typo")], capsys,
               "is not a directory (it does not exist)")


# ---- demo ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("flag", "value"), [("--steps", "0"), ("--nproc", "0")])
def test_demo_checks_its_flags_before_building_the_corpus(flag: str, value: str, tmp_path: Path,
                                                           capsys: CaptureFixture) -> None:
    # used to tokenise 4 MB of standard library first, then fail in `train` (or at cpu:0)
    user_error(["demo", flag, value, "--out", str(tmp_path / "demo")], capsys, f"{flag} must be")
    assert not (tmp_path / "demo").exists()


def test_demo_does_not_replace_a_run_it_did_not_write(tmp_path: Path, capsys: CaptureFixture) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    user_error(["demo", "--quick", "--out", str(tmp_path)], capsys, "was not written by `bastion demo`")
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == "{}\n"
    (tmp_path / "file").write_text("x")
    user_error(["demo", "--quick", "--out", str(tmp_path / "file")], capsys, "is a file, not a directory")


def test_demo_json_turns_the_workers_progress_bar_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: CaptureFixture) -> None:
    # the rank-0 progress bar went to stdout ahead of the JSON object
    from bastion.commands import demo_cmds
    from bastion.specs.plan import ParallelPlan

    calls: list[list[str]] = []

    def fake_train(args: list[str], standalone_mode: bool) -> None:
        calls.append(args)
        run_dir = Path(args[args.index("--run-dir") + 1])
        run_dir.mkdir(parents=True)
        (run_dir / "summary.json").write_text(json.dumps({"steps": 4}))

    monkeypatch.setattr(demo_cmds, "_stdlib_corpus", lambda data_dir, max_bytes: {"num_tokens": 1, "documents": 1})
    monkeypatch.setattr(demo_cmds, "choose_plan", lambda *args: (ParallelPlan(dp=4, global_batch=8), "test"))
    monkeypatch.setattr(demo_cmds, "app", fake_train)
    code, out, _ = run(["demo", "--quick", "--json", "--out", str(tmp_path)], capsys)
    assert code == 0 and json.loads(out) == {"steps": 4}
    assert "--no-progress" in calls[0]


@pytest.mark.parametrize("command", ["train", "launch"])
def test_a_run_already_past_steps(command: str, tmp_path: Path, dataset: Path, capsys: CaptureFixture) -> None:
    # train used to start the workers, train nothing and report "goodput 1.6%" over the idle time since the
    # last session; a Slurm job would have done the same on the cluster
    fake_checkpoint(tmp_path / "run", "tiny", step=4)
    argv = _train(tmp_path, dataset) if command == "train" else _launch(tmp_path, dataset)
    user_error(argv, capsys, "resumes from step 4", "past --steps 2", "give --steps above 4")


def test_train_injected_kill_without_restarts(tmp_path: Path, dataset: Path, capsys: CaptureFixture) -> None:
    # used to start the workers, kill one, and end in torchrun's ChildFailedError traceback
    argv = _train(tmp_path, dataset, "--checkpoint-every", "1", "--inject", "kill:rank=1,step=1",
                  "--inject", "corrupt-latest:step=2")
    user_error(argv, capsys, "2 injected fault(s)", "--max-restarts is 0", "add --max-restarts 2")
    user_error([*argv, "--max-restarts", "1"], capsys, "--max-restarts is 1")
