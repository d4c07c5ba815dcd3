"""The worker process's entry: `python -m bastion _worker RUN_CONFIG` (torchrun starts it locally, under srun, in a
pod) reads the run config, applies what the launch decided for this process (a torchft replica group's plan, an
elastic job's world), takes the run directory's lock where a scheduler started the job, and hands a TrainConfig to
`runtime.worker.run_worker`. Nothing here imports torch at module level: `bastion/__main__.py` imports this module
without building the CLI, and torch is imported by the worker alone, at the end."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bastion.errors import ConfigError
from bastion.launch.worker import LOCAL_NAMES_ONLY, confine_name_lookups, read_run_config
from bastion.specs.plan import ParallelPlan

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
