"""How a training worker starts, on every engine: its environment, its run config and its command line.

`bastion train` and `bastion launch` check and resolve a run once and write it as one JSON file (`run_config.json`:
the `bastion train` options, the plan and the model spec). Every engine starts the workers with the same command,
`-m bastion _worker CONFIG` after torchrun's own options (torchrun here, one agent per node under srun on Slurm,
one per pod on Kubernetes, where the file travels in the job's ConfigMap). The worker reads that file and nothing
else: editing the plan or the model file after the launch cannot change a restarted or requeued job. No torch here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bastion.errors import ConfigError
from bastion.specs.model import ModelSpec
from bastion.specs.plan import ParallelPlan

#: the resolved run, in the run directory (local, Slurm) or the job's ConfigMap (Kubernetes)
#: version of the file's layout; a worker refuses another
RUN_CONFIG_FORMAT = 1


def worker_env(omp_threads: int = 1, single_host: bool = False) -> dict[str, str]:
    """The environment every worker process gets (the one definition: local, Slurm and Kubernetes use it)."""
    env = {
        # a fixed thread count keeps runs bitwise reproducible (and N workers from oversubscribing the cores)
        "OMP_NUM_THREADS": str(omp_threads),
        # without it a restarted gloo group reads stale peer addresses from torchrun's store (PYTORCH_NOTES.md)
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
        # worker output reaches the job log as it happens, not when a buffer fills
        "PYTHONUNBUFFERED": "1",
    }
    if single_host:
        # gloo takes the loopback interface's address instead of resolving the host name
        env["GLOO_SOCKET_IFNAME"] = "lo"
        # the worker answers host-name lookups from /etc/hosts only: nothing asks the network's name server
        env[LOCAL_NAMES_ONLY] = "1"
    return env


#: set in a single-host run's worker environment: `bastion _worker` then calls `confine_name_lookups()`
LOCAL_NAMES_ONLY = "BASTION_LOCAL_NAMES_ONLY"


def confine_name_lookups() -> None:
    """Answer this process's host-name lookups from /etc/hosts only (glibc's `__nss_configure_lookup`), so a
    single-host run sends nothing to the network's name server: torch's c10d reverse-resolves every store
    connection's address (`getnameinfo` without NI_NUMERICHOST; a dual-stack socket's ::ffff:127.0.0.1 matches no
    /etc/hosts line) and torchrun's agent calls `socket.getfqdn()`. A lookup /etc/hosts cannot answer falls back to
    the numeric address. Call it before any lookup; a no-op where the C library has no such call (musl, macOS)."""
    import ctypes

    try:
        configure = ctypes.CDLL(None).__nss_configure_lookup
    except (OSError, AttributeError):
        return
    configure(b"hosts", b"files")


def process_environment(env: Mapping[str, str]) -> dict[str, str]:
    """This process's environment plus `env`; a value the user set already is kept (it is just as fixed)."""
    merged = dict(os.environ)
    for key, value in env.items():
        merged.setdefault(key, value)
    return merged


#: the hidden command a training job's workers run (`bastion calibrate --on slurm|k8s` starts `_calibrate_worker`)
TRAIN_WORKER = "_worker"


def worker_command(config_path: str, entry: str = TRAIN_WORKER) -> list[str]:
    """The worker's part of a torchrun command line (after torchrun's own options): `bastion ENTRY CONFIG`."""
    return ["-m", "bastion", entry, config_path]


def run_config(train: dict[str, Any], spec: ModelSpec, plan: ParallelPlan, world_size: int) -> dict[str, Any]:
    """The file's content: `train` holds TrainConfig's fields (resilience as a dict), as the user gave them."""
    return {"format": RUN_CONFIG_FORMAT, "world_size": world_size, "train": train, "model": spec.to_dict(),
            "plan": plan.to_dict()}


def write_run_config(path: Path, config: dict[str, Any]) -> None:
    """Write atomically (a worker never reads half a file); an unwritable place is a guidance error."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(config, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"Cannot write the run config {path}: {exc.strerror or exc}.",
                          fix="give a --run-dir in a writable directory.") from None


def read_run_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"Cannot read the run config {path}: {exc}.",
                          fix="start workers through `bastion train` or `bastion launch`, which write it.") from None
    if not isinstance(config, dict) or config.get("format") != RUN_CONFIG_FORMAT:
        raise ConfigError(f"{path} is not a run config of this bastion version (format {RUN_CONFIG_FORMAT}).",
                          fix="launch the run again with this version of bastion.")
    return config


#: how long a scheduled job's rank 0 waits for the run directory's lock (a requeued job's predecessor may still be
#: exiting on another node)
PREDECESSOR_EXIT_S = 60.0
#: the run directory's lock, when this worker holds it (for the life of the process)
_held: list[Any] = []


def start_worker(config_path: Path) -> None:
    """`bastion _worker CONFIG_PATH`: one training worker, started by torchrun (locally, under srun, in a pod); reads
    only CONFIG_PATH. Never returns (torch is imported here, at the end, by the worker alone)."""
    if os.environ.get(LOCAL_NAMES_ONLY) == "1":
        confine_name_lookups()  # before torch opens its first socket
    config = read_run_config(config_path)
    from bastion.launch.replica_groups import GROUP_ENV, REPLICA_GROUPS_KEY, group_config

    if REPLICA_GROUPS_KEY in config:  # --fault-tolerance torchft: this process runs one replica group's plan
        config = group_config(config, int(os.environ.get(GROUP_ENV, "-1")))
    world = os.environ.get("WORLD_SIZE")
    if world is not None:  # an elastic job (launch/elastic.py) runs the plan for the world it was started in
        from bastion.launch.elastic import prepare_worker

        config = prepare_worker(config, int(world), int(os.environ.get("RANK", "0")))
    if world is None or int(world) != config["world_size"]:
        raise ConfigError(f"{config_path} is a run of {config['world_size']} workers, but this process's "
                          f"WORLD_SIZE is {world}.", fix="start workers with `bastion train` or `bastion launch`.")
    if config.get("run_dir_lock") != "launcher" and os.environ.get("RANK") == "0":
        # a scheduler started the job (Slurm, Kubernetes): rank 0 holds the run directory until it exits (the
        # kernel releases a flock with its process; a restarted group's new rank 0 takes it again)
        from bastion.rundir.lock import acquire

        _held.append(acquire(Path(config["train"]["run_dir"]), wait_s=PREDECESSOR_EXIT_S))
    from bastion.runtime.worker import run_worker

    run_worker(train_config_of(config))


def train_config_of(config: dict[str, Any]) -> Any:
    """TrainConfig from the run config, with the model and plan it resolved (read once, by the front process)."""
    from bastion.runtime.resilience_config import ResilienceConfig
    from bastion.runtime.train_config import TrainConfig
    from bastion.specs.model import model_from_mapping

    train = dict(config["train"])
    resilience = dict(train.pop("resilience"))
    for key in ("inject", "skip_batches"):
        resilience[key] = tuple(resilience[key])
    if "betas" in train:
        train["betas"] = tuple(train["betas"])
    train["plan"] = ParallelPlan.from_dict(config["plan"], "the run config's plan")
    train["model"] = model_from_mapping(config["model"], "the run config's model")
    return TrainConfig(**train, resilience=ResilienceConfig(**resilience))
