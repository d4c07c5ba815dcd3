"""`bastion train` (check the request, write the run config, start workers with torchrun), the hidden worker
entry `bastion _worker CONFIG` every engine starts, and `bastion data prepare`.

torch is imported only inside a worker; the checks that can fail on user input run first, in this process.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from bastion.cli import app
from bastion.commands import options
from bastion.commands.options import number_option
from bastion.specs.model import ModelSpec
from bastion.specs.plan import ParallelPlan

data_app = typer.Typer(help="Token datasets for `bastion train`.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@app.command("train")
def train_command(
    ctx: typer.Context,
    model: options.RunModel = None,
    plan: options.RunPlan = None,
    data: options.RunData = None,
    steps: options.RunSteps = None,
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Where metrics.jsonl, summary.json and "
                                        "checkpoints go. Required, here or in --config."),
    nproc: int | None = typer.Option(None, "--nproc", help="Start this many local worker processes (torchrun)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the parameter init and the data order."),
    seq_len: options.SeqLen = None,
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (warmup, then cosine to a tenth)."),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile each block."),
    fp8_recipe: str = typer.Option("tensorwise", "--fp8-recipe", help="An fp8 plan's torchao scaling: tensorwise, "
                                   "rowwise or rowwise_with_gw_hp (CUDA 8.9+ GPUs with torchao)."),
    cluster: str | None = typer.Option(None, "--cluster", help="Cluster spec for MFU and the prediction "
                                                               "(default cpu:<world> on CPU), as `bastion estimate "
                                                               "--cluster` takes it (e.g. cpu:4@NAME: a saved "
                                                               "machine profile's rates)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on rank 0."),
    # ---- fault tolerance (runtime/resilience.py) ----
    checkpoint_every: str = typer.Option("0", "--checkpoint-every", help="Checkpoint every N steps, or `auto` "
                                         "(Young/Daly from the measured save stall and the MTBF); the final step "
                                         "is always saved (0 = only the final; `never` = not even that)."),
    mtbf_hours: float | None = typer.Option(None, "--mtbf-hours", help="MTBF for `auto` (default: published "
                                            "failure rate × number of devices)."),
    inject: list[str] = typer.Option([], "--inject", help="Inject a fault (repeatable): kill:rank=1,step=7, "
                                     "hang:rank=0,step=5, nan:step=9, kill-during-save:step=8, corrupt-latest, "
                                     "lose-node:rank=3,step=5[,back_at=9], slow:rank=1,factor=3, flaky-link:rank=1, "
                                     "bad-gpu:rank=2 (runtime/faults.py says what each does)."),
    max_restarts: options.MaxRestarts = 0,
    keep_last: int = typer.Option(3, "--keep-last", help="Keep the newest K checkpoints."),
    keep_every: int = typer.Option(0, "--keep-every", help="Also keep every checkpoint whose step is a multiple "
                                   "of N (0 = none)."),
    async_checkpoint: bool = typer.Option(True, "--async-checkpoint/--sync-checkpoint",
                                          help="Write checkpoints in the background (dcp.async_save) or block."),
    resume: bool | None = typer.Option(None, "--resume/--no-resume", help="Continue from the newest valid "
                                       "checkpoint in RUN_DIR/checkpoints when there is one (the default); given, "
                                       "also when RUN_DIR holds a run of another model, plan or settings."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over in a RUN_DIR that holds a run: its files "
                                   "move to RUN_DIR/replaced-DATE-TIME/ (nothing is deleted)."),
    resume_from: Path | None = typer.Option(None, "--resume-from", help="Start from this checkpoint (or run "
                                            "directory) when RUN_DIR has none; the plan may differ."),
    stop_after_step: int = typer.Option(0, "--stop-after-step", help="Checkpoint and stop after this step "
                                        "(e.g. before maintenance or a plan change); 0 = run to --steps."),
    hang_timeout_s: float = typer.Option(60.0, "--hang-timeout-s", help="A step is hung after max(10× the "
                                         "recent median, this many seconds), or 10× this before any step time "
                                         "is known: stacks dumped, worker aborted, group restarted."),
    skip_batch: list[int] = typer.Option([], "--skip-batch", hidden=True, help="Skip the batch of this step "
                                         "(what the NaN guard does; for reference runs)."),
    restart_from_scratch: bool = typer.Option(False, "--restart-from-scratch", help="Start at step 0 although "
                                              "every checkpoint of RUN_DIR was quarantined as bad (refused "
                                              "otherwise; they stay in checkpoints/quarantine/)."),
    checkpoint_key_file: Path | None = typer.Option(None, "--checkpoint-key-file", help="Key that authenticates "
                                                    "checkpoints (HMAC-SHA256 in each manifest; default: "
                                                    "$BASTION_CHECKPOINT_KEY): ones it does not authenticate are "
                                                    "never resumed."),
    # ---- Hugging Face weights (runtime/hf_weights.py) ----
    init_from: Path | None = typer.Option(None, "--init-from", help="Start a fresh run from the weights of this "
                                          "Hugging Face model directory (Llama, Mixtral, DeepSeek-V3, Qwen3, "
                                          "Qwen3-MoE: config.json + safetensors) instead of a "
                                          "random init; --model is its config.json (or any spec of the same "
                                          "shape)."),
    # ---- config file, evaluation, logs (commands/train_file.py, runtime/train.py) ----
    config: options.ConfigFile = None,
    set_values: options.SetValues = [],  # noqa: B006 - typer reads the default
    eval_every: int = typer.Option(0, "--eval-every", help="Evaluate on the dataset's held-out split every N steps "
                                   "and at the end: eval_loss and perplexity in metrics.jsonl (0 = never)."),
    eval_batches: int = typer.Option(1, "--eval-batches", help="Global batches of held-out samples per "
                                     "evaluation."),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also write TensorBoard event files to "
                                     "RUN_DIR/tensorboard."),
    profile: str | None = typer.Option(None, "--profile", help="START:END: a torch.profiler Chrome trace of those "
                                       "steps in RUN_DIR/profile."),
    as_json: bool = typer.Option(False, "--json", help="At the end print the run's summary (summary.json and "
                                 "the run directory) as one JSON object on stdout; worker output goes to stderr."),
    # ---- health (runtime/stragglers.py, runtime/health.py) ----
    straggler_factor: float = typer.Option(1.5, "--straggler-factor", help="Report a rank whose median compute "
                                           "time over 5 steps is this many times its peers' (or the predicted "
                                           "step time, with --cluster) as a straggler."),
    on_failure: str = typer.Option("requeue", "--on-failure", help="When ranks fail: requeue (restart the same "
                                   "world, --max-restarts times), shrink (a rank whose node is lost: re-plan for "
                                   "the ranks left and continue from the newest checkpoint), spares (Slurm: a lost "
                                   "node swapped for one of launch's --spare-nodes; locally a restart gets a "
                                   "replacement at once, so it runs as requeue), auto (the one with the best "
                                   "predicted goodput: launch/policy.py)."),
    fault_tolerance: str = typer.Option("none", "--fault-tolerance", help="none, or torchft: the plan's "
                                        "data-parallel replicas run as replica groups (each its own torchrun); "
                                        "a failed group is restarted and heals from a live peer while the others "
                                        "keep stepping (its samples of the steps it missed are not trained on); "
                                        "one group writes the run's checkpoints, which a new launch resumes "
                                        "when every group was lost. Needs pip install 'bastion[ft]'."),
    replica_groups: Annotated[int | None, number_option(
        "--replica-groups", help="With --fault-tolerance torchft: how many groups the plan's dp replicas form (a "
        "divisor of dp, >= 2; default dp: every replica its own group).", integer=True, low=2, high=1024,
        fix="e.g. --replica-groups 2.")] = None,
) -> None:
    """Train MODEL with a parallel PLAN on a token dataset; writes metrics and predicted-vs-measured."""
    from bastion.errors import USER_ERROR_EXIT, ConfigError, LaunchError

    if all(key in os.environ for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        raise ConfigError("`bastion train` runs under torchrun here (RANK, WORLD_SIZE and LOCAL_RANK are set), "
                          "but it starts its own workers.",
                          fix="run `bastion train` directly (--nproc N for N local workers), or `bastion launch "
                              "--on slurm|k8s` for a cluster.")
    params = train_params(ctx)
    run = resolve_run(params, world_size=params.pop("nproc"))
    from rich.console import Console

    plan = run.plan
    Console(stderr=True).print(
        f"[bold]bastion train[/]: {run.spec.name} on {run.world_size} process(es), plan dp{plan.dp} tp{plan.tp} "
        f"pp{plan.pp} zero{plan.zero_stage}, {params['steps']} steps → {run.run_dir}")
    code = run_locally(run, workers_to_stderr=as_json)
    if code == USER_ERROR_EXIT:
        raise SystemExit(code)  # the workers refused the request and printed what to fix
    if code != 0:
        raise LaunchError(f"The training workers exited with code {code}.",
                          fix="read the worker output above; rerun with BASTION_DEBUG=1 for tracebacks.")
    _print_time_breakdown(run.run_dir)
    if as_json:
        print_run_json(run.run_dir)


def print_run_json(run_dir: Path) -> None:
    """`--json`: summary.json with the run directory, one object on stdout (what `bastion report --json` expands)."""
    from bastion.outputs import dumps_json
    from bastion.rundir.summary import read_summary

    typer.echo(dumps_json({"run_dir": str(run_dir), **(read_summary(run_dir) or {})}, default=str))


#: what `bastion train` cannot run without (a flag or a --config key)
REQUIRED = ("model", "plan", "data", "steps", "run_dir")


def train_params(ctx: Any) -> dict[str, Any]:
    """`bastion train`'s settings: flags given on the command line, then --set, then --config, then defaults;
    the optimizer settings that have no flag are added under their TrainConfig names."""
    from typer._click.core import ParameterSource
    from typer._click.exceptions import BadParameter

    from bastion.commands.train_file import check_optimizer_settings, load_config_file, parse_sets
    from bastion.errors import BastionError, ConfigError

    params = dict(ctx.params)
    file_values = load_config_file(params["config"]) if params["config"] is not None else {}
    overrides = {**file_values, **parse_sets(params["set_values"])}
    by_name = {param.name: param for param in ctx.command.params}
    given = {name for name in params if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    for name, value in overrides.items():
        if name not in by_name or name in given:
            continue
        if name == "plan" and isinstance(value, dict):  # the [plan] table: checked as a plan by resolve_run
            params[name] = value
            continue
        try:
            value = by_name[name].process_value(ctx, str(value) if name == "checkpoint_every" else value)
        except BadParameter as exc:
            raise ConfigError(f"Setting {name}: {exc.format_message()}",
                              fix="give it a value of the right type in --config or --set.") from None
        except BastionError as exc:  # a checked number (commands/options.py) out of its range
            raise ConfigError(f"Setting {name} (--config or --set): {exc.problem}",
                              fix=exc.fix or "give it a value of the right type in --config or --set.") from None
        params[name] = value
    missing = [name for name in REQUIRED if params.get(name) is None]
    if missing:
        flags = ", ".join("--" + name.replace("_", "-") for name in missing)
        raise ConfigError(f"`bastion train` needs {flags}.",
                          fix=f"give {flags} on the command line, or {', '.join(missing)} in a --config file.")
    return {**params, **check_optimizer_settings(overrides)}


@dataclass(frozen=True)
class ResolvedRun:
    """A checked `bastion train` request and the run config its workers read."""

    config: dict[str, Any]
    spec: ModelSpec
    plan: ParallelPlan
    world_size: int
    max_restarts: int
    run_dir: Path
    #: requeue, shrink or spares (a Slurm job with spare nodes; locally spares is requeue); `auto` resolved by
    #: predicted goodput (launch/policy.py)
    on_failure: str = "requeue"
    #: --overwrite of a run directory that holds a run: set that run aside before this one starts
    overwrite: bool = False


def resolve_run(params: dict[str, Any], world_size: int | None, paths_here: bool = True,
                engine_restarts: int = 0, engine: str = "local", spare_nodes: int = 0,
                job_nodes: Callable[[int], int] | None = None) -> ResolvedRun:
    """`bastion train`'s options (as click parsed them, for `train` and for `launch … -- ARGS`) checked and resolved
    into the run config, before any process starts: flag values, the model, the plan against the model and the
    world size (default: the plan's), the injected faults; where the paths are visible here (`paths_here`) also the
    dataset and the run directory with its resume source (`runtime.preflight.check_run_dir`). `engine_restarts`:
    the restarts the launch engine gives a failed worker group beyond torchrun's (a Slurm job's requeues);
    `engine` and `spare_nodes` (a Slurm job's hot spares): what `--on-failure` can run (launch/policy.py);
    `job_nodes`: the machines a scheduler spreads the plan's N workers over (None: this machine)."""
    from bastion.commands.train_file import FILE_ONLY
    from bastion.errors import ConfigError, did_you_mean
    from bastion.launch.worker import run_config
    from bastion.rundir.lock import check_free
    from bastion.rundir.occupant import check_occupant
    from bastion.runtime.faults import FATAL, check_faults, parse_fault
    from bastion.runtime.preflight import check_request, check_run_dir

    p = params
    _check_train_flags(world_size, p["lr"], p["cluster"], p["seed"])
    from bastion.runtime.train_config import FP8_RECIPES

    if p["fp8_recipe"] not in FP8_RECIPES:
        raise ConfigError(f"Unknown --fp8-recipe '{p['fp8_recipe']}'.{did_you_mean(p['fp8_recipe'], FP8_RECIPES)}",
                          fix=f"use one of {', '.join(FP8_RECIPES)}.")
    _check_eval_and_logs(p["eval_every"], p["eval_batches"], p["tensorboard"], p["profile"], p["steps"])
    health = _health_options(p)
    on_failure = _on_failure(p)
    resilience = _resilience_config(p["checkpoint_every"], p["mtbf_hours"], p["inject"], p["keep_last"],
                                    p["keep_every"], p["async_checkpoint"], p["resume"] is not False,
                                    p["resume_from"],
                                    p["stop_after_step"], p["hang_timeout_s"], p["skip_batch"],
                                    p["restart_from_scratch"], p["checkpoint_key_file"])
    model, run_dir, steps = p["model"], Path(p["run_dir"]), p["steps"]
    # a plan file, or the [plan] table of --config
    plan_source = (ParallelPlan.from_dict(p["plan"], "the [plan] table of --config") if isinstance(p["plan"], dict)
                   else str(Path(p["plan"])))
    request = check_request(model, plan_source, str(p["data"]) if paths_here else None, world_size, steps,
                            p["seq_len"], evaluate=p["eval_every"] > 0)
    world_size = request.plan.num_gpus
    check_faults([parse_fault(s) for s in resilience.inject], world_size, steps)
    needs_checkpoints = [s for s in resilience.inject if s.split(":")[0] in ("kill-during-save", "corrupt-latest")]
    if needs_checkpoints and resilience.checkpoint_every == 0:
        raise ConfigError(f"--inject {needs_checkpoints[0]} needs checkpoints, but --checkpoint-every is 0.",
                          fix="add --checkpoint-every N.")
    replica_section = _replica_groups(p, request, resilience, on_failure)
    asked = on_failure
    if on_failure == "spares" and engine == "local":
        print("bastion: --on-failure spares on this machine: a restart gets its replacement at once, which is what "
              "requeue does, so it runs as requeue", file=sys.stderr, flush=True)
        on_failure = "requeue"
    nodes = job_nodes(request.plan.num_gpus) if job_nodes is not None else None
    choice = _auto_policy(on_failure, p, request, resilience, engine, (spare_nodes, nodes), replica_section is not None)
    on_failure = choice.policy if choice is not None else on_failure
    shrinking = on_failure == "shrink" and replica_section is None
    if shrinking and resilience.checkpoint_every == 0:
        raise ConfigError(f"--on-failure {on_failure} continues from the newest checkpoint, but --checkpoint-every "
                          f"is 0.", fix="add --checkpoint-every N (or auto).")
    # a lost node under shrink is a re-plan, not a restart
    fatal = [spec for spec in resilience.inject if spec.split(":")[0] in FATAL
             and not (shrinking and spec.startswith("lose-node"))]
    if len(fatal) > p["max_restarts"] + engine_restarts:
        also = f" (and the engine restarts it {engine_restarts} time(s))" if engine_restarts else ""
        raise ConfigError(f"{len(fatal)} injected fault(s) ({', '.join(fatal)}) each end the worker group, but "
                          f"--max-restarts is {p['max_restarts']}{also}: the run would fail instead of recovering.",
                          fix=f"add --max-restarts {len(fatal)} (or more) so torchrun restarts the group and it "
                              f"resumes from its newest checkpoint.")
    init_from = _init_from(p.get("init_from"), request.spec, resilience.resume_from, paths_here)
    plan_record = plan_source if isinstance(plan_source, str) else "[plan] of --config"
    train = {"model": _model_argument(model), "plan": plan_record, "data": str(p["data"]), "steps": steps,
             "run_dir": str(run_dir), "seed": p["seed"], "seq_len": p["seq_len"], "lr": p["lr"],
             "compile": p["compile_model"], "fp8_recipe": p["fp8_recipe"], "cluster": p["cluster"],
             "progress": p["progress"],
             "init_from": init_from, "eval_every": p["eval_every"], "eval_batches": p["eval_batches"],
             "tensorboard": p["tensorboard"], "profile": p["profile"],
             **{name: p[name] for name in FILE_ONLY if name in p}, **health, "resilience": asdict(resilience)}
    config = run_config(train, request.spec, request.plan, world_size)
    if replica_section is not None:
        from bastion.launch.replica_groups import REPLICA_GROUPS_KEY

        config[REPLICA_GROUPS_KEY] = replica_section
    from bastion.launch.policy import ON_FAILURE_KEY, on_failure_record

    config[ON_FAILURE_KEY] = on_failure_record(asked, "replica-drop" if replica_section else on_failure, choice)
    overwrite = bool(p.get("overwrite"))
    if paths_here:
        occupant = check_occupant(run_dir, config, resume=p["resume"] is True, overwrite=overwrite)
        overwrite = overwrite and occupant is not None
        if overwrite:  # the run there is set aside when this one starts: nothing of it is resumed
            check_free(run_dir)
        else:
            check_run_dir(run_dir, resilience, request.spec, request.plan, steps, data=str(p["data"]),
                          seed=p["seed"])
    return ResolvedRun(config=config, spec=request.spec, plan=request.plan, world_size=world_size,
                       max_restarts=p["max_restarts"], run_dir=run_dir,
                       on_failure="requeue" if replica_section else on_failure,
                       overwrite=overwrite)


def _auto_policy(on_failure: str, p: dict[str, Any], request: Any, resilience: Any, engine: str,
                 machines: tuple[int, int | None], torchft: bool) -> Any:
    """`--on-failure auto` decided by predicted goodput over what this launch can run (a PolicyChoice, printed
    on stderr; None for any other value, after refusing `spares` where it cannot run). `machines`: (spare
    nodes, the job's nodes or None for this machine)."""
    from bastion.launch.policy import candidate_policies, check_spares, choose_policy, run_policy_inputs

    spare_nodes, nodes = machines
    check_spares(on_failure, engine, spare_nodes)
    if on_failure != "auto":
        return None
    inputs = run_policy_inputs(request.spec, request.plan, p["cluster"], resilience.mtbf_hours,
                               resilience.checkpoint_every, spare_nodes, nodes)
    candidates = candidate_policies(request.plan, spare_nodes, torchft, resilience.checkpoint_every != 0)
    choice = choose_policy(inputs, candidates)
    # under torchft a failed replica group is dropped and heals whatever auto predicts: say how to get the other
    also = ("; --fault-tolerance torchft still drops and heals replica groups: drop it to requeue"
            if torchft and choice.policy != "replica-drop" else "")
    print(f"bastion: {choice.line()}{also}", file=sys.stderr, flush=True)
    return choice


def _replica_groups(p: dict[str, Any], request: Any, resilience: Any, on_failure: str) -> dict[str, Any] | None:
    """--fault-tolerance / --replica-groups checked (launch/replica_groups.py): the run config's section."""
    from bastion.errors import ConfigError
    from bastion.launch.replica_groups import check_fault_tolerance

    mode = p.get("fault_tolerance", "none")
    section = check_fault_tolerance(mode, request.plan, request.spec, p.get("replica_groups"),
                                    resilience.checkpoint_every)
    if section is None:
        return None
    if on_failure not in ("requeue", "auto"):
        raise ConfigError(f"--on-failure {on_failure} and --fault-tolerance torchft both decide what a failure "
                          f"does.", fix="drop --on-failure: under torchft a failed replica group is restarted "
                                        "(--max-restarts) and heals from a live peer.")
    if p["eval_every"]:
        raise ConfigError("--eval-every is not supported with --fault-tolerance torchft (each replica group "
                          "would evaluate only its share).", fix="drop --eval-every, or --fault-tolerance.")
    return section


def _health_options(p: dict[str, Any]) -> dict[str, Any]:
    """The run config's health fields from `bastion train`'s options (runtime/train_config.py)."""
    import math

    from bastion.errors import ConfigError

    factor = p.get("straggler_factor", 1.5)
    if not (math.isfinite(factor) and factor > 1.0):
        raise ConfigError(f"--straggler-factor must be a number above 1, got {factor:g}.",
                          fix="e.g. --straggler-factor 1.5 (a rank 1.5× slower than its peers is reported).")
    return {"straggler_factor": factor}


def _on_failure(p: dict[str, Any]) -> str:
    from bastion.errors import ConfigError, did_you_mean
    from bastion.launch.policy import ON_FAILURE

    value = p.get("on_failure", "requeue")
    if value not in ON_FAILURE:
        raise ConfigError(f"--on-failure {value!r} is not a recovery policy.{did_you_mean(value, ON_FAILURE)}",
                          fix=f"use one of: {', '.join(ON_FAILURE)}.")
    return value


def _init_from(init_from: Path | None, spec: ModelSpec, resume_from: str | None, paths_here: bool) -> str | None:
    """`--init-from`, checked against the model (config and safetensors headers) where the path is visible here;
    an absolute path for the workers."""
    if init_from is None:
        return None
    from bastion.errors import ConfigError
    from bastion.interop.hf_files import check_init_from

    if resume_from:
        raise ConfigError("--init-from and --resume-from both say where the run starts.",
                          fix="give --init-from HF_DIR for a fresh fine-tune, or --resume-from CHECKPOINT to "
                              "continue a bastion run.")
    if not paths_here:
        return str(init_from)
    check_init_from(Path(init_from), spec)
    return str(Path(init_from).resolve())


def _model_argument(model: str) -> str:
    """A preset name as given; a model file by absolute path (for the record: workers read the spec itself)."""
    path = Path(model)
    return str(path.resolve()) if path.suffix in (".toml", ".json") or path.exists() else model


def run_locally(run: ResolvedRun, python: str = "", workers_to_stderr: bool = False) -> int:
    """Start the run's workers with torchrun on this machine and wait; holds the run directory's lock for the
    whole run (every elastic restart included) and writes the run config into it. torchrun's exit code.
    `workers_to_stderr`: their stdout too goes to stderr (stdout is kept for `--json`)."""
    from bastion.launch import local
    from bastion.launch.replica_groups import REPLICA_GROUPS_KEY
    from bastion.launch.worker import write_run_config
    from bastion.rundir.layout import RUN_CONFIG_FILE
    from bastion.rundir.lock import acquire

    if run.plan.precision == "fp8":  # refused here, before anything is written, when this machine cannot run it
        from bastion.runtime.float8 import check_fp8_runnable_here

        check_fp8_runnable_here(run.plan.tp)
    with acquire(run.run_dir):
        if run.overwrite:
            announce_set_aside(run.run_dir)
        config_path = run.run_dir / RUN_CONFIG_FILE
        if REPLICA_GROUPS_KEY in run.config:
            return _run_replica_groups(run, config_path, python, workers_to_stderr)
        if run.on_failure == "shrink":
            return _run_shrinking(run, config_path, python)
        write_run_config(config_path, {**run.config, "run_dir_lock": "launcher"})
        return local.run(local.torchrun_command(run.world_size, run.max_restarts, str(config_path), python),
                         stdout_to_stderr=workers_to_stderr, run_dir=run.run_dir)


def announce_set_aside(run_dir: Path) -> None:
    """--overwrite: move the run held in `run_dir` aside (rundir/occupant.py) and say where, on stderr."""
    from rich.console import Console

    from bastion.rundir.occupant import set_aside

    moved = set_aside(run_dir)
    if moved is not None:
        folder, names = moved
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            f"--overwrite: moved the previous run's {', '.join(names)} to {folder}/ (delete it when no longer "
            f"needed)")


