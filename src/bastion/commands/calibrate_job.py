"""`bastion calibrate --on slurm|k8s`: the calibrate microbenchmarks as a job on the machines a training job would
use, through launch's own backends (launch/slurm.py's batch script, launch/kubernetes.py's manifests, with
launch/worker.py's worker environment). One torchrun agent per node starts `--nproc` ranks, each running `bastion
_calibrate_worker CONFIG` (commands/calibrate_cmds.py): rank 0 measures the one-process rates on its node, then
all ranks measure the shared rates and the collectives over the whole job (groups larger than a node's ranks span
nodes), and rank 0 writes the profile to --out with the hosts the ranks ran on. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from bastion.errors import ConfigError

#: the hidden command the job's workers run (commands/calibrate_cmds.py)
CALIBRATE_WORKER = "_calibrate_worker"
#: in --run-dir (Slurm): the job's config and its batch script
CONFIG_FILE = "calibrate_job.json"
SCRIPT_FILE = "calibrate.sbatch"


@dataclass(frozen=True)
class CalibrateJob:
    """A calibrate job as the command line asked for it (each field the `bastion launch` option of that name)."""

    #: `slurm` or `k8s`
    engine: str
    #: what to measure (commands/calibrate_cmds.py `_settings`): the workers' part of the config
    settings: dict
    nodes: int
    name: str
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclusive: bool = False
    exclude: str | None = None
    container_image: str | None = None
    sbatch_args: tuple[str, ...] = ()
    image: str = ""
    k8s_kind: str = "pytorchjob"
    queue: str = ""
    storage: str = "100Gi"
    node_selector: tuple[str, ...] = ()
    tolerations: tuple[str, ...] = ()
    manifest: Path | None = None
    dry_run: bool = False
    submit: bool = False
    as_json: bool = False


def job_config(settings: dict, run_dir: str, world: int) -> dict:
    """The file every worker reads: launch/worker.py's run-config layout (its format, and `train.run_dir`, where
    the Slurm batch script's node choice, `bastion _slurm_nodes`, looks for events), with the settings under
    `calibrate`."""
    from bastion.launch.worker import RUN_CONFIG_FORMAT

    return {"format": RUN_CONFIG_FORMAT, "world_size": world, "train": {"run_dir": run_dir}, "calibrate": settings}


def job_paths(job: CalibrateJob) -> tuple[str, str]:
    """(run directory, profile path) as the job's workers see them: absolute paths here (Slurm: a filesystem the
    nodes share), or paths inside the pods with the profile on the job's volume (k8s)."""
    run_dir, out = job.settings["run_dir"], job.settings["out"]
    if job.engine == "slurm":
        return str(Path(run_dir).absolute()), str(Path(out).absolute())
    pod_dir, pod_out = PurePosixPath(run_dir), PurePosixPath(out)
    if not pod_dir.is_absolute() or pod_dir == PurePosixPath("/"):
        raise ConfigError(f"--run-dir {run_dir} is not a directory path inside the pods.",
                          fix="give --run-dir the absolute path the job's volume is mounted at, e.g. "
                              "--run-dir /runs/calibrate.")
    if not pod_out.is_absolute():
        pod_out = pod_dir / pod_out
    if pod_dir not in pod_out.parents:
        raise ConfigError(f"--out {out} is outside --run-dir {run_dir}: only the job's volume, mounted at --run-dir, "
                          f"outlives the pods.", fix=f"give --out under {run_dir}, e.g. --out {pod_dir / 'profile.toml'}.")
    return str(pod_dir), str(pod_out)


