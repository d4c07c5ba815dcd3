"""Issue 19 §3, the probes of every command but train and launch: each bad input ends in exit 2 with a "To fix:"
line, no traceback and nothing on stdout, before any work starts (a hang guard fails the test instead of hanging
the suite). One class per section: output paths, datasets, numbers, sizes, spec files, results."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from helpers.cli import run, user_error

CaptureFixture = pytest.CaptureFixture[str]
ROOT = Path(__file__).parents[2]
SIM_CLUSTER = str(ROOT / "examples" / "sim" / "cluster.toml")
#: seconds a probe may run before it counts as a hang (generous: the machine is shared)
HANG_S = 60


@pytest.fixture(autouse=True)
def _guarded(request: pytest.FixtureRequest, hang_guard) -> Iterator[None]:
    with hang_guard(HANG_S, request.node.name):
        yield


def strict_json(text: str) -> object:
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in --json output"))


PLAN = ["plan", "--model", "small", "--cluster", "cpu:4", "--global-batch", "8"]


# ---- output paths that cannot be written -------------------------------------------------------------
@pytest.fixture()
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a directory")
    return path


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_plan_save_where_nothing_can_be_written(where: str, a_file: Path, capsys: CaptureFixture) -> None:
    # used to search, then end in FileExistsError / FileNotFoundError tracebacks
    target = a_file / "plan.json" if where == "under-a-file" else Path("/proc/bastion-plan.json")
    user_error([*PLAN, "--save", str(target)], capsys, "Cannot write the plan")
    assert a_file.read_text() == "not a directory"


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_report_html_where_nothing_can_be_written(where: str, a_file: Path, tmp_path: Path,
                                                  capsys: CaptureFixture) -> None:
    target = a_file / "r.html" if where == "under-a-file" else Path("/proc/bastion-report.html")
    user_error(["report", str(tmp_path), "--html", str(target)], capsys, "Cannot write the HTML report")


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_data_prepare_out_where_nothing_can_be_written(where: str, a_file: Path, tmp_path: Path,
                                                       capsys: CaptureFixture) -> None:
    text = tmp_path / "t.txt"
    text.write_text("hello\n")
    target = a_file / "data" if where == "under-a-file" else Path("/proc/bastion-data")
    user_error(["data", "prepare", str(text), "--out", str(target)], capsys, "Cannot write the dataset")


def test_data_prepare_into_its_own_input_does_not_read_its_output(tmp_path: Path, capsys: CaptureFixture) -> None:
    # `data prepare DIR --out DIR` used to tokenise the tokens.bin and meta.json it wrote the time before
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("some text to train on\n" * 50)
    counts = []
    for _ in range(2):
        code, out, err = run(["data", "prepare", str(corpus), "--out", str(corpus), "--json"], capsys)
        assert code == 0, err
        counts.append(json.loads(out)["num_tokens"])
    assert counts[0] == counts[1] == len("some text to train on\n" * 50) + 1  # the end-of-document token


# ---- malformed datasets: refused by the pre-start check train and every launch backend run ---------------
def _dataset(tmp_path: Path, tokens: np.ndarray | bytes, **meta: object) -> Path:
    out = tmp_path / "data"
    out.mkdir()
    raw = tokens if isinstance(tokens, bytes) else tokens.astype(np.uint16).tobytes()
    (out / "tokens.bin").write_bytes(raw)
    base = {"dtype": "uint16", "num_tokens": len(raw) // 2, "vocab_size": 256, "tokenizer": "byte", "documents": 1}
    (out / "meta.json").write_text(json.dumps({**base, **meta}))
    return out


GOOD_TOKENS = np.arange(1000) % 256


@pytest.mark.parametrize(("damage", "expected"), [
    ("meta-latin1", "is not UTF-8 text"),
    ("meta-list", "must hold one JSON object, not list"),
    ("meta-deep", "is not valid JSON"),
    ("num-tokens-text", "num_tokens must be a positive whole number, got '1000'"),
    ("num-tokens-float", "num_tokens must be a positive whole number, got 1000.5"),
    ("num-tokens-beyond-file", "holds 1,000 tokens, but meta.json says 5,000"),
    ("truncated", "holds 999 tokens and 1 stray byte(s)"),
    ("empty", "num_tokens must be a positive whole number, got 0"),
    ("id-beyond-vocab", "token 500 has id 300, outside the vocabulary of 256 ids"),
])
def test_malformed_dataset_is_refused_before_any_worker(damage: str, expected: str, tmp_path: Path) -> None:
    from bastion.errors import DataError
    from bastion.runtime.preflight import check_request
    from bastion.specs.plan import ParallelPlan

    tokens: np.ndarray | bytes = GOOD_TOKENS
    meta: dict[str, object] = {}
    if damage == "num-tokens-text":
        meta["num_tokens"] = "1000"
    elif damage == "num-tokens-float":
        meta["num_tokens"] = 1000.5
    elif damage == "num-tokens-beyond-file":
        meta["num_tokens"] = 5000
    elif damage == "truncated":
        tokens, meta["num_tokens"] = GOOD_TOKENS.astype(np.uint16).tobytes()[:-1], 1000
    elif damage == "empty":
        tokens = b""
    elif damage == "id-beyond-vocab":
        tokens = GOOD_TOKENS.copy()
        tokens[500] = 300
    data = _dataset(tmp_path, tokens, **meta)
    if damage == "meta-latin1":
        (data / "meta.json").write_bytes('{"dtype": "uint16", "tokenizer": "bytes \xe9"}'.encode("latin-1"))
    elif damage == "meta-list":
        (data / "meta.json").write_text("[1, 2]")
    elif damage == "meta-deep":
        (data / "meta.json").write_text("[" * 100_000 + "]" * 100_000)
    plan = ParallelPlan(dp=2, global_batch=2, precision="fp32").save(tmp_path / "plan.json")
    with pytest.raises(DataError) as exc:
        check_request("tiny", str(plan), str(data), 2, 2)
    assert expected in str(exc.value) and exc.value.fix, exc.value


def test_a_sound_dataset_passes_the_check(tmp_path: Path) -> None:
    from bastion.runtime.data import check_dataset_dir

    assert check_dataset_dir(_dataset(tmp_path, GOOD_TOKENS), model_vocab=256)["num_tokens"] == 1000


# ---- numbers: NaN, infinity, negative, out of range ----------------------------------------------------
SIM = ["simulate", "--cluster", SIM_CLUSTER, "--synthetic", "3"]
COST = ["cost", "--model", "llama3-8b", "--cluster", "h100-sxm:64", "--tokens", "1e12", "--global-batch", "512"]


@pytest.mark.parametrize(("argv", "expected"), [
    ([*SIM, "--span-hours", "nan"], "--span-hours must be a number, got nan"),  # used to hang
    ([*SIM, "--span-hours", "inf"], "--span-hours must be finite"),
    ([*SIM, "--jobs", "-1"], "--jobs must be >= 0, got -1"),  # used to be accepted
    ([*SIM, "--seed", "-1"], "--seed must be >= 0, got -1"),
    ([*SIM, "--fair-half-life", "nan"], "--fair-half-life must be a number"),
    ([*SIM, "--fair-half-life", "0"], "--fair-half-life must be > 0"),
    ([*COST, "--electricity", "inf"], "--electricity must be finite"),  # used to print Infinity in --json
    ([*COST, "--utilisation", "1.5"], "--utilisation must be <= 1"),
    ([*COST, "--years", "nan"], "--years must be a number"),
    ([*COST, "--mtbf-hours", "0"], "--mtbf-hours must be > 0"),  # used to exit 2 with no "To fix:"
    (["estimate", "--model", "small", "--cluster", "cpu:4", "--zero", "7"], "--zero must be <= 3"),
    (["estimate", "--model", "small", "--cluster", "cpu:4", "--micro-batch", "two"],
     "--micro-batch must be a whole number, got 'two'"),
    (["report", ".", "--warmup-steps", "-1"], "--warmup-steps must be >= 0"),
    ([*PLAN, "--top", "0"], "--top must be >= 1"),
    (["demo", "--steps", "1.5"], "--steps must be a whole number"),
])
def test_bad_numbers_are_named_with_their_range(argv: list[str], expected: str, capsys: CaptureFixture) -> None:
    user_error([*argv, "--json"] if argv[0] != "demo" else argv, capsys, expected)


def test_an_infinite_half_life_is_standard_json(capsys: CaptureFixture) -> None:
    # `--fair-half-life inf` is meaningful (never forget); its JSON is null, not the non-standard Infinity
    code, out, err = run([*SIM, "--policy", "fair", "--fair-half-life", "inf", "--json"], capsys)
    assert code == 0, err
    strict_json(out)


# ---- sizes that would set off unbounded work -----------------------------------------------------------
@pytest.mark.parametrize(("argv", "expected"), [
    (["plan", "--model", "small", "--cluster", "cpu:4", "--global-batch", "1e18"], "--global-batch must be <="),
    (["plan", "--model", "small", "--cluster", "cpu:4", "--global-batch", str(10**18)], "--global-batch must be <="),
    (["estimate", "--model", "small", "--cluster", f"h100-sxm:{10**30}"], "more than the 1,048,576"),
    (["estimate", "--model", "small", "--cluster", f"cpu:{10**30}"], "more than the 1,048,576"),
    (["plan", "--model", "small", "--cluster", "cpu:4", "--global-batch", "8", "--gpus", f"1..{10**30}"],
     "--gpus must be <= 1,048,576"),
    ([*SIM[:-1], "1e11"], "--synthetic must be <= 20,000"),  # used to grow until killed
    (["estimate", "--model", "small", "--cluster", "cpu:4", "--seq-len", str(2**40)], "--seq-len must be <="),
])
def test_huge_sizes_are_bounded(argv: list[str], expected: str, capsys: CaptureFixture) -> None:
    user_error(argv, capsys, expected)


MODEL = "num_layers = 4\nhidden_size = 256\nnum_heads = 4\nffn_hidden_size = 1024\nvocab_size = 1000\n"


@pytest.mark.parametrize(("text", "expected"), [
    (MODEL.replace("num_layers = 4", "num_layers = 1000000000000000000"), "num_layers must be <= 16,384"),
    (MODEL.replace("vocab_size = 1000", f"vocab_size = {10**30}"), "vocab_size must be <= 16,777,216, got 1e+30"),
    (MODEL.replace("vocab_size = 1000", "vocab_size = 1000000000000"), "vocab_size must be <="),
])
def test_huge_model_fields_are_bounded(text: str, expected: str, tmp_path: Path, capsys: CaptureFixture) -> None:
    # num_layers = 1e18 used to send the planner into a divisor loop
    path = tmp_path / "m.toml"
    path.write_text(text)
    user_error(["plan", "--model", str(path), "--cluster", "h100-sxm:8", "--global-batch", "8"], capsys, expected)


# ---- spec files a parser cannot take -----------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),  # used to be a RecursionError traceback
    ('{"dp": ' + "9" * 5000 + "}", "Cannot parse"),  # used to be a ValueError traceback (int digit limit)
    ('{"dp": 2, "global_batch": ' + "9" * 4000 + "}", "global_batch' must be <="),
    ('{"dp": 2, "global_batch": 2, "tp": 1e400}', "Field 'tp'"),
])
def test_plan_files_a_parser_cannot_take(text: str, expected: str, tmp_path: Path, capsys: CaptureFixture) -> None:
    path = tmp_path / "plan.json"
    path.write_text(text)
    user_error(["estimate", "--model", "small", "--cluster", "cpu:4", "--plan", str(path)], capsys, expected)


# ---- results that were accepted as nonsense -----------------------------------------------------------
def test_validate_with_no_predictable_row_fails(tmp_path: Path, capsys: CaptureFixture) -> None:
    # used to exit 0 with an empty table
    from bastion.predict.validate import PUBLIC_CASES

    with PUBLIC_CASES.open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = [{**next(reader), "num_gpus": "0"} for _ in range(2)]
        header = reader.fieldnames
    path = tmp_path / "cases.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    user_error(["validate", str(path), "--json"], capsys, "No row of", "could be predicted", "2 skipped")


def test_report_with_an_unknown_cluster_fails(tmp_path: Path, capsys: CaptureFixture) -> None:
    # used to exit 0, printing a report without a prediction
    user_error(["report", str(tmp_path), "--cluster", "bogus:3"], capsys, "Unknown accelerator 'bogus'")


# ---- paths the operating system refuses ---------------------------------------------------------------
LONG = "9" * 5000


@pytest.mark.parametrize("argv", [
    ["estimate", "--model", LONG, "--cluster", "cpu:4"],
    ["estimate", "--model", "small", "--cluster", LONG],
    ["plan", "--model", "small", "--cluster", "cpu:4", "--global-batch", "8", "--save", LONG + ".json"],
    ["report", LONG],
    ["validate", LONG],
    ["simulate", "--cluster", LONG, "--synthetic", "3"],
    ["data", "prepare", LONG, "--out", "data"],
], ids=["model", "cluster", "plan-save", "report", "validate", "simulate", "data-prepare"])
def test_a_name_too_long_for_the_file_system(argv: list[str], capsys: CaptureFixture) -> None:
    # each used to end in an OSError traceback (exit 1)
    user_error(argv, capsys, "File name too long", "characters)")


# ---- run directories with damaged records --------------------------------------------------------------
@pytest.mark.parametrize("damage", [{"step_time_s": None}, {"step": "3"}, {"loss": "low"}, {"step": True}])
def test_report_counts_a_damaged_step_record_as_unreadable(damage: dict[str, object], tmp_path: Path,
                                                          capsys: CaptureFixture) -> None:
    # a step record with a null step time used to end in a TypeError traceback inside the failure accounting
    record = {"step": 1, "loss": 5.0, "step_time_s": 0.1, "tokens_per_s": 100.0, "time": 1.7e9, **damage}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    user_error(["report", str(tmp_path), "--json"], capsys, "has no complete step record yet", "1 line(s) did not parse")


@pytest.mark.parametrize("name", ["summary.json", "plan.json", "metrics.jsonl"])
def test_report_of_a_run_file_nested_too_deeply(name: str, tmp_path: Path, capsys: CaptureFixture) -> None:
    # a 100,000-deep summary.json used to be a RecursionError traceback; a metrics line so deep is unreadable
    record = {"step": 1, "loss": 5.0, "step_time_s": 0.1, "tokens_per_s": 100.0, "time": 1.7e9}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    deep = "[" * 100_000 + "]" * 100_000
    if name == "metrics.jsonl":
        (tmp_path / name).write_text(deep + "\n")
        user_error(["report", str(tmp_path), "--json"], capsys, "1 line(s) did not parse")
    else:
        (tmp_path / name).write_text(deep)
        user_error(["report", str(tmp_path), "--json"], capsys, f"{name} is not valid JSON")


@pytest.mark.parametrize(("name", "field", "value", "expected"), [
    # each used to end in a TypeError / AttributeError / ValueError traceback while the panel or the goodput
    # was being written
    ("plan.json", "pp", "x", "plan.json is damaged"),
    ("plan.json", "global_batch", "x", "plan.json is damaged"),
    ("summary.json", "predicted", "x", "summary.json is damaged: 'predicted' is \"x\", not an object"),
    ("summary.json", "measured", -1, "'measured' is -1, not an object"),
    ("summary.json", "world_size", "x", "'world_size' is \"x\", not a whole number"),
    ("summary.json", "world_size", -1, "'world_size' is -1, not >= 1"),
    ("summary.json", "checkpoint_stall_s", -1, "'checkpoint_stall_s' is -1, not >= 0"),
    ("summary.json", "plan", {"pp": None}, "summary.json is damaged"),
    ("run_config.json", "train", "x", "run_config.json is damaged: 'train' is \"x\", not an object"),
])
def test_report_of_a_run_file_with_a_damaged_field(name: str, field: str, value: object, expected: str,
                                                   tmp_path: Path, capsys: CaptureFixture) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(ROOT / "tests" / "unit" / "data" / "run_clean", run)
    data = json.loads((run / name).read_text())
    (run / name).write_text(json.dumps({**data, field: value}))
    message = user_error(["report", str(run), "--html", str(tmp_path / "r.html")], capsys, expected,
                         f"move {name} aside")
    assert str(run / name) in message and not (tmp_path / "r.html").exists()


# ---- command lines click cannot parse ------------------------------------------------------------------
@pytest.mark.parametrize(("argv", "expected"), [
    # each printed click's "Usage: … Error: …" (exit 2, but no "To fix:" and not bastion's form)
    (["estimate", "--bogus"], "No such option: --bogus. To fix: see `"),
    (["bogus"], "No such command 'bogus'. Did you mean 'logs'? To fix: see `"),
    (["estimate", "--cluster", "cpu:4"], "Missing option '--model' / '-m'."),
    (["train", "--seed", "abc"], "Invalid value for '--seed'"),
    (["launch", "--nodes", "many", "--dry-run"], "Invalid value for '--nodes'"),
    (["logs", "run", "-n", "all"], "Invalid value for '--lines' / '-n'"),
    (["calibrate", "--nproc", "four"], "Invalid value for '--nproc'"),
])
def test_a_command_line_that_does_not_parse_is_guidance(argv: list[str], expected: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    message = user_error(argv, capsys, expected)
    assert f"{argv[0]} -h` for its" in message or argv == ["bogus"]
    assert not list(tmp_path.iterdir())   # nothing started, nothing written


def test_the_help_of_a_bare_group_and_a_success_keep_their_exit_codes(capsys: CaptureFixture) -> None:
    code, out, err = run(["data"], capsys)
    assert code == 2 and "Usage:" in err + out and "prepare" in err + out
    assert run(["--version"], capsys)[0] == 0 and run(["estimate", "-h"], capsys)[0] == 0


# ---- outputs over the command's own inputs ---------------------------------------------------------------
def test_report_html_over_a_file_of_the_run_is_refused(tmp_path: Path, capsys: CaptureFixture) -> None:
    # `report RUN --html RUN/metrics.jsonl` used to replace the run's metrics with the page
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(ROOT / "tests" / "unit" / "data" / "run_clean", run_dir)
    metrics = (run_dir / "metrics.jsonl").read_bytes()
    user_error(["report", str(run_dir), "--html", str(run_dir / "metrics.jsonl")], capsys,
               "Cannot write the HTML report", "the command reads that file")
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics
    code, _, err = run(["report", str(run_dir), "--html", str(run_dir / "report.html")], capsys)
    assert code == 0 and (run_dir / "report.html").is_file(), err   # a page beside the run's files is the usual place


@pytest.mark.parametrize("which", ["model", "cluster"])
def test_plan_save_over_its_model_or_cluster_file_is_refused(which: str, tmp_path: Path,
                                                            capsys: CaptureFixture) -> None:
    model, cluster = tmp_path / "model.json", tmp_path / "cluster.json"
    model.write_text(json.dumps({"num_layers": 2, "hidden_size": 64, "num_heads": 4, "ffn_hidden_size": 128,
                                 "vocab_size": 256, "seq_len": 64}))
    cluster.write_text(json.dumps({"accelerator": "cpu", "num_nodes": 1, "gpus_per_node": 4}))
    target = model if which == "model" else cluster
    before = target.read_bytes()
    user_error(["plan", "--model", str(model), "--cluster", str(cluster), "--global-batch", "8",
                "--save", str(target)], capsys, "Cannot write the plan", "the command reads that file")
    assert target.read_bytes() == before


def test_simulate_html_over_its_inventory_is_refused_before_the_sweep(tmp_path: Path, capsys: CaptureFixture) -> None:
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(Path(SIM_CLUSTER).read_text())
    user_error(["simulate", "--cluster", str(cluster), "--synthetic", "2", "--sweep", "cluster_size=64,128",
                "--html", str(cluster)], capsys, "Cannot write the sweep's HTML page", "the command reads that file")
    assert cluster.read_text() == Path(SIM_CLUSTER).read_text()