def _run_replica_groups(run: ResolvedRun, config_path: Path, python: str, workers_to_stderr: bool) -> int:
    """--fault-tolerance torchft: the lighthouse and one torchrun per replica group (launch/replica_groups.py);
    the run's plan files are written here (each group runs only its part of the plan)."""
    from bastion.launch.replica_groups import REPLICA_GROUPS_KEY, run_replica_groups
    from bastion.launch.worker import write_run_config
    from bastion.rundir.layout import write_run_files

    write_run_config(config_path, {**run.config, "run_dir_lock": "launcher"})
    write_run_files(run.run_dir, run.spec, run.plan)
    section = run.config[REPLICA_GROUPS_KEY]
    return run_replica_groups(config_path, section["groups"], section["group_world_size"], run.max_restarts,
                              run.run_dir, python, stdout_to_stderr=workers_to_stderr)


def _run_shrinking(run: ResolvedRun, config_path: Path, python: str) -> int:
    """--on-failure shrink: torchrun without elastic restarts, relaunched (smaller when a node is lost) by
    launch/shrink.py."""
    from bastion.launch import local
    from bastion.launch.shrink import run_shrinking
    from bastion.launch.worker import run_config, write_run_config

    def launch(config: dict[str, Any], world: int) -> int:
        write_run_config(config_path, {**config, "run_dir_lock": "launcher"})
        return local.run(local.torchrun_command(world, 0, str(config_path), python), run_dir=run.run_dir)

    return run_shrinking(run.run_dir, run.spec, run.plan, run.config, run.max_restarts, launch,
                         lambda plan: run_config(run.config["train"], run.spec, plan, plan.num_gpus))


