"""`bastion launch`, `bastion status JOBID`, `bastion logs JOBID`: start a plan on torchrun, Slurm or Kubernetes,
then follow the job through the scheduler and its run directory."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from bastion.cli import app
from bastion.commands import options
from bastion.errors import LaunchError

if TYPE_CHECKING:
    from bastion.commands.train_cmds import ResolvedRun
    from bastion.launch.request import WorkerLayout


@app.command("launch", context_settings={"allow_extra_args": True})
def launch_command(
    ctx: typer.Context,
    on: str = typer.Option(..., "--on", help="Engine: local (torchrun here), slurm (sbatch) or k8s (manifests)."),
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
    time: str | None = typer.Option(None, "--time", help="Slurm time limit, HH:MM:SS or D-HH:MM:SS."),
    partition: str | None = typer.Option(None, "--partition", help="Slurm partition(s), comma-separated."),
    signal_lead: int | None = typer.Option(None, "--signal-lead",
                                           help="Slurm: seconds before the time limit to checkpoint and requeue."),
    requeue_exit: int = typer.Option(42, "--requeue-exit", help="Slurm: the cluster's RequeueExit code."),
    max_requeues: int = typer.Option(3, "--max-requeues",
                                     help="Slurm: a failed step is requeued while the job has been restarted "
                                          "fewer times than this (all restarts count)."),
    cpus_per_worker: int = typer.Option(1, "--cpus-per-worker", help="Slurm: cores per worker (OMP threads)."),
    max_restarts: options.MaxRestarts = 0,
    image: str = typer.Option("", "--image", help="k8s: container image with bastion installed."),
    k8s_kind: str = typer.Option("pytorchjob", "--k8s-kind", help="k8s: pytorchjob or jobset."),
    queue: str = typer.Option("", "--queue", help="k8s: Kueue LocalQueue name."),
    storage: str = typer.Option("100Gi", "--storage", help="k8s: size of the run directory's volume claim."),
    manifest: Path | None = typer.Option(None, "--manifest",
                                         help="k8s: where to write the YAML (default ./NAME-KIND.yaml)."),
    min_nodes: options.MinNodes = None,
    account: options.Account = None,
    qos: options.Qos = None,
    gres: options.Gres = None,
    constraint: options.Constraint = None,
    exclusive: options.Exclusive = False,
    exclude: options.Exclude = None,
    container_image: options.ContainerImage = None,
    sbatch_args: options.SbatchArgs = [],  # noqa: B006 - typer reads the default
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
    """Start a plan's training job: torchrun here, an sbatch job, or a PyTorchJob/JobSet.

    Arguments after `--` go to `bastion train` unchanged (e.g. `-- --checkpoint-every 50 --seed 1`).
    """
    from bastion.commands.train_cmds import run_locally
    from bastion.launch import kubernetes, local, registry, slurm
    from bastion.launch.request import LaunchRequest, check_engine, parse_time_limit, worker_layout
    from bastion.launch.worker import write_run_config
    from bastion.rundir.layout import RUN_CONFIG_FILE

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
    run = _resolve_train_args(train_args, list(ctx.args), paths_here=engine != "k8s")
    layout = worker_layout(run.world_size, nodes, gpus_per_node, device)
    job_name = name or Path(run_dir_text).name or "bastion"
    run_config = _with_elastic(run, engine, layout, min_nodes)
    req = LaunchRequest(engine=engine, run_config=run_config, data_dir=data_text, run_dir=run_dir_text,
                        layout=layout, device=device, name=job_name, max_restarts=max_restarts)
    _only_for(engine, slurm=(account, qos, gres, constraint, exclusive, exclude, container_image, sbatch_args),
              k8s=(node_selector, tolerations, service_account, priority_class, requests, limits,
                   gpu_resource != "nvidia.com/gpu"))
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
                                  sbatch_args=tuple(sbatch_args))
        script = slurm.render_sbatch(req, opts, str(config_path))
        if dry_run:
            _done(as_json, script.removesuffix("\n"), engine="slurm", dry_run=True, script=script,
                  run_config=run_config)
            return
        write_run_config(config_path, run_config)
        script_path = Path(run_dir_text) / "launch" / "job.sbatch"
        _write_text(script_path, script, "--run-dir")
        if not submit:
            _done(as_json, f"wrote {script_path}\nsubmit with: sbatch {_shell_quote(str(script_path))}",
                  engine="slurm", script_path=str(script_path), submitted=False)
            return
        job_id = slurm.submit(script_path)
        registry.record("slurm", job_id, run_dir_text)
        with (script_path.parent / "jobs.txt").open("a") as out:
            out.write(job_id + "\n")
        output = slurm.output_file(Path(run_dir_text), job_id)
        _done(as_json, f"submitted Slurm job {job_id}; output in {output}\n"
                       f"follow it with: bastion status {job_id}   /   bastion logs {job_id}",
              engine="slurm", script_path=str(script_path), submitted=True, job_id=job_id, output=str(output))
        return

    if time or partition:
        raise LaunchError("--time and --partition are Slurm options.", fix="drop them for --on k8s.")
    opts_k8s = kubernetes.KubernetesOptions(
        kind=k8s_kind, image=image, queue=queue, storage=storage,
        node_selector=kubernetes.key_values(node_selector, "--node-selector"), tolerations=tuple(tolerations),
        service_account=service_account, priority_class=priority_class,
        requests=kubernetes.key_values(requests, "--request"), limits=kubernetes.key_values(limits, "--limit"),
        gpu_resource=gpu_resource)
    text = kubernetes.render_manifests(req, opts_k8s)
    if dry_run:
        _done(as_json, text.removesuffix("\n"), engine="k8s", dry_run=True, manifests=text, run_config=run_config)
        return
    from bastion.launch.request import k8s_name

    out_path = manifest or Path(f"{k8s_name(job_name)}-{k8s_kind}.yaml")
    _write_text(out_path, text, "--manifest")
    if submit:
        applied = kubernetes.apply(out_path)
        _done(as_json, f"wrote {out_path}\n{applied.removesuffix(chr(10))}", engine="k8s", manifest=str(out_path),
              submitted=True, kubectl=applied)
    else:
        _done(as_json, f"wrote {out_path}\nsubmit with: kubectl apply -f {_shell_quote(str(out_path))}",
              engine="k8s", manifest=str(out_path), submitted=False)


def _with_elastic(run: ResolvedRun, engine: str, layout: WorkerLayout, min_nodes: int | None) -> dict:
    """The run config a scheduled job gets: with --on-failure shrink (or auto on a plan with data-parallel
    replicas) an `elastic` section, so the job continues on fewer nodes (launch/elastic.py)."""
    from bastion.launch.elastic import ELASTIC_KEY, elastic_section

    if run.on_failure != "shrink" or engine == "local":
        if min_nodes is not None:
            raise LaunchError("--min-nodes is the fewest nodes an elastic job continues on, but this job is not "
                              "elastic.", fix="add `-- --on-failure shrink` for a Slurm or k8s job, or drop "
                                              "--min-nodes.")
        return run.config
    section = elastic_section(run.spec, run.plan, layout.procs_per_node, layout.nodes, min_nodes)
    return {**run.config, ELASTIC_KEY: section}


def _data_dirs(data: str) -> tuple[str, ...]:
    """The directories of `--data` (one, or a mixture's), for a container to mount."""
    from bastion.runtime.data import parse_data_mixture

    return tuple(name for name, _ in parse_data_mixture(data))


def _only_for(engine: str, **given: tuple) -> None:
    """Refuse a Slurm option on a k8s launch and the other way round (each group: values given or not)."""
    flags = {"slurm": "--account, --qos, --gres, --constraint, --exclusive, --exclude, --container-image and "
                      "--sbatch-arg",
             "k8s": "--node-selector, --toleration, --service-account, --priority-class, --request, --limit and "
                    "--gpu-resource"}
    for owner, values in given.items():
        if owner != engine and any(values):
            raise LaunchError(f"{flags[owner]} are options of --on {owner}.", fix=f"drop them for --on {engine}.")


def _done(as_json: bool, text: str, **fields: object) -> None:
    """What `launch` did: `text` for people, or `fields` as one JSON object with --json."""
    print(json.dumps(fields, default=str) if as_json else text)


#: `bastion train` options that `bastion launch` sets itself (a second value after `--` would be ambiguous)
_LAUNCH_OWNED = ("--model", "--plan", "--data", "--run-dir", "--steps", "--seq-len", "--max-restarts", "--nproc",
                 "--config", "--set")


def _from_config(config: Path | None, set_values: list[str]) -> dict:
    """The settings `bastion launch` needs itself from --config and --set (the rest reach `bastion train`)."""
    from bastion.commands.train_file import load_config_file, parse_sets

    return {**(load_config_file(config) if config is not None else {}), **parse_sets(set_values)}


def _resolve_train_args(train_args: list[str], extra: list[str], paths_here: bool):
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
    return resolve_run(params, world_size=None, paths_here=paths_here)


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


@app.command("status")
def status_command(
    job_id: str = typer.Argument(..., help="Slurm job id (as printed by `bastion launch --submit`)."),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Run directory, if bastion did not submit it."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
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
        print(json.dumps({"job": info, "run": progress}, indent=2, default=str))
        return
    from rich.console import Console

    console = Console(highlight=False)
    line = f"job {job_id}: [bold]{info['state']}[/]"
    if info.get("reason") and info["reason"] not in ("None", "(null)"):
        line += f" ({info['reason']})"
    if info.get("elapsed"):
        line += f", elapsed {info['elapsed']}"
    if info.get("restarts"):
        line += f", requeued {info['restarts']}x"
    if info.get("nodelist"):
        line += f", nodes {info['nodelist']}"
    console.print(line)
    if progress is None:
        console.print("run directory unknown (pass --run-dir)")
        return
    last = progress["last_step"]
    console.print(f"run {progress['run_dir']}: {'no step yet' if last is None else f'last step {last}'}, "
                  f"checkpoints {len(progress['checkpoints'])}"
                  + (f" (newest {progress['checkpoints'][-1]})" if progress["checkpoints"] else ""))
    if progress["events"]:
        console.print("events: " + ", ".join(f"{k} ×{v}" for k, v in sorted(progress["events"].items())))
    if progress["outcome"]:
        console.print(progress["outcome"]["text"])


@app.command("logs")
def logs_command(
    job_id: str = typer.Argument(..., help="Slurm job id."),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Run directory, if bastion did not submit it."),
    lines: int = typer.Option(50, "--lines", "-n", help="Lines from the end of the job's output (0 = all)."),
) -> None:
    """The job's output (all requeues, appended) from its run directory."""
    from bastion.launch import slurm

    info: dict = {}
    if run_dir is None:
        from bastion.launch import registry

        if registry.run_dir_of("slurm", job_id) is None:
            info = slurm.job_info(job_id)
    found = _find_run_dir(job_id, run_dir, info)
    if found is None:
        raise LaunchError(f"No run directory is known for job {job_id}.",
                          fix="pass --run-dir DIR (the directory given to bastion launch).")
    path = slurm.output_file(found, job_id)
    if not path.exists():
        raise LaunchError(f"No output yet for job {job_id} at {path}.",
                          fix="the job may still be pending: check `bastion status " + job_id + "`.")
    text = path.read_text(errors="replace").splitlines()
    for line in text[-lines:] if lines > 0 else text:
        print(line)


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
