"""`bastion demo` (what `make run` does): the whole loop on this machine in a minute or two.

1. a corpus every machine has: the Python standard library's own .py files (bounded), byte-level tokens
2. a plan for the local CPU cluster from the planner (the best hybrid plan: at least two parallel dimensions)
3. `bastion train` of the `small` model on 4 processes with a progress bar
4. predicted vs measured step time, throughput and per-device memory: from this machine's saved profile `default`
   where there is one (`bastion calibrate --quick --save-as default`), else from the cpu datasheet
With --moe: the `small-moe` mixture-of-experts model (tiny-moe with --quick) on a plan with expert parallelism.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path
from typing import Any

import typer

from bastion.cli import app
from bastion.commands import options
from bastion.outputs import dumps_json
from bastion.report.comparison import print_comparison
from bastion.rundir.layout import SUMMARY_FILE
from bastion.rundir.summary import read_summary

#: the fixed hybrid plan used when the planner is not available (or finds nothing runnable)
FALLBACK_PLAN = {"dp": 2, "pp": 2, "pp_schedule": "1f1b", "zero_stage": 0, "micro_batch": 2, "precision": "fp32"}
#: --moe: experts split over 2 ranks, each half sharded over the other data-parallel ranks
FALLBACK_MOE_PLAN = {"ep": 2, "zero_stage": 3, "micro_batch": 1, "precision": "fp32"}


def _stdlib_corpus(out: Path, max_bytes: int) -> dict:
    from bastion.runtime.data import prepare_dataset

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py"))
    return prepare_dataset(files, out, max_bytes=max_bytes)


def _runnable(plan: Any, moe: bool = False) -> bool:
    """Plans the runtime executes and that show more than one kind of parallelism (for --moe: expert
    parallelism, which the runtime composes with dp and pp)."""
    if moe:
        return plan.ep > 1 and plan.tp == 1 and plan.cp == 1 and plan.zero_stage != 1
    degrees = [plan.dp, plan.tp, plan.pp]
    return plan.cp == 1 and plan.ep == 1 and plan.zero_stage != 1 and sum(d > 1 for d in degrees) >= 2


#: the saved machine profile the demo plans and predicts with where there is one (specs/profile.py saved names)
DEMO_PROFILE = "default"


def prediction_cluster(nproc: int) -> tuple[str, str | None]:
    """(the --cluster the demo plans and predicts with, a hint line or None): `cpu:N@default` where a saved
    profile `default` (the project's or the user's) measured this host's CPU, else the cpu datasheet's `cpu:N`
    with a line saying how to make one. The demo never calibrates by itself: that takes a minute, on a quiet host."""
    from bastion.errors import ConfigError
    from bastion.specs.profile import SAVE_COMMAND, find_saved_profile, read_profile

    path = find_saved_profile(DEMO_PROFILE)
    why = f"no saved profile '{DEMO_PROFILE}'"
    if path is not None:
        try:
            profile = read_profile(path, DEMO_PROFILE)
        except ConfigError as exc:
            why = f"profile '{DEMO_PROFILE}' cannot be used ({exc.problem})"
        else:
            if profile.accelerator == "cpu":
                return f"cpu:{nproc}@{DEMO_PROFILE}", None
            why = f"profile '{DEMO_PROFILE}' ({path}) measured {profile.accelerator}, not this host's CPU"
    return f"cpu:{nproc}", (f"{why}, so the prediction uses the cpu datasheet; "
                            f"`{SAVE_COMMAND.format(name=DEMO_PROFILE)}` (under a minute) measures this machine, "
                            "and the demo then predicts from it.")


def choose_plan(model_name: str, nproc: int, global_batch: int, seq_len: int, moe: bool = False,
                cluster: str | None = None) -> tuple[Any, str]:
    """(plan, how it was chosen) for `cluster` (default the cpu datasheet's cpu:NPROC)."""
    from bastion.specs.hardware import load_cluster
    from bastion.specs.model import load_model
    from bastion.specs.plan import ParallelPlan

    if moe:
        fallback = ParallelPlan(**FALLBACK_MOE_PLAN, dp=nproc, global_batch=global_batch)
    else:
        fallback = ParallelPlan(**FALLBACK_PLAN, global_batch=global_batch)
    kind = "EP2×DP" if moe else "PP2×DP2"
    try:
        from bastion.planner.search import PlanRequest, search
        from bastion.planner.space import SearchSpace
    except ImportError:
        return fallback, f"fixed {kind} plan (the planner is not installed)"
    pins = {"cp": 1, "tp": 1} if moe else {"cp": 1, "ep": 1}
    request = PlanRequest(model=load_model(model_name, seq_len), cluster=load_cluster(cluster or f"cpu:{nproc}"),
                          global_batch=global_batch, seq_len=seq_len, top_k=200, workers=1,
                          space=SearchSpace(precisions=("fp32",), pins=pins))
    try:
        result = search(request)
    except Exception as exc:  # noqa: BLE001 - the demo must run even if the planner has a bad day
        return fallback, f"fixed {kind} plan (the planner failed: {exc})"
    for ranked in result.plans:
        if _runnable(ranked.plan, moe):
            rank = result.plans.index(ranked) + 1
            return ranked.plan, (f"planner: best hybrid plan (#{rank} of {result.feasible} feasible; "
                                 f"overall best {_describe(result.plans[0].plan)})")
    return fallback, f"fixed {kind} plan (the planner found no runnable hybrid plan)"


def _describe(plan: Any) -> str:
    parts = [f"{name}{getattr(plan, name)}" for name in ("dp", "ep", "tp", "pp") if getattr(plan, name) > 1]
    extra = f" {plan.pp_schedule}" if plan.pp > 1 else ""
    return "×".join(parts or ["single"]) + extra + f" zero{plan.zero_stage} mb{plan.micro_batch}"


#: a file in --out saying the directory is the demo's own (its run/ may be replaced)
DEMO_MARKER = ".bastion-demo"


@app.command("demo")
def demo_command(
    steps: options.Steps = 20,
    nproc: options.Nproc = 4,
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Where the corpus and the run go."),
    quick: bool = typer.Option(False, "--quick", help="Tiny model, small corpus, 4 steps (for tests)."),
    as_json: options.AsJson = False,
    moe: bool = typer.Option(False, "--moe", help="Train the mixture-of-experts model small-moe (tiny-moe with "
                                                  "--quick) on a plan with expert parallelism."),
) -> None:
    """Prepare a corpus, plan for the local CPU cluster, train on 4 processes, print predicted vs measured."""
    from rich.console import Console

    from bastion.errors import ConfigError

    console = Console(stderr=True)
    if moe:
        model, seq_len, global_batch = ("tiny-moe", 64, 8) if quick else ("small-moe", 128, 8)
    else:
        model, seq_len, global_batch = ("tiny", 64, 8) if quick else ("small", 256, 8)
    if quick:
        steps = min(steps, 4)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory.", fix="give a directory for the demo's files.")
    if (out / "run").exists() and not (out / DEMO_MARKER).exists() and not (out / "plan.json").is_file():
        raise ConfigError(f"{out / 'run'} exists and was not written by `bastion demo`; the demo replaces its run "
                          f"directory, so it will not use this --out.", fix="give another --out (e.g. runs/demo).")
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text("written by `bastion demo`: its run/ is replaced on every demo\n")
    data_dir = out / "data"
    meta = _stdlib_corpus(data_dir, 300_000 if quick else 4_000_000)
    console.print(f"[bold]1. corpus[/]: {meta['num_tokens']:,} byte tokens from {meta['documents']} standard-"
                  f"library files → {data_dir}")
    cluster, hint = prediction_cluster(nproc)
    plan, how = choose_plan(model, nproc, global_batch, seq_len, moe, cluster)
    plan_path = plan.save(out / "plan.json")
    console.print(f"[bold]2. plan[/] for {cluster}: {_describe(plan)} — {how}")
    run_dir = out / "run"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)  # the demo always starts fresh (no resume from an earlier demo)
    console.print(f"[bold]3. train[/] {model} for {steps} steps on {nproc} processes")
    # the same path as a user's `bastion train --nproc N` (checks first, then torchrun)
    app(args=["train", "--model", model, "--plan", str(plan_path), "--data", str(data_dir), "--steps", str(steps),
              "--run-dir", str(run_dir), "--nproc", str(nproc),
              # a profile, named: its rates predict, and the health check judges the all-reduce by them (the
              # datasheet's cpu:N is train's own default, and a default cluster's bandwidth is only compared)
              *([] if cluster == f"cpu:{nproc}" else ["--cluster", cluster]),
              # the workers' progress bar is written to stdout, which --json keeps for the one JSON object
              *(["--no-progress"] if as_json else [])], standalone_mode=False)
    summary = read_summary(run_dir)
    if summary is None:
        raise ConfigError(f"The demo's training run wrote no {SUMMARY_FILE} in {run_dir}.",
                          fix="look at the training output above for the reason, and run the demo again.")
    if as_json:
        typer.echo(dumps_json(summary))
    else:
        console.print("[bold]4. predicted vs measured[/]")
        print_comparison(summary)
        if moe:
            _print_routing(run_dir, console)
    if hint:
        console.print(f"hint: {hint}")


def _print_routing(run_dir: Path, console: Any) -> None:
    """The last step's routing figures (runtime/moe.py step_stats), as metrics.jsonl has them."""
    from bastion.rundir.metrics import read_records
    from bastion.rundir.records import is_step

    steps = [r for r in read_records(run_dir) if is_step(r) and "expert_tokens" in r]
    if steps:
        last = steps[-1]
        console.print(f"experts (step {last['step']}): tokens per expert {last['expert_tokens']}, imbalance "
                      f"{last['expert_imbalance']:.2f} (busiest / mean), aux loss {last['moe_aux_loss']:.4f}")