@app.command("_worker", hidden=True)
def worker_command(
    config_path: Path = typer.Argument(..., help="run_config.json written by `bastion train` / `bastion launch`."),
) -> None:
    """One training worker, started by torchrun (locally, under srun, in a pod); reads only CONFIG_PATH. A worker
    started as `python -m bastion _worker CONFIG` comes straight to launch/worker.py (bastion/__main__.py)."""
    from bastion.runtime.worker_entry import start_worker

    start_worker(config_path)


def _check_train_flags(nproc: int | None, lr: float, cluster: str | None, seed: int) -> None:
    """Flag values that would otherwise fail inside N workers (or silently mean something else); --seq-len and
    --max-restarts are checked as they are parsed (commands/options.py)."""
    import math

    from bastion.errors import ConfigError

    if nproc is not None and nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}.",
                          fix="give the number of worker processes, dp × tp × pp × cp of the plan.")
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"--lr must be a positive learning rate, got {lr:g}.", fix="e.g. --lr 3e-4.")
    if not 0 <= seed < 2**63:
        raise ConfigError(f"--seed must be a whole number from 0 to 2^63 - 1, got {seed}.", fix="e.g. --seed 0.")
    if cluster is not None:
        from bastion.specs.hardware import load_cluster

        load_cluster(cluster)  # an unknown name is a guidance error now, not a missing prediction later


