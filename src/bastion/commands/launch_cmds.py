"""`bastion launch`, then `bastion status|logs|cancel RUN_DIR|JOBID|NAME`: start a plan on torchrun, Slurm or
Kubernetes, then follow and stop it through its run directory's launch record (launch.json), the scheduler or
kubectl."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from bastion.cli import app
from bastion.commands import options
from bastion.errors import LaunchError

if TYPE_CHECKING:
    from collections.abc import Callable

    from bastion.commands.train_cmds import ResolvedRun
    from bastion.launch.request import WorkerLayout


@app.command("launch", context_settings={"allow_extra_args": True})
def launch_command(
    ctx: typer.Context,
    task: Path | None = typer.Argument(None, help="Task file (TOML): `on`, `name`, [resources], [slurm], [k8s], "
                                                  "and the training config file as its [train] table; flags "
                                                  "override it."),
    on: str | None = typer.Option(None, "--on", help="Engine: local (torchrun here), slurm (sbatch) or k8s "
                                                     "(manifests). Required, here or in the task file."),
    model: options.RunModel = None,
    plan_path: options.RunPlan = None,
    data: options.RunData = None,
    run_dir: str | None = typer.Option(None, "--run-dir",
                                       help="Run directory (metrics, summary, checkpoints); every (re)start resumes "
                                            "from it. For k8s, the path inside the pods where the claim is mounted "
                                            "(or --config)."),
    steps: options.RunSteps = None,
    config: options.ConfigFile = None,
    set_values: options.SetValues = [],  # noqa: B006 - typer reads the default
    seq_len: options.SeqLen = None,
    nodes: int | None = typer.Option(None, "--nodes", help="Machines (Slurm nodes, pods)."),
    gpus_per_node: int | None = typer.Option(None, "--gpus-per-node",
                                             help="Workers per node: GPUs, or CPU workers with --device cpu."),
    device: str = typer.Option("gpu", "--device", help="gpu, or cpu (gloo on CPU cores)."),
    name: str | None = typer.Option(None, "--name", help="Job name (default: the run directory's name)."),
    time: options.TimeLimit = None,
    partition: options.Partition = None,
    signal_lead: int | None = typer.Option(None, "--signal-lead",
                                           help="Slurm: seconds before the time limit to checkpoint and requeue."),
    requeue_exit: int = typer.Option(42, "--requeue-exit", help="Slurm: the cluster's RequeueExit code."),
    max_requeues: int = typer.Option(3, "--max-requeues",
                                     help="Slurm: a failed step is requeued while the job has been restarted "
                                          "fewer times than this (all restarts count)."),
    cpus_per_worker: int = typer.Option(1, "--cpus-per-worker", help="Slurm: cores per worker (OMP threads)."),
    max_restarts: options.MaxRestarts = 0,
    image: options.Image = "",
    k8s_kind: options.K8sKind = "pytorchjob",
    queue: options.Queue = "",
    storage: options.Storage = "100Gi",
    manifest: Path | None = typer.Option(None, "--manifest",
                                         help="k8s: where to write the YAML (default ./NAME-KIND.yaml)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --run-dir also when it was started "
                                "with another model, plan or settings (a new plan reshards its checkpoint)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over in a --run-dir that holds a run: its "
                                   "files move to RUN_DIR/replaced-DATE-TIME/ when the job starts (nothing is "
                                   "deleted)."),
    min_nodes: options.MinNodes = None,
    spare_nodes: options.SpareNodes = 0,
    account: options.Account = None,
    qos: options.Qos = None,
    gres: options.Gres = None,
    constraint: options.Constraint = None,
    exclusive: options.Exclusive = False,
    exclude: options.Exclude = None,
    container_image: options.ContainerImage = None,
    sbatch_args: options.SbatchArgs = [],  # noqa: B006 - typer reads the default
    switches: options.Switches = None,
    topology_label: options.TopologyLabel = "",
    node_selector: options.NodeSelector = [],  # noqa: B006
    tolerations: options.Toleration = [],  # noqa: B006
    service_account: options.ServiceAccount = "",
    priority_class: options.PriorityClass = "",
    requests: options.Requests = [],  # noqa: B006
    limits: options.Limits = [],  # noqa: B006
    gpu_resource: options.GpuResource = "nvidia.com/gpu",
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the command, script or YAML; do nothing else."),
    submit: bool = typer.Option(False, "--submit", help="Submit (sbatch / kubectl apply) after writing."),
    as_json: bool = typer.Option(False, "--json", help="Print what was done as one JSON object: with --dry-run "
                                 "the command, script or manifests and the run config; else what was written or "
                                 "submitted (a local run: its summary)."),
) -> None:
    """Start a plan's training job: torchrun here, an sbatch job, or a PyTorchJob/JobSet (from flags, or from one
    task file: `bastion launch task.toml`).

    Arguments after `--` go to `bastion train` unchanged (e.g. `-- --checkpoint-every 50 --seed 1`).
    """
    from bastion.commands.train_cmds import run_locally
    from bastion.launch import kubernetes, local, registry, slurm
    from bastion.launch.request import (
        LaunchRequest,
        check_engine,
        check_tp_inside_nodes,
        parse_time_limit,
        worker_layout,
    )
    from bastion.launch.worker import write_run_config
    from bastion.rundir.launch_record import add_slurm_job
    from bastion.rundir.layout import LAUNCH_DIR, RUN_CONFIG_FILE

    extra = list(ctx.args)
    if task is not None and str(task).startswith("-"):  # no task file: click gave it the first word after `--`
        extra, task = [str(task), *extra], None
    if task is not None:
        if config is not None:
            raise LaunchError("A task file and --config both give the training settings.",
                              fix="put them in the task file's [train] table (or give --config without a task "
                                  "file); --set overrides one setting.")
        config = task  # `bastion train --config TASK` reads its [train] table
        settings = _task_settings(ctx, task)
        on, name, nodes, gpus_per_node, device = (settings.get(k, v) for k, v in (
            ("on", on), ("name", name), ("nodes", nodes), ("gpus_per_node", gpus_per_node), ("device", device)))
        time, partition, signal_lead, requeue_exit, max_requeues, cpus_per_worker = (settings.get(k, v) for k, v in (
            ("time", time), ("partition", partition), ("signal_lead", signal_lead), ("requeue_exit", requeue_exit),
            ("max_requeues", max_requeues), ("cpus_per_worker", cpus_per_worker)))
        image, k8s_kind, queue, storage, max_restarts = (settings.get(k, v) for k, v in (
            ("image", image), ("k8s_kind", k8s_kind), ("queue", queue), ("storage", storage),
            ("max_restarts", max_restarts)))
    if on is None:
        raise LaunchError("`bastion launch` needs --on.", fix="give --on local, slurm or k8s (or `on = ...` in a "
                                                              "task file).")
    engine = check_engine(on)
    if dry_run and submit:
        raise LaunchError("--dry-run and --submit contradict each other.", fix="give one of them.")
    from_file = _from_config(config, set_values)
    model = model or from_file.get("model")
    plan_path = plan_path or from_file.get("plan")
    data = data or from_file.get("data")
    run_dir = run_dir or from_file.get("run_dir")
    steps = steps if steps is not None else from_file.get("steps")
    seq_len = seq_len if seq_len is not None else from_file.get("seq_len")
    if "max_restarts" in from_file and not _given(ctx, "max_restarts"):  # the --config file's, unless overridden
        max_restarts = int(from_file["max_restarts"])
    missing = [flag for flag, value in (("--model", model), ("--plan", plan_path), ("--data", data),
                                        ("--run-dir", run_dir), ("--steps", steps)) if value is None]
    if missing:
        raise LaunchError(f"`bastion launch` needs {', '.join(missing)}.",
                          fix="give them as options, or in the --config file (model, plan, data, run_dir, steps).")
    if engine == "k8s":
        run_dir_text, data_text = str(run_dir), str(data)  # paths inside the pods
    else:
        from bastion.runtime.data import absolute_data

        run_dir_text, data_text = str(Path(run_dir).absolute()), absolute_data(str(data))
    train_args = ["--model", str(model), "--data", data_text, "--run-dir", run_dir_text,
                  "--steps", str(steps), "--max-restarts", str(max_restarts)]
    if not isinstance(plan_path, dict):  # a [plan] table reaches `bastion train` through --config
        train_args += ["--plan", str(plan_path)]
    if seq_len is not None:
        train_args += ["--seq-len", str(seq_len)]
    if config is not None:
        train_args += ["--config", str(config)]
    for item in set_values:
        train_args += ["--set", item]
    if overwrite and engine == "k8s":
        raise LaunchError("--overwrite moves a run directory's files aside here, but a Kubernetes run directory is "
                          "on the job's volume.", fix="give the job a new --run-dir (or a new volume claim).")
    train_args += ["--resume"] * resume + ["--overwrite"] * overwrite
    # a Slurm job requeues (or resubmits) itself after a failed job step: those restarts recover too
    run = _resolve_train_args(train_args, extra, paths_here=engine != "k8s",
                              engine_restarts=max_requeues if engine == "slurm" else 0, engine=engine,
                              spare_nodes=spare_nodes,
                              job_nodes=None if engine == "local"
                              else lambda world: worker_layout(world, nodes, gpus_per_node, device).nodes)
    layout = worker_layout(run.world_size, nodes, gpus_per_node, device)
    job_name = name or Path(run_dir_text).name or "bastion"
    run_config = _with_spares(_with_elastic(run, engine, layout, min_nodes), layout, spare_nodes)
    req = LaunchRequest(engine=engine, run_config=run_config, data_dir=data_text, run_dir=run_dir_text,
                        layout=layout, device=device, name=job_name, max_restarts=max_restarts)
    _only_for(engine, slurm=(account, qos, gres, constraint, exclusive, exclude, container_image, sbatch_args,
                             switches),
              k8s=(node_selector, tolerations, service_account, priority_class, requests, limits,
                   gpu_resource != "nvidia.com/gpu", topology_label))
    check_tp_inside_nodes(run.plan.tp, layout)
    # the job reads its own copy of the resolved run, so editing the plan or model file later cannot change a
    # requeued job
    config_path = Path(run_dir_text) / RUN_CONFIG_FILE

    if engine == "local":
        if layout.nodes != 1:
            raise LaunchError(f"A local launch runs on this machine only, but {layout.nodes} nodes were asked for.",
                              fix="drop --nodes (or use --nodes 1), or launch --on slurm / --on k8s for several "
                                  "nodes.")
        if dry_run:
            command = local.torchrun_command(run.world_size, max_restarts, str(config_path))
            shell = " ".join(_shell_quote(a) for a in command)
            _done(as_json, shell, engine="local", dry_run=True, command=command, run_config=run.config)
            return
        code = run_locally(run, workers_to_stderr=as_json)
        if as_json and code == 0:
            from bastion.commands.train_cmds import print_run_json

            print_run_json(Path(run_dir_text))
        sys.exit(code)

    if engine == "slurm":
        opts = slurm.SlurmOptions(time_limit_s=parse_time_limit(time) if time else None, partition=partition,
                                  signal_lead_s=signal_lead, requeue_exit=requeue_exit, max_requeues=max_requeues,
                                  cpus_per_worker=cpus_per_worker, account=account, qos=qos, gres=gres,
                                  constraint=constraint, exclusive=exclusive, exclude=exclude,
                                  container_image=container_image, container_mounts=_data_dirs(data_text),
                                  sbatch_args=tuple(sbatch_args), switches=switches, spare_nodes=spare_nodes)
        script = slurm.render_sbatch(req, opts, str(config_path))
        if dry_run:
            _done(as_json, script.removesuffix("\n"), engine="slurm", dry_run=True, script=script,
                  run_config=run_config)
            return
        if run.overwrite:
            from bastion.commands.train_cmds import announce_set_aside
            from bastion.rundir.lock import acquire

            with acquire(run.run_dir):
                announce_set_aside(run.run_dir)
        write_run_config(config_path, run_config)
        script_path = Path(run_dir_text) / LAUNCH_DIR / "job.sbatch"
        _write_text(script_path, script, "--run-dir")
        if not submit:
            _done(as_json, f"wrote {script_path}\nsubmit with: sbatch {_shell_quote(str(script_path))}",
                  engine="slurm", script_path=str(script_path), submitted=False)
            return
        job_id = slurm.submit(script_path)
        registry.record("slurm", job_id, run_dir_text)
        add_slurm_job(Path(run_dir_text), job_id)
        output = slurm.output_file(Path(run_dir_text), job_id)
        _done(as_json, f"submitted Slurm job {job_id}; output in {output}\n"
                       f"follow it with: bastion status {job_id}   /   bastion logs -f {job_id}   /   "
                       f"bastion cancel {job_id}",
              engine="slurm", script_path=str(script_path), submitted=True, job_id=job_id, output=str(output))
        return

    if time or partition:
        raise LaunchError("--time and --partition are Slurm options.", fix="drop them for --on k8s.")
    opts_k8s = kubernetes.KubernetesOptions(
        kind=k8s_kind, image=image, queue=queue, storage=storage,
        node_selector=kubernetes.key_values(node_selector, "--node-selector"), tolerations=tuple(tolerations),
        service_account=service_account, priority_class=priority_class,
        requests=kubernetes.key_values(requests, "--request"), limits=kubernetes.key_values(limits, "--limit"),
        gpu_resource=gpu_resource, topology_label=topology_label)
    text = kubernetes.render_manifests(req, opts_k8s)
    if dry_run:
        _done(as_json, text.removesuffix("\n"), engine="k8s", dry_run=True, manifests=text, run_config=run_config)
        return
    from bastion.launch.request import k8s_name

    k8s_job = k8s_name(job_name)
    out_path = manifest or Path(f"{k8s_job}-{k8s_kind}.yaml")
    _write_text(out_path, text, "--manifest")
    # `bastion status|logs|cancel NAME` find the job by the name the manifest gives it
    registry.record("k8s", k8s_job, run_dir_text, kind=k8s_kind, manifest=str(out_path.absolute()))
    follow = f"follow it with: bastion status {k8s_job}   /   bastion logs -f {k8s_job}   /   bastion cancel {k8s_job}"
    if submit:
        applied = kubernetes.apply(out_path)
        _done(as_json, f"wrote {out_path}\n{applied.removesuffix(chr(10))}\n{follow}", engine="k8s",
              manifest=str(out_path), submitted=True, kubectl=applied, name=k8s_job)
    else:
        _done(as_json, f"wrote {out_path}\nsubmit with: kubectl apply -f {_shell_quote(str(out_path))}\nthen {follow}",
              engine="k8s", manifest=str(out_path), submitted=False, name=k8s_job)


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether option `name` was typed on the command line (not its default)."""
    from typer._click.core import ParameterSource

    return ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE


