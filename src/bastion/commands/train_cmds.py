"""`bastion train` (start workers with torchrun, or be one) and `bastion data prepare`.

torch is imported only inside a worker; the checks that can fail on user input run first, in this process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bastion.cli import app
from bastion.commands.options import number_option

data_app = typer.Typer(help="Token datasets for `bastion train`.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _args_from_context(ctx: typer.Context, drop: set[str]) -> list[str]:
    """The command's own options as a worker command line (every option, including ones added later)."""
    args: list[str] = [ctx.command.name or "train"]
    for param in ctx.command.params:
        if getattr(param, "param_type_name", "") != "option" or param.name in drop:
            continue
        value = ctx.params.get(param.name)
        if value is None:
            continue
        if param.is_flag:
            if value:
                args.append(param.opts[0])
            elif param.secondary_opts:
                args.append(param.secondary_opts[0])
        elif param.multiple:
            for item in value:
                args += [param.opts[0], str(item)]
        else:
            args += [param.opts[0], str(value)]
    return args


@app.command("train")
def train_command(
    ctx: typer.Context,
    model: str = typer.Option(..., "--model", help="Model preset (see `bastion models`) or model file."),
    plan: Path = typer.Option(..., "--plan", help="ParallelPlan file (JSON/TOML), e.g. from `bastion plan --save`."),
    data: Path = typer.Option(..., "--data", help="Token dataset directory from `bastion data prepare`."),
    steps: int = typer.Option(..., "--steps", help="Optimizer steps to run."),
    run_dir: Path = typer.Option(..., "--run-dir", help="Where metrics.jsonl, summary.json and checkpoints go."),
    nproc: int | None = typer.Option(None, "--nproc", help="Start this many local worker processes (torchrun)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the parameter init and the data order."),
    seq_len: int | None = typer.Option(None, "--seq-len", help="Sequence length (default: the model's)."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (warmup, then cosine to a tenth)."),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile each block."),
    cluster: str | None = typer.Option(None, "--cluster", help="Cluster spec for MFU and the prediction "
                                                               "(default cpu:<world> on CPU)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on rank 0."),
    # ---- fault tolerance (runtime/resilience.py) ----
    checkpoint_every: str = typer.Option("0", "--checkpoint-every", help="Checkpoint every N steps, or `auto` "
                                         "(Young/Daly from the measured save stall and the MTBF); 0 = never."),
    mtbf_hours: float | None = typer.Option(None, "--mtbf-hours", help="MTBF for `auto` (default: published "
                                            "failure rate × number of devices)."),
    inject: list[str] = typer.Option([], "--inject", help="Inject a fault (repeatable): kill:rank=1,step=7, "
                                     "hang:rank=0,step=5, nan:step=9, kill-during-save:step=8, corrupt-latest."),
    max_restarts: int = typer.Option(0, "--max-restarts", help="Restarts torchrun's elastic agent may make; a "
                                     "restarted group resumes from the newest valid checkpoint."),
    keep_last: int = typer.Option(3, "--keep-last", help="Keep the newest K checkpoints."),
    keep_every: int = typer.Option(0, "--keep-every", help="Also keep every checkpoint whose step is a multiple "
                                   "of N (0 = none)."),
    async_checkpoint: bool = typer.Option(True, "--async-checkpoint/--sync-checkpoint",
                                          help="Write checkpoints in the background (dcp.async_save) or block."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from the newest valid checkpoint "
                                "in RUN_DIR/checkpoints when there is one."),
    resume_from: Path | None = typer.Option(None, "--resume-from", help="Start from this checkpoint (or run "
                                            "directory) when RUN_DIR has none; the plan may differ."),
    stop_after_step: int = typer.Option(0, "--stop-after-step", help="Checkpoint and stop after this step "
                                        "(e.g. before maintenance or a plan change); 0 = run to --steps."),
    hang_timeout_s: float = typer.Option(60.0, "--hang-timeout-s", help="A step is hung after max(10× the "
                                         "recent median, this many seconds), or 10× this before any step time "
                                         "is known: stacks dumped, worker aborted, group restarted."),
    skip_batch: list[int] = typer.Option([], "--skip-batch", hidden=True, help="Skip the batch of this step "
                                         "(what the NaN guard does; for reference runs)."),
) -> None:
    """Train MODEL with a parallel PLAN on a token dataset; writes metrics and predicted-vs-measured."""
    from bastion.runtime.launcher import LaunchConfig, in_launched_worker, launch
    from bastion.runtime.preflight import check_request

    _check_train_flags(nproc, seq_len, lr, max_restarts, cluster)
    resilience = _resilience_config(checkpoint_every, mtbf_hours, inject, keep_last, keep_every, async_checkpoint,
                                    resume, resume_from, stop_after_step, hang_timeout_s, skip_batch)

    if in_launched_worker() and nproc is None:
        import os

        from bastion.runtime.train import TrainConfig, run_worker

        config = TrainConfig(model=model, plan=str(plan), data=str(data), steps=steps, run_dir=str(run_dir),
                             seed=seed, seq_len=seq_len, lr=lr, compile=compile_model, cluster=cluster,
                             progress=progress, resilience=resilience)
        request = check_request(model, str(plan), str(data), int(os.environ["WORLD_SIZE"]), steps, seq_len)
        _check_fault_tolerance(resilience, request, run_dir, int(os.environ["WORLD_SIZE"]), steps)
        run_worker(config)
        return
    from bastion.specs.plan import ParallelPlan

    world = nproc if nproc is not None else ParallelPlan.load(plan).num_gpus
    request = check_request(model, str(plan), str(data), world, steps, seq_len)
    _check_run_dir(run_dir, resilience.resume)
    source = _check_fault_tolerance(resilience, request, run_dir, world, steps)
    fatal = [spec for spec in inject if spec.split(":")[0] in ("kill", "hang", "kill-during-save", "corrupt-latest")]
    if len(fatal) > max_restarts:
        from bastion.errors import ConfigError

        raise ConfigError(f"{len(fatal)} injected fault(s) ({', '.join(fatal)}) each end the worker group, but "
                          f"--max-restarts is {max_restarts}: the run would fail instead of recovering.",
                          fix=f"add --max-restarts {len(fatal)} (or more) so torchrun restarts the group and it "
                              f"resumes from its newest checkpoint.")
    if source is not None and source.step > steps:
        from bastion.errors import ConfigError

        raise ConfigError(f"The run resumes from step {source.step} ({source.path}), past --steps {steps}: there is "
                          f"nothing to train.", fix=f"give --steps above {source.step} to continue the run, or a "
                                                   f"new --run-dir to start another.")
    from rich.console import Console

    Console(stderr=True).print(
        f"[bold]bastion train[/]: {request.spec.name} on {world} process(es), plan dp{request.plan.dp} "
        f"tp{request.plan.tp} pp{request.plan.pp} zero{request.plan.zero_stage}, {steps} steps → {run_dir}")
    code = launch(LaunchConfig(nproc=world, max_restarts=max_restarts), _args_from_context(ctx, drop={"nproc"}))
    if code != 0:
        from bastion.errors import LaunchError

        raise LaunchError(f"The training workers exited with code {code}.",
                          fix="read the worker output above; rerun with BASTION_DEBUG=1 for tracebacks.")
    _print_time_breakdown(run_dir)