def _check_eval_and_logs(eval_every: int, eval_batches: int, tensorboard: bool, profile: str | None,
                         steps: int) -> None:
    from bastion.errors import ConfigError

    if eval_every < 0 or eval_batches < 1:
        raise ConfigError(f"--eval-every must be >= 0 and --eval-batches >= 1, got {eval_every} and {eval_batches}.",
                          fix="e.g. --eval-every 50 --eval-batches 4 (--eval-every 0: no evaluation).")
    if tensorboard:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("--tensorboard needs the tensorboard package, which is not installed.",
                              fix="pip install tensorboard (or bastion[interop]), or drop --tensorboard: "
                                  "metrics.jsonl has the same figures.")
    if profile is not None:
        from bastion.runtime.train_config import profile_steps

        window = profile_steps(profile)
        if window is not None and window[1] > steps:
            raise ConfigError(f"--profile {profile} ends after the run's last step ({steps}).",
                              fix=f"give steps from 1 to {steps}.")


def _print_time_breakdown(run_dir: Path) -> None:
    """Where the run's wall time went (from summary.json's fault-tolerance accounting), one line."""
    from bastion.errors import BastionError
    from bastion.rundir.summary import read_summary

    try:
        summary = read_summary(run_dir)
        parts = summary["time_breakdown_s"] if summary else None
    except (OSError, BastionError, KeyError):
        return
    if parts is None:
        return
    from rich.console import Console

    shares = ", ".join(f"{name.removesuffix('_s').replace('_', ' ')} {parts[name]:.1f} s"
                       for name in ("productive_s", "lost_s", "checkpoint_stall_s", "recovery_s", "other_s"))
    groups = summary.get("replica_groups")
    # under torchft a bad step is skipped by every group, nothing is rolled back (runtime/resilience.py)
    refused = "bad step(s) skipped" if groups else "rollback(s)"
    Console(stderr=True).print(
        f"[bold]where the time went[/] ({parts['wall_s']:.1f} s): {shares}; goodput {summary['goodput']:.1%}, "
        f"{summary['restarts']} restart(s), {summary['rollbacks']} {refused}, {summary['lost_steps']} lost step(s)")
    if groups:  # --fault-tolerance torchft: say which samples were not trained on, never claim them all
        Console(stderr=True).print(
            f"[bold]replica groups[/] ({groups['groups']}): {groups['drops']} drop(s), {groups['rejoins']} "
            f"rejoin(s), {groups['steps_with_fewer_groups']} step(s) without every group; "
            f"{groups['samples_trained']} samples trained on, {groups['samples_dropped']} dropped (the missing "
            f"groups' shares of those steps: dropped_sample_ids in metrics.jsonl)")