def _with_elastic(run: ResolvedRun, engine: str, layout: WorkerLayout, min_nodes: int | None) -> dict:
    """The run config a scheduled job gets: with --on-failure shrink (given, or auto's choice) an `elastic`
    section, so the job continues on fewer nodes (launch/elastic.py)."""
    from bastion.launch.elastic import ELASTIC_KEY, elastic_section

    if run.on_failure != "shrink" or engine == "local":
        if min_nodes is not None:
            raise LaunchError("--min-nodes is the fewest nodes an elastic job continues on, but this job is not "
                              "elastic.", fix="add `-- --on-failure shrink` for a Slurm or k8s job, or drop "
                                              "--min-nodes.")
        return run.config
    section = elastic_section(run.spec, run.plan, layout.procs_per_node, layout.nodes, min_nodes)
    return {**run.config, ELASTIC_KEY: section}


def _with_spares(run_config: dict, layout: WorkerLayout, spare_nodes: int) -> dict:
    """With --spare-nodes a `spares` section: every job step runs on the plan's node count (launch/slurm_nodes.py)."""
    from bastion.launch.slurm_nodes import SPARES_KEY

    if not spare_nodes:
        return run_config
    return {**run_config, SPARES_KEY: {"plan_nodes": layout.nodes, "spare_nodes": spare_nodes}}


