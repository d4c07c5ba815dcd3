"""A demanding user's mistakes, one per test: each must end in a short guidance message on stderr, exit code 2,
no traceback, nothing on stdout (so `--json` output stays clean), and nothing half-written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from bastion.cli import main
from bastion.predict.validate import PUBLIC_CASES

CaptureFixture = pytest.CaptureFixture[str]


def run(argv: list[str], capsys: CaptureFixture) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def user_error(argv: list[str], capsys: CaptureFixture, *expected: str) -> str:
    """Run a command that must fail as a user mistake; return its message."""
    code, out, err = run(argv, capsys)
    assert code == 2, (argv, code, out, err)
    assert out == "", out
    assert "Traceback" not in err and err.startswith("error: "), err
    flat = " ".join(err.split())
    for text in expected:
        assert text in flat, (text, err)
    return flat


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
    user_error([*ESTIMATE, "--tokens", value, "--json"], capsys, "--tokens must be a positive number")


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
