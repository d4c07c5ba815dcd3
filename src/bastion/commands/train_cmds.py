"""`bastion train` (start workers with torchrun, or be one) and `bastion data prepare`.

torch is imported only inside a worker; the checks that can fail on user input run first, in this process.
"""

from __future__ import annotations

from pathlib import Path

import typer

from bastion.cli import app

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
) -> None:
    """Train MODEL with a parallel PLAN on a token dataset; writes metrics and predicted-vs-measured."""
    from bastion.runtime.launcher import LaunchConfig, in_launched_worker, launch
    from bastion.runtime.preflight import check_request

    if in_launched_worker() and nproc is None:
        import os

        from bastion.runtime.train import TrainConfig, run_worker

        config = TrainConfig(model=model, plan=str(plan), data=str(data), steps=steps, run_dir=str(run_dir),
                             seed=seed, seq_len=seq_len, lr=lr, compile=compile_model, cluster=cluster,
                             progress=progress)
        check_request(model, str(plan), str(data), int(os.environ["WORLD_SIZE"]), steps, seq_len)
        run_worker(config)
        return
    from bastion.specs.plan import ParallelPlan

    world = nproc if nproc is not None else ParallelPlan.load(plan).num_gpus
    request = check_request(model, str(plan), str(data), world, steps, seq_len)
    from rich.console import Console

    Console(stderr=True).print(
        f"[bold]bastion train[/]: {request.spec.name} on {world} process(es), plan dp{request.plan.dp} "
        f"tp{request.plan.tp} pp{request.plan.pp} zero{request.plan.zero_stage}, {steps} steps → {run_dir}")
    code = launch(LaunchConfig(nproc=world), _args_from_context(ctx, drop={"nproc"}))
    if code != 0:
        from bastion.errors import LaunchError

        raise LaunchError(f"The training workers exited with code {code}.",
                          fix="read the worker output above; rerun with BASTION_DEBUG=1 for tracebacks.")


@data_app.command("prepare")
def data_prepare_command(
    texts: list[Path] = typer.Argument(..., help="Text files or directories (read recursively)."),
    out: Path = typer.Option(..., "--out", help="Dataset directory to write."),
    tokenizer: Path | None = typer.Option(None, "--tokenizer", help="HuggingFace tokenizer.json "
                                                                     "(default: built-in byte-level)."),
    max_mb: float | None = typer.Option(None, "--max-mb", help="Stop after this many MB of text."),
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