def _data_dirs(data: str) -> tuple[str, ...]:
    """The directories of `--data` (one, or a mixture's), for a container to mount."""
    from bastion.runtime.data import parse_data_mixture

    return tuple(name for name, _ in parse_data_mixture(data))


def _only_for(engine: str, **given: tuple) -> None:
    """Refuse a Slurm option on a k8s launch and the other way round (each group: values given or not)."""
    flags = {"slurm": "--account, --qos, --gres, --constraint, --exclusive, --exclude, --container-image, "
                      "--sbatch-arg and --switches",
             "k8s": "--node-selector, --toleration, --service-account, --priority-class, --request, --limit, "
                    "--gpu-resource and --topology-label"}
    for owner, values in given.items():
        if owner != engine and any(values):
            raise LaunchError(f"{flags[owner]} are options of --on {owner}.", fix=f"drop them for --on {engine}.")


def _done(as_json: bool, text: str, **fields: object) -> None:
    """What `launch` did: `text` for people, or `fields` as one JSON object with --json."""
    print(json.dumps(fields, default=str) if as_json else text)


#: `bastion train` options that `bastion launch` sets itself (a second value after `--` would be ambiguous)
_LAUNCH_OWNED = ("--model", "--plan", "--data", "--run-dir", "--steps", "--seq-len", "--max-restarts", "--nproc",
                 "--config", "--set", "--resume", "--overwrite")