def _check_train_flags(nproc: int | None, seq_len: int | None, lr: float, max_restarts: int,
                       cluster: str | None) -> None:
    """Flag values that would otherwise fail inside N workers (or silently mean something else)."""
    import math

    from bastion.commands.checks import check_seq_len
    from bastion.errors import ConfigError

    if nproc is not None and nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}.",
                          fix="give the number of worker processes, dp × tp × pp × cp of the plan.")
    check_seq_len(seq_len)
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"--lr must be a positive learning rate, got {lr:g}.", fix="e.g. --lr 3e-4.")
    if max_restarts < 0:
        raise ConfigError(f"--max-restarts must be >= 0, got {max_restarts}.",
                          fix="give how many times the worker group may restart (0 = never).")
    if cluster is not None:
        from bastion.specs.hardware import load_cluster

        load_cluster(cluster)  # an unknown name is a guidance error now, not a missing prediction later


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    """The run directory can take this run: a directory (or nothing yet), and with --no-resume free of another
    run's checkpoints (new ones would collide with them, and retention would delete them). Launcher only: a
    restarted worker group finds this run's own checkpoints there."""
    from bastion.errors import ConfigError
    from bastion.runtime import checkpoint_files as cf

    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} is a file, not a directory.",
                          fix="give a new directory (it is created) or an existing run directory to continue.")
    existing = cf.committed(run_dir / "checkpoints")
    if not resume and existing:
        raise ConfigError(f"--no-resume, but {run_dir} already holds {len(existing)} checkpoint(s) of a run "
                          f"(newest: step {existing[-1].step}); starting over there would overwrite or delete them.",
                          fix="give a new --run-dir for a fresh start (--resume-from can seed it from this one), "
                              "or drop --no-resume to continue the run.")


