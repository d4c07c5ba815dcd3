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