def _task_settings(ctx: typer.Context, task: Path) -> dict:
    """The task file's launch settings that no flag on the command line overrides, checked as their flags are."""
    from typer._click.core import ParameterSource
    from typer._click.exceptions import BadParameter

    from bastion.commands.task_file import TASK_KEYS, load_task_file
    from bastion.errors import BastionError, ConfigError

    by_name = {param.name: param for param in ctx.command.params}
    in_file = load_task_file(task)
    engine = ctx.params["on"] if ctx.get_parameter_source("on") == ParameterSource.COMMANDLINE else in_file.get("on")
    settings = {}
    for key, value in in_file.items():
        name = TASK_KEYS[key]
        table = key.partition(".")[0]
        other_engine = table in ("slurm", "k8s") and table != engine
        if other_engine or ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE:
            continue
        try:
            settings[name] = by_name[name].process_value(ctx, value)
        except (BadParameter, BastionError) as exc:
            message = exc.format_message() if isinstance(exc, BadParameter) else exc.problem
            raise ConfigError(f"{task}: {name}: {message}",
                              fix="give it a value of the right type in the task file.") from None
    return settings


def _from_config(config: Path | None, set_values: list[str]) -> dict:
    """The settings `bastion launch` needs itself from --config and --set (the rest reach `bastion train`)."""
    from bastion.commands.train_file import load_config_file, parse_sets

    return {**(load_config_file(config) if config is not None else {}), **parse_sets(set_values)}