def _resilience_config(checkpoint_every: str, mtbf_hours: float | None, inject: list[str], keep_last: int,
                       keep_every: int, async_checkpoint: bool, resume: bool, resume_from: Path | None,
                       stop_after_step: int, hang_timeout_s: float, skip_batch: list[int],
                       restart_from_scratch: bool = False, checkpoint_key_file: Path | None = None):
    import math

    from bastion.errors import ConfigError
    from bastion.runtime.faults import parse_fault
    from bastion.runtime.resilience_config import ResilienceConfig

    text = str(checkpoint_every).strip().lower()
    save_final = text != "never"
    if text == "auto":
        every = -1
    elif text.isdigit() or text == "never":
        every = int(text) if save_final else 0
    else:
        raise ConfigError(f"--checkpoint-every {checkpoint_every!r} is neither a step count nor 'auto'.",
                          fix="pass --checkpoint-every N (N >= 0; 0 = only the final step), --checkpoint-every "
                              "auto, or --checkpoint-every never.")
    if mtbf_hours is not None and not (math.isfinite(mtbf_hours) and mtbf_hours > 0):
        raise ConfigError(f"--mtbf-hours must be a positive number of hours, got {mtbf_hours:g}.",
                          fix="give the mean time between failures of the whole job, e.g. --mtbf-hours 24, or "
                              "leave it out for the published failure rate × devices.")
    if not (math.isfinite(hang_timeout_s) and hang_timeout_s > 0):
        raise ConfigError(f"--hang-timeout-s must be a positive number of seconds, got {hang_timeout_s:g}.",
                          fix="e.g. --hang-timeout-s 60 (the watchdog cannot be switched off: a hung collective "
                              "would block the run for good).")
    if keep_last < 1:
        raise ConfigError(f"--keep-last must be >= 1, got {keep_last}: a run keeps at least its newest checkpoint "
                          f"to resume from.", fix="e.g. --keep-last 3.")
    if keep_every < 0 or stop_after_step < 0:
        raise ConfigError(f"--keep-every and --stop-after-step must be >= 0, got {keep_every} and "
                          f"{stop_after_step}.", fix="give 0 (off) or a step count.")
    bad_skips = [step for step in skip_batch if step < 1]
    if bad_skips:
        raise ConfigError(f"--skip-batch {bad_skips[0]} is not a step: steps count from 1.",
                          fix="give the (1-based) step whose batch to skip.")
    for spec in inject:
        parse_fault(spec)  # a guidance error now, not in N workers later
    return ResilienceConfig(checkpoint_every=every, save_final=save_final, mtbf_hours=mtbf_hours, keep_last=keep_last,
                            keep_every=keep_every, async_checkpoint=async_checkpoint, inject=tuple(inject),
                            resume=resume, resume_from=str(resume_from) if resume_from else None,
                            skip_batches=tuple(skip_batch), stop_after_step=stop_after_step,
                            hang_min_s=hang_timeout_s, restart_from_scratch=restart_from_scratch,
                            checkpoint_key_file=str(checkpoint_key_file) if checkpoint_key_file else None)


