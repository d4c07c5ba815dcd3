"""Property test of issue 19 §3: random mutations of valid command lines and spec files, fed to every command but
train, launch and demo (those start workers; their checks are tested where they live), must end in exit 0 or in
exit 2 with a guidance message ("error:" and "To fix:"), never a traceback, and never hang. `--json` output,
when a command succeeds, must be standard JSON. Seeded, so a failure names a command line that replays it."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import random
import re
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from bastion.cli import main

ROOT = Path(__file__).parents[2]
#: values a careless user or an attacker types: empty, words, signs, NaN/inf, huge, tiny, paths where a number goes
VALUES = ("", " ", "abc", "0", "-1", "-0", "1", "2", "3", "7", "8", "1.5", "0.5", "1e-300", "nan", "-nan", "inf",
          "-inf", "1e18", str(10**30), "9" * 5000, "0x10", "1_000", "../..", "/proc/x", "1..4", "4..1", "8..8",
          "h100-sxm:8", "cpu:0", "cpu:1e30", "fifo", "full", "1f1b", "bf16", "fp8", "tp=2", "tp=", "=",
          "small", "tiny", "llama3-8b")
#: values a spec-file field gets in place of its own (TOML text)
FIELD_VALUES = ("0", "-1", "1", "3", "1.5", "nan", "inf", "-inf", "1e18", "1000000000000000000", str(10**30),
                '"abc"', '""', "true", "[1, 2]", "{ a = 1 }", "'1f1b'", "'full'", "'swiglu'")
#: seconds one command may run before it counts as a hang
HANG_S = 60
CASES_PER_COMMAND = 24

MODEL_TOML = {"num_layers": "4", "hidden_size": "256", "num_heads": "4", "num_kv_heads": "2",
              "ffn_hidden_size": "512", "vocab_size": "1000", "seq_len": "128"}
CLUSTER_TOML = {"accelerator": '"h100-sxm"', "num_nodes": "1", "gpus_per_node": "4"}
PLAN_TOML = {"dp": "2", "tp": "2", "global_batch": "8", "micro_batch": "1", "zero_stage": "1",
             "recompute": '"full"', "precision": '"bf16"'}


def mutate_fields(rng: random.Random, fields: dict[str, str]) -> str:
    """The fields as TOML with one or two of them changed, dropped, or an unknown one added."""
    fields = dict(fields)
    for _ in range(rng.randint(1, 2)):
        action = rng.random()
        key = rng.choice(sorted(fields))
        if action < 0.75:
            fields[key] = rng.choice(FIELD_VALUES)
        elif action < 0.9:
            fields.pop(key)
        else:
            fields[key + "x"] = "1"
    return "".join(f"{k} = {v}\n" for k, v in fields.items())


def write_spec(rng: random.Random, tmp: Path, name: str, fields: dict[str, str], mutate: bool) -> str:
    path = tmp / name
    path.write_text(mutate_fields(rng, fields) if mutate and rng.random() < 0.7
                    else "".join(f"{k} = {v}\n" for k, v in fields.items()))
    return str(path)


def mutate_options(rng: random.Random, argv: list[str]) -> list[str]:
    """argv with one to three option values replaced by VALUES (flags without a value are left alone)."""
    argv = list(argv)
    slots = [i for i in range(1, len(argv)) if argv[i - 1].startswith("-") and not argv[i].startswith("--")]
    for i in rng.sample(slots, k=min(len(slots), rng.randint(1, 3))):
        argv[i] = rng.choice(VALUES)
    return argv


def estimate_argv(rng: random.Random, tmp: Path, mutate: bool) -> list[str]:
    return ["estimate", "--model", write_spec(rng, tmp, "m.toml", MODEL_TOML, mutate), "--cluster", "cpu:4",
            "--tp", "2", "--pp", "2", "--micro-batch", "1", "--global-batch", "8", "--seq-len", "128",
            "--tokens", "1e9", "--zero", "1", "--schedule", "1f1b", "--recompute", "full", "--precision", "fp32",
            "--vpp", "1", "--software", "bastion", "--json"]


def estimate_plan_file_argv(rng: random.Random, tmp: Path, mutate: bool) -> list[str]:
    return ["estimate", "--model", "small", "--cluster", write_spec(rng, tmp, "c.toml", CLUSTER_TOML, mutate),
            "--plan", write_spec(rng, tmp, "plan.toml", PLAN_TOML, mutate), "--json"]


def plan_argv(rng: random.Random, tmp: Path, mutate: bool) -> list[str]:
    return ["plan", "--model", "tiny", "--cluster", "cpu:4", "--global-batch", "8", "--seq-len", "64",
            "--gpus", "2..4", "--top", "3", "--objective", "mfu", "--precision", "fp32", "--fix", "tp=1",
            "--save", str(tmp / "out" / "plan.json"), "--json"]


def cost_argv(rng: random.Random, tmp: Path, mutate: bool) -> list[str]:
    return ["cost", "--model", "tiny", "--cluster", "cpu:4", "--tokens", "1e9", "--global-batch", "8",
            "--years", "5", "--utilisation", "0.8", "--pue", "1.3", "--electricity", "0.1", "--mtbf-hours", "100",
            "--capex-per-gpu", "1000", "--seq-len", "64", "--json"]


def simulate_argv(rng: random.Random, tmp: Path, mutate: bool) -> list[str]:
    return ["simulate", "--cluster", str(ROOT / "examples" / "sim" / "cluster.toml"), "--synthetic", "3",
            "--seed", "1", "--span-hours", "100", "--policy", "fair", "--placement", "first-fit",
            "--fair-half-life", "10", "--jobs", "2", "--json"]


def mutate_toml_text(rng: random.Random, text: str) -> str:
    """A TOML file with one to three of its `key = value` lines given a FIELD_VALUES value."""
    lines = text.splitlines()
    values = [i for i, line in enumerate(lines) if " = " in line and not line.lstrip().startswith("#")]
    for i in rng.sample(values, k=min(len(values), rng.randint(1, 3))):
        lines[i] = lines[i].split(" = ", 1)[0] + " = " + rng.choice(FIELD_VALUES)
    return "\n".join(lines) + "\n"


def simulate_files_argv(rng: random.Random, tmp: Path, mutate: bool) -> list[str]:
    """A small slice of the example workload (first three jobs) on the example cluster, one file mutated."""
    cluster = (ROOT / "examples" / "sim" / "cluster.toml").read_text()
    workload = "[[job]]".join((ROOT / "examples" / "sim" / "workload.toml").read_text().split("[[job]]")[:4])
    if mutate and rng.random() < 0.5:
        cluster = mutate_toml_text(rng, cluster)
    elif mutate:
        workload = mutate_toml_text(rng, workload)
    (tmp / "cluster.toml").write_text(cluster)
    (tmp / "workload.toml").write_text(workload)
    return ["simulate", "--cluster", str(tmp / "cluster.toml"), "--workload", str(tmp / "workload.toml"),
            "--no-failures", "--json"]


def report_argv(rng: random.Random, tmp: Path, mutate: bool) -> list[str]:
    run_dir = tmp / "run"
    run_dir.mkdir(exist_ok=True)
    (run_dir / "model.json").write_text(json.dumps({"name": "tiny", "num_layers": 4, "hidden_size": 64,
                                                    "num_heads": 4, "num_kv_heads": 2, "ffn_hidden_size": 256,
                                                    "vocab_size": 256, "seq_len": 64}))
    (run_dir / "plan.json").write_text(json.dumps({"dp": 2, "global_batch": 4, "precision": "fp32"}))
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 5.0 - s * 0.1, "step_time_s": 0.1, "tokens_per_s": 100.0,
                            "time": 1.7e9 + s}) + "\n" for s in range(1, 4)))
    if mutate:
        name = rng.choice(["model.json", "plan.json", "metrics.jsonl"])
        text = (run_dir / name).read_text()
        numbers = re.findall(r"(?<=: )[0-9.e+]+", text)
        for number in rng.sample(numbers, k=min(len(numbers), rng.randint(1, 2))):
            text = text.replace(number, rng.choice(("0", "-1", "NaN", "Infinity", "1e400", '"x"', "null", "9" * 5000)),
                                1)
        (run_dir / name).write_text(text)
    return ["report", str(run_dir), "--warmup-steps", "1", "--cluster", "cpu:2", "--html",
            str(tmp / "out" / "r.html"), "--json"]


def validate_argv(rng: random.Random, tmp: Path, mutate: bool) -> list[str]:
    from bastion.predict.validate import PUBLIC_CASES

    with PUBLIC_CASES.open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = [next(reader), next(reader)]
        header = list(reader.fieldnames or [])
    for _ in range(rng.randint(1, 3) if mutate else 0):
        rows[rng.randrange(2)][rng.choice(header)] = rng.choice(VALUES + FIELD_VALUES)
    path = tmp / "cases.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return ["validate", str(path), "--json"]


def data_prepare_argv(rng: random.Random, tmp: Path, mutate: bool) -> list[str]:
    text = tmp / "text.txt"
    text.write_text("a little text to tokenise\n" * 20)
    return ["data", "prepare", str(text), "--out", str(tmp / "data"), "--max-mb", "1", "--json"]


COMMANDS: dict[str, Callable[[random.Random, Path, bool], list[str]]] = {
    "estimate": estimate_argv, "estimate-files": estimate_plan_file_argv, "plan": plan_argv, "cost": cost_argv,
    "simulate": simulate_argv, "simulate-files": simulate_files_argv, "report": report_argv, "validate": validate_argv, "data-prepare": data_prepare_argv,
}


def outcome(argv: list[str], hang_guard: Callable[[int, str], AbstractContextManager[None]],
            must_succeed: bool = False) -> str | None:
    """None when the command behaved (exit 0 with standard JSON, or exit 2 with guidance); else what went wrong."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with hang_guard(HANG_S, str(argv)), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0) if not isinstance(exc.code, str) else 1
    except BaseException:  # noqa: BLE001 - a traceback is exactly what the test looks for
        return f"raised:\n{traceback.format_exc()[-2000:]}"
    if code == 0:
        if "--json" in argv and argv[0] not in ("data",):
            try:
                json.loads(out.getvalue(), parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))
            except ValueError as exc:
                return f"exit 0 but stdout is not standard JSON ({exc}): {out.getvalue()[:300]!r}"
        return None
    text = err.getvalue()
    if must_succeed:
        return f"the valid command line failed (exit {code}): {text[-1500:]!r}"
    if code == 2 and text.startswith("error: ") and "\nTo fix: " in text and "Traceback" not in text:
        return None
    return f"exit {code} without guidance: {text[-1500:]!r}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_random_mutations_end_in_success_or_guidance(command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     hang_guard: Callable[[int, str], AbstractContextManager[None]]) -> None:
    rng = random.Random(f"bastion-mutations/{command}")
    failures = []
    for case in range(CASES_PER_COMMAND):
        tmp = tmp_path / str(case)
        tmp.mkdir()
        monkeypatch.chdir(tmp)  # a mutated path (`--out bf16`) lands here, never in the repository
        # the first case is the valid command line (it must succeed, or the mutations test nothing); then options
        # only, files only, or both are mutated
        mode = "none" if case == 0 else rng.choice(("options", "files", "both"))
        argv = COMMANDS[command](rng, tmp, mode in ("files", "both"))
        if mode in ("options", "both"):
            argv = mutate_options(rng, argv)
        problem = outcome(argv, hang_guard, must_succeed=not case)
        if problem is not None:
            files = {p.name: p.read_text()[:300] for p in tmp.glob("*.to*")}
            failures.append(f"{argv}\nfiles: {files}\n{problem}")
    assert not failures, f"{len(failures)} of {CASES_PER_COMMAND} cases misbehaved:\n\n" + "\n\n".join(failures[:5])