def _resolve_train_args(train_args: list[str], extra: list[str], paths_here: bool, engine_restarts: int = 0,
                        engine: str = "local", spare_nodes: int = 0,
                        job_nodes: Callable[[int], int] | None = None):
    """The job's `bastion train` options (launch's own plus the ones after `--`) parsed by `bastion train`'s own
    parser and checked by its own pre-check now, at launch time, not when the job starts on the cluster."""
    import typer.main
    from typer.exceptions import TyperException

    from bastion.commands.train_cmds import resolve_run, train_params

    for arg in extra:
        option = arg.split("=", 1)[0]
        if option in _LAUNCH_OWNED:
            raise LaunchError(f"{option} after `--` is an option of `bastion launch` itself.",
                              fix=f"give {option} to `bastion launch`, before the `--`.")
    # a launched job is restarted (torchrun) or requeued (Slurm, Kubernetes) into the same run directory: without
    # checkpoints that restart begins again from step 0, so unless told otherwise it checkpoints at the Young/Daly
    # interval for its size
    if not any(a == "--checkpoint-every" or a.startswith("--checkpoint-every=") for a in extra):
        train_args = [*train_args, "--checkpoint-every", "auto"]
    train = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    try:
        ctx = train.make_context("bastion train", [*train_args, *extra])
    except TyperException as exc:  # click's usage errors (typer bundles click)
        raise LaunchError(f"The arguments after `--` are not valid `bastion train` options: "
                          f"{getattr(exc, 'format_message', exc.__str__)()}",
                          fix="pass only `bastion train` options after `--` (`bastion train --help` lists them).",
                          ) from None
    params = train_params(ctx)  # --config and --set applied as `bastion train` applies them
    params.pop("nproc", None)
    if params.get("fault_tolerance", "none") != "none":
        raise LaunchError("--fault-tolerance torchft runs its replica groups on this machine only (`bastion "
                          "train`); `bastion launch` does not start torchft's lighthouse.",
                          fix="run `bastion train --fault-tolerance torchft` here, or drop --fault-tolerance.")
    return resolve_run(params, world_size=None, paths_here=paths_here, engine_restarts=engine_restarts,
                       engine=engine, spare_nodes=spare_nodes, job_nodes=job_nodes)