def run_job(job: CalibrateJob) -> None:
    """Write (and with --submit submit) the job, or with --dry-run print its script or manifests."""
    from shlex import quote

    from bastion.commands.launch_cmds import _done, _write_text
    from bastion.launch import kubernetes, registry, slurm
    from bastion.launch.request import LaunchRequest, WorkerLayout, k8s_name, parse_time_limit
    from bastion.launch.worker import write_run_config

    if job.dry_run and job.submit:
        raise ConfigError("--dry-run and --submit contradict each other.", fix="give one of them.")
    if job.nodes < 1:
        raise ConfigError(f"--nodes must be at least 1, got {job.nodes}.", fix="give --nodes a positive integer.")
    run_dir, out = job_paths(job)
    settings = {**job.settings, "run_dir": run_dir, "out": out}
    layout = WorkerLayout(nodes=job.nodes, procs_per_node=settings["nproc"])
    config = job_config(settings, run_dir, layout.world_size)
    req = LaunchRequest(engine=job.engine, run_config=config, data_dir=run_dir, run_dir=run_dir, layout=layout,
                        device="gpu" if settings["device"] == "cuda" else "cpu", name=job.name,
                        worker_entry=CALIBRATE_WORKER)
    where = f"the profile will be written to {out}"
    if job.engine == "slurm":
        # a failed calibration is not resumed: no requeue; the profile's directory is mounted into a container
        opts = slurm.SlurmOptions(time_limit_s=parse_time_limit(job.time) if job.time else None,
                                  partition=job.partition, max_requeues=0, account=job.account, qos=job.qos,
                                  constraint=job.constraint, exclusive=job.exclusive, exclude=job.exclude,
                                  container_image=job.container_image, container_mounts=(str(Path(out).parent),),
                                  sbatch_args=job.sbatch_args)
        config_path = Path(run_dir) / CONFIG_FILE
        script = slurm.render_sbatch(req, opts, str(config_path))
        if job.dry_run:
            _done(job.as_json, script.removesuffix("\n"), engine="slurm", dry_run=True, script=script, config=config)
            return
        write_run_config(config_path, config)
        script_path = Path(run_dir) / SCRIPT_FILE
        _write_text(script_path, script, "--run-dir")
        if not job.submit:
            _done(job.as_json, f"wrote {script_path}\nsubmit with: sbatch {quote(str(script_path))}\n{where}",
                  engine="slurm", script_path=str(script_path), submitted=False, out=out)
            return
        job_id = slurm.submit(script_path)
        registry.record("slurm", job_id, run_dir)
        output = slurm.output_file(Path(run_dir), job_id)
        _done(job.as_json, f"submitted Slurm job {job_id}; output in {output}\n{where}", engine="slurm",
              script_path=str(script_path), submitted=True, job_id=job_id, output=str(output), out=out)
        return
    opts_k8s = kubernetes.KubernetesOptions(
        kind=job.k8s_kind, image=job.image, queue=job.queue, storage=job.storage, max_job_restarts=0,
        node_selector=kubernetes.key_values(list(job.node_selector), "--node-selector"),
        tolerations=job.tolerations)
    text = kubernetes.render_manifests(req, opts_k8s)
    if job.dry_run:
        _done(job.as_json, text.removesuffix("\n"), engine="k8s", dry_run=True, manifests=text, config=config)
        return
    k8s_job = k8s_name(job.name)
    out_path = job.manifest or Path(f"{k8s_job}-{job.k8s_kind}.yaml")
    _write_text(out_path, text, "--manifest")
    registry.record("k8s", k8s_job, run_dir, kind=job.k8s_kind, manifest=str(out_path.absolute()))
    if job.submit:
        applied = kubernetes.apply(out_path)
        _done(job.as_json, f"wrote {out_path}\n{applied.removesuffix(chr(10))}\n{where} (on the job's volume)",
              engine="k8s", manifest=str(out_path), submitted=True, kubectl=applied, name=k8s_job, out=out)
    else:
        _done(job.as_json, f"wrote {out_path}\nsubmit with: kubectl apply -f {quote(str(out_path))}\n{where} "
                           f"(on the job's volume)", engine="k8s", manifest=str(out_path), submitted=False,
              name=k8s_job, out=out)