@data_app.command("prepare")
def data_prepare_command(
    texts: list[Path] = typer.Argument(..., help="Text, JSON Lines (*.jsonl) or Parquet files, directories of "
                                                 "them (read recursively), or Hugging Face `datasets` "
                                                 "directories (save_to_disk)."),
    out: Path = typer.Option(..., "--out", help="Dataset directory to write."),
    tokenizer: Path | None = typer.Option(None, "--tokenizer", help="HuggingFace tokenizer.json "
                                                                     "(default: built-in byte-level)."),
    max_mb: Annotated[float | None, number_option("--max-mb", help="Stop after this many MB of text.", above=0,
                                                  high=1e9, fix="give how many MB of text to read (e.g. --max-mb "
                                                                "100), or leave it out for all.")] = None,
    as_json: bool = typer.Option(False, "--json", help="Print the dataset's meta.json."),
    # ---- formats, end of document, held-out split, processes (runtime/documents.py, runtime/data.py) ----
    field: str = typer.Option("text", "--field", "--jsonl-field", help="The JSON Lines field / Parquet or "
                              "`datasets` column that holds each document's text."),
    eod_token: str | None = typer.Option(None, "--eod-token", help="The tokenizer's end-of-document token "
                                         "(default: its eos token; the byte tokenizer's is byte 0)."),
    eval_fraction: float = typer.Option(0.0, "--eval-fraction", help="Hold out this last share of the tokens "
                                        "for `bastion train --eval-every` (e.g. 0.01)."),
    workers: Annotated[int, number_option("--workers", help="Tokenise in this many processes (order kept).",
                                          integer=True, low=1, high=1024,
                                          fix="e.g. --workers 4 (or 1: no extra processes).")] = 1,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr."),
) -> None:
    """Tokenise documents into a memory-mapped token dataset for `bastion train --data`."""
    import json
    import sys

    from bastion.runtime.data import prepare_dataset

    meta = prepare_dataset(texts, out, tokenizer, int(max_mb * 1e6) if max_mb else None, field=field,
                           eod_token=eod_token, workers=workers, eval_fraction=eval_fraction,
                           progress=progress and not as_json and sys.stderr.isatty())
    if as_json:
        typer.echo(json.dumps(meta))
    else:
        held_out = f", {meta['eval_tokens']:,} held out for evaluation" if meta.get("eval_tokens") else ""
        typer.echo(f"wrote {meta['num_tokens']:,} tokens ({meta['dtype']}, vocab {meta['vocab_size']}, "
                   f"{meta['documents']} documents{held_out}) to {out}")