def _write_text(path: Path, text: str, option: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        raise LaunchError(f"Cannot write {path}: {exc.strerror or exc}.",
                          fix=f"give {option} in a place you can write.") from None


def _shell_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def _find_run_dir(job_id: str, given: Path | None, info: dict) -> Path | None:
    from bastion.launch import registry

    if given is not None:
        if not given.is_dir():
            raise LaunchError(f"--run-dir {given} is not a directory"
                              f"{' (it does not exist)' if not given.exists() else ''}.",
                              fix="give the run directory the job was launched with (bastion launch --run-dir).")
        return given
    recorded = registry.run_dir_of("slurm", job_id)
    if recorded:
        return Path(recorded)
    if info.get("stdout"):
        return Path(info["stdout"]).parent
    return None


@dataclass(frozen=True)
class _Launched:
    """What `status`, `logs` and `cancel` act on, and the engine that runs it (read, not retyped)."""

    engine: str
    #: the Slurm job id or the Kubernetes job name (None for a local run)
    job: str | None
    #: the run directory, where it is visible here
    run_dir: Path | None
    #: RUN_DIR/launch.json (local), or the registry's entry (Kubernetes)
    record: dict


_TARGET_HELP = ("A run directory (local and Slurm runs), a Slurm job id, or the name of a Kubernetes job bastion "
                "launched.")


def _launched(target: str, run_dir: Path | None) -> _Launched:
    from bastion.launch import registry
    from bastion.rundir.launch_record import read_launch_record
    from bastion.rundir.layout import RUN_CONFIG_FILE, RUN_MARKERS

    path = Path(target)
    if target.isdigit() and not path.is_dir():
        return _Launched("slurm", target, run_dir, {})
    if path.is_dir():
        record = read_launch_record(path)
        if record is not None and record["engine"] == "slurm" and record.get("job_ids"):
            return _Launched("slurm", str(record["job_ids"][-1]), path, record)
        if record is not None and record["engine"] == "local":
            return _Launched("local", None, path, record)
        what = ("a run without a launch record (started by an older bastion, or by Slurm from a script bastion did "
                "not submit)" if any((path / name).exists() for name in (*RUN_MARKERS, RUN_CONFIG_FILE))
                else "not a run directory")
        raise LaunchError(f"{target} is {what}: nothing says which engine runs it.",
                          fix="for a Slurm job give its id (bastion status JOBID --run-dir DIR); `bastion report "
                              f"{target}` reads a run directory whatever started it.")
    entry = registry.entry_of(target, "k8s")
    if entry is not None:
        return _Launched("k8s", target, None, entry)
    raise LaunchError(f"'{target}' is neither a run directory, a Slurm job id, nor a Kubernetes job launched by "
                      f"bastion from here.",
                      fix="give the --run-dir of `bastion launch` (or `bastion train`), the number sbatch printed, "
                          "or the Kubernetes job's name (metadata.name in the manifest bastion wrote).")


@app.command("status")
def status_command(
    target: str = typer.Argument(..., help=_TARGET_HELP),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Slurm: the run directory, if bastion did not "
                                                               "submit the job."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Where a launched run stands: running, finished, stopped (checkpointed) or failed, whatever engine runs it."""
    found = _launched(target, run_dir)
    if found.engine == "slurm":
        _slurm_status(str(found.job), found.run_dir or run_dir, as_json)
        return
    if found.engine == "k8s":
        from bastion.launch import kubernetes

        kind = str(found.record.get("kind") or "pytorchjob")
        job = kubernetes.job_status(kind, str(found.job))
        if as_json:
            print(json.dumps({"engine": "k8s", "job": job, "run_dir": found.record.get("run_dir")}, indent=2))
            return
        pods = ", ".join(f"{p['name']} {p['phase']}" + (f" (restarted {p['restarts']}x)" if p["restarts"] else "")
                         for p in job["pods"])
        print(f"{kind} {job['name']}: {job['state']}" + (f" ({job['message']})" if job.get("message") else ""))
        print(f"pods: {pods or 'none'}")
        print(f"run directory (in the pods): {found.record.get('run_dir')}")
        return
    from bastion.launch import local, slurm

    assert found.run_dir is not None
    progress = slurm.run_dir_progress(found.run_dir)
    result = local.outcome(found.record, progress)
    if as_json:
        print(json.dumps({"engine": "local", "run_dir": str(found.run_dir), "state": result["state"],
                          "text": result["text"], "process": found.record, "run": progress}, indent=2, default=str))
        return
    print(f"local run {found.run_dir}: {result['text']}")
    print(f"checkpoints {len(progress['checkpoints'])}"
          + (f" (newest {progress['checkpoints'][-1]})" if progress["checkpoints"] else ""))
    if progress["events"]:
        print("events: " + ", ".join(f"{k} ×{v}" for k, v in sorted(progress["events"].items())))


def _slurm_status(job_id: str, run_dir: Path | None, as_json: bool) -> None:
    """A Slurm job's state (squeue, scontrol, sacct) and its progress from the run directory."""
    from bastion.launch import slurm

    if run_dir is not None:
        _find_run_dir(job_id, run_dir, {})  # a mistyped --run-dir is the user's error, whatever Slurm says
    info = slurm.job_info(job_id)
    found = _find_run_dir(job_id, run_dir, info)
    if info["source"] is None and found is None:
        raise LaunchError(f"Slurm does not know job {job_id} (any more), and no run directory is recorded for it.",
                          fix="check the id (squeue -u $USER), or pass --run-dir DIR to read the run's progress.")
    if info["source"] is None:
        info["state"] = "gone from Slurm (finished and purged)"
    progress = slurm.run_dir_progress(found) if found else None
    if progress is not None:
        progress["outcome"] = slurm.run_outcome(progress, str(info.get("state") or ""),
                                                job_known=info["source"] is not None)
    if as_json:
        print(json.dumps({"engine": "slurm", "job": info, "run": progress}, indent=2, default=str))
        return
    line = f"job {job_id}: {info['state']}"
    if info.get("reason") and info["reason"] not in ("None", "(null)"):
        line += f" ({info['reason']})"
    if info.get("elapsed"):
        line += f", elapsed {info['elapsed']}"
    if info.get("restarts"):
        line += f", requeued {info['restarts']}x"
    if info.get("nodelist"):
        line += f", nodes {info['nodelist']}"
    print(line)
    if progress is None:
        print("run directory unknown (pass --run-dir)")
        return
    last = progress["last_step"]
    print(f"run {progress['run_dir']}: {'no step yet' if last is None else f'last step {last}'}, "
          f"checkpoints {len(progress['checkpoints'])}"
          + (f" (newest {progress['checkpoints'][-1]})" if progress["checkpoints"] else ""))
    if progress["events"]:
        print("events: " + ", ".join(f"{k} ×{v}" for k, v in sorted(progress["events"].items())))
    if progress["outcome"]:
        print(progress["outcome"]["text"])


@app.command("logs")
def logs_command(
    target: str = typer.Argument(..., help=_TARGET_HELP),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Slurm: the run directory, if bastion did not "
                                                               "submit the job."),
    lines: int = typer.Option(50, "--lines", "-n", help="Lines from the end of each log (0 = all)."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing lines as they come, until the run "
                                                              "ends (Ctrl-C stops following, not the run)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object a line: {source, line} (and the record, "
                                                       "for metrics.jsonl)."),
) -> None:
    """A launched run's logs: a local run's steps, events and rank logs from its run directory; a Slurm job's
    output (all requeues, appended); a Kubernetes job's pods (kubectl logs)."""
    from bastion.launch import logs

    found = _launched(target, run_dir)

    def emit(file: logs.LogFile, text: str, record: dict | None) -> None:
        if as_json:
            print(json.dumps({"source": file.name, "line": text, **({"record": record} if record else {})},
                             default=str), flush=True)
        else:
            print(text if file.records or found.engine != "local" else f"[{file.name}] {text}", flush=True)

    if found.engine == "k8s":
        _kubernetes_logs(found, lines, follow, emit)
        return
    if found.engine == "local":
        from bastion.launch import local

        assert found.run_dir is not None
        local_dir, record = found.run_dir, found.record

        def still_running() -> bool:
            from bastion.rundir.launch_record import read_launch_record

            return local.is_running(read_launch_record(local_dir) or record) is True

        logs.show(lambda: logs.run_dir_files(local_dir), lines, follow, still_running, emit)
        return
    from bastion.launch import slurm

    job_id = str(found.job)
    info: dict = {}
    if found.run_dir is None:
        from bastion.launch import registry

        if registry.run_dir_of("slurm", job_id) is None:
            info = slurm.job_info(job_id)
    slurm_dir = _find_run_dir(job_id, found.run_dir, info)
    if slurm_dir is None:
        raise LaunchError(f"No run directory is known for job {job_id}.",
                          fix="pass --run-dir DIR (the directory given to bastion launch).")
    path = slurm.output_file(slurm_dir, job_id)
    if not path.exists() and not follow:
        raise LaunchError(f"No output yet for job {job_id} at {path}.",
                          fix="the job may still be pending: check `bastion status " + job_id + "`.")

    def job_running() -> bool:
        state = str(slurm.job_info(job_id).get("state") or "").split()[0].rstrip("+").upper()
        return state in slurm.RUNNING_STATES or state in slurm.WAITING_STATES

    logs.show(lambda: [logs.LogFile(path, path.name)], lines, follow, job_running, emit)


def _kubernetes_logs(found: _Launched, lines: int, follow: bool, emit) -> None:
    """`kubectl logs` of the job's pods: its output passed through (wrapped as JSON lines with --json)."""
    import subprocess

    from bastion.launch import kubernetes, logs

    command = kubernetes.logs_command(str(found.record.get("kind") or "pytorchjob"), str(found.job), lines, follow)
    source = logs.LogFile(Path("kubectl"), "kubectl")
    try:
        with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
            assert process.stdout is not None
            for line in process.stdout:
                emit(source, line.rstrip("\n"), None)
    except KeyboardInterrupt:
        return
    if process.returncode:
        raise LaunchError(f"kubectl logs failed (exit code {process.returncode}); its message is above.",
                          fix="check the job's name and the cluster context (kubectl config current-context).")


@app.command("cancel")
def cancel_command(
    target: str = typer.Argument(..., help=_TARGET_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print what was done as one JSON object."),
) -> None:
    """Stop a launched run so that it saves first: SIGTERM to a local run's workers (each checkpoints after its
    current step), scancel for Slurm, kubectl delete for Kubernetes (the volume keeps the run directory).
    Launching again with the same run directory continues the run."""
    found = _launched(target, None)
    if found.engine == "local":
        from bastion.launch import local

        assert found.run_dir is not None
        signalled = local.cancel(found.record, found.run_dir)
        _done(as_json, f"sent SIGTERM to the run's workers (pid {', '.join(map(str, signalled))}): each checkpoints "
                       f"after its current step and stops; `bastion status {found.run_dir}` shows when",
              engine="local", run_dir=str(found.run_dir), signalled=signalled, signal="SIGTERM")
    elif found.engine == "slurm":
        from bastion.launch import slurm

        slurm.cancel(str(found.job))
        _done(as_json, f"cancelled Slurm job {found.job} (scancel: SIGTERM, then SIGKILL after the cluster's "
                       f"KillWait; the workers checkpoint in between)", engine="slurm", job_id=found.job)
    else:
        from bastion.launch import kubernetes

        kind = str(found.record.get("kind") or "pytorchjob")
        said = kubernetes.cancel(kind, str(found.job))
        _done(as_json, f"{said}\nthe pods get SIGTERM and checkpoint; the run directory stays on the claim "
                       f"{found.job}-run (apply the manifest again to continue)", engine="k8s", kind=kind,
              name=found.job, kubectl=said)


@app.command("_slurm_resubmit", hidden=True)
def slurm_resubmit_command(
    config_path: Path = typer.Argument(..., help="The job's run_config.json."),
    exclude: str = typer.Option(..., "--exclude", help="Nodes the new job must not get, comma-separated."),
    starts: int = typer.Option(..., "--starts", help="Starts of the run so far, counted on in the new job."),
) -> None:
    """Run by a Slurm batch script that must start again without some of its nodes: submits the script again as
    a new job excluding them (launch/slurm.py), records it in the launch record and metrics.jsonl, prints its id;
    exit 1 when Slurm refuses (the script then requeues)."""
    import os

    from bastion.launch import slurm
    from bastion.launch.worker import read_run_config
    from bastion.rundir.launch_record import add_slurm_job
    from bastion.rundir.metrics import log_event
    from bastion.rundir.records import RESUBMITTED

    run_dir = Path(read_run_config(config_path)["train"]["run_dir"])
    job_id = os.environ.get("SLURM_JOB_ID", "")
    nodes = [n for n in exclude.split(",") if n and n != "-"]
    try:
        new_job = slurm.resubmit_excluding(job_id, nodes, starts)
    except LaunchError as err:
        print(f"[bastion] {err.problem}", file=sys.stderr)
        sys.exit(1)
    add_slurm_job(run_dir, new_job)
    log_event(run_dir, RESUBMITTED.name, job_id=job_id, new_job_id=new_job, excluded=nodes)
    print(f"[bastion] submitted job {new_job} (after job {job_id}) without {','.join(nodes)}")


@app.command("_slurm_nodes", hidden=True)
def slurm_nodes_command(
    config_path: Path = typer.Argument(..., help="The job's run_config.json."),
    since: float = typer.Option(0.0, "--since", help="Straggler events from this Unix time on count."),
) -> None:
    """Run by a Slurm batch script before each job step: prints `COUNT NODES EXCLUDED` (launch/slurm_nodes.py);
    exit 3 when too few nodes are left."""
    import os

    from bastion.launch import slurm, slurm_nodes
    from bastion.launch.worker import read_run_config

    config = read_run_config(config_path)
    job_id = os.environ.get("SLURM_JOB_ID", "")
    job_nodes = slurm.hostnames(os.environ.get("SLURM_JOB_NODELIST", ""))
    start = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    nodes, excluded = slurm_nodes.next_nodes(Path(config["train"]["run_dir"]), config, job_id, start, job_nodes,
                                             slurm.node_states(job_id, job_nodes), since)
    print(len(nodes), ",".join(nodes) or "-", ",".join(excluded) or "-")
    if not nodes:
        sys.exit(slurm_nodes.TOO_FEW_NODES)