def _print_time_breakdown(run_dir: Path) -> None:
    """Where the run's wall time went (from summary.json's fault-tolerance accounting), one line."""
    import json

    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        parts = summary["time_breakdown_s"]
    except (OSError, ValueError, KeyError):
        return
    from rich.console import Console

    shares = ", ".join(f"{name.removesuffix('_s').replace('_', ' ')} {parts[name]:.1f} s"
                       for name in ("productive_s", "lost_s", "checkpoint_stall_s", "recovery_s", "other_s"))
    Console(stderr=True).print(
        f"[bold]where the time went[/] ({parts['wall_s']:.1f} s): {shares}; goodput {summary['goodput']:.1%}, "
        f"{summary['restarts']} restart(s), {summary['rollbacks']} rollback(s), {summary['lost_steps']} lost step(s)")


def _resilience_config(checkpoint_every: str, mtbf_hours: float | None, inject: list[str], keep_last: int,
                       keep_every: int, async_checkpoint: bool, resume: bool, resume_from: Path | None,
                       stop_after_step: int, hang_timeout_s: float, skip_batch: list[int]):
    from bastion.errors import ConfigError
    from bastion.runtime.faults import parse_fault
    from bastion.runtime.resilience_config import ResilienceConfig

    text = checkpoint_every.strip().lower()
    if text == "auto":
        every = -1
    elif text.isdigit():
        every = int(text)
    else:
        raise ConfigError(f"--checkpoint-every {checkpoint_every!r} is neither a step count nor 'auto'.",
                          fix="pass --checkpoint-every N (N >= 0) or --checkpoint-every auto.")
    if mtbf_hours is not None and mtbf_hours <= 0:
        raise ConfigError(f"--mtbf-hours must be > 0, got {mtbf_hours}.")
    if keep_last < 1 or keep_every < 0 or stop_after_step < 0 or hang_timeout_s <= 0:
        raise ConfigError("--keep-last must be >= 1; --keep-every and --stop-after-step >= 0; "
                          "--hang-timeout-s > 0.")
    for spec in inject:
        parse_fault(spec)  # a guidance error now, not in N workers later
    return ResilienceConfig(checkpoint_every=every, mtbf_hours=mtbf_hours, keep_last=keep_last,
                            keep_every=keep_every, async_checkpoint=async_checkpoint, inject=tuple(inject),
                            resume=resume, resume_from=str(resume_from) if resume_from else None,
                            skip_batches=tuple(skip_batch), stop_after_step=stop_after_step,
                            hang_min_s=hang_timeout_s)


def _check_fault_tolerance(resilience, request, run_dir: Path, world: int, steps: int):
    """Faults that can fire and a resume source that fits, before any process starts (nothing is written)."""
    from bastion.errors import ConfigError
    from bastion.runtime.faults import check_faults, parse_fault
    from bastion.runtime.resume_source import preflight_resume

    check_faults([parse_fault(s) for s in resilience.inject], world, steps)
    needs_checkpoints = [s for s in resilience.inject if s.split(":")[0] in ("kill-during-save", "corrupt-latest")]
    if needs_checkpoints and resilience.checkpoint_every == 0:
        raise ConfigError(f"--inject {needs_checkpoints[0]} needs checkpoints, but --checkpoint-every is 0.",
                          fix="add --checkpoint-every N.")
    return preflight_resume(run_dir, resilience.resume, resilience.resume_from, request.spec, request.plan)


@data_app.command("prepare")
def data_prepare_command(
    texts: list[Path] = typer.Argument(..., help="Text files or directories (read recursively)."),
    out: Path = typer.Option(..., "--out", help="Dataset directory to write."),
    tokenizer: Path | None = typer.Option(None, "--tokenizer", help="HuggingFace tokenizer.json "
                                                                     "(default: built-in byte-level)."),
    max_mb: Annotated[float | None, number_option("--max-mb", help="Stop after this many MB of text.", above=0,
                                                  high=1e9, fix="give how many MB of text to read (e.g. --max-mb "
                                                                "100), or leave it out for all.")] = None,
    as_json: bool = typer.Option(False, "--json", help="Print the dataset's meta.json."),
) -> None:
    """Tokenise TEXT... into a memory-mapped token dataset for `bastion train --data`."""
    import json

    from bastion.runtime.data import prepare_dataset

    meta = prepare_dataset(texts, out, tokenizer, int(max_mb * 1e6) if max_mb else None)
    if as_json:
        typer.echo(json.dumps(meta))
    else:
        typer.echo(f"wrote {meta['num_tokens']:,} tokens ({meta['dtype']}, vocab {meta['vocab_size']}, "
                   f"{meta['documents']} documents) to {out}")
