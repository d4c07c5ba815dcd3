"""`bastion launch task.toml`: one reviewed file per run, holding what `bastion launch` takes (the engine, the
resources, the scheduler's options) and, as its `[train]` table, the training config file of `bastion train
--config` (commands/train_file.py: model, plan, data, steps, run_dir, optimizer, ...).

    on = "slurm"                                   # local, slurm or k8s
    name = "llama-8b-pretrain"                     # the job's name (default: the run directory's)
    [resources]  nodes = 4   gpus_per_node = 8   device = "gpu"   cpus_per_worker = 8
    [slurm]      time = "04:00:00"   partition = "gpu"   signal_lead = 300   requeue_exit = 42   max_requeues = 3
    [k8s]        image = "registry/bastion:1"   kind = "pytorchjob"   queue = "team-a"   storage = "500Gi"
    [train]      model = "llama3-8b"   plan = "plan.json"   data = "data"   steps = 20000   run_dir = "runs/8b"
    [train.optimizer]  lr = 3e-4

A flag given on the command line overrides the file (`--set KEY=VALUE` overrides a [train] setting); the [slurm]
and [k8s] tables apply only when the run goes to that engine (so `--on local` tries a cluster's task file here).
Paths in [train] are relative to the file's directory, as in a config file. An unknown key is an error naming the
known ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bastion.errors import ConfigError, did_you_mean

#: task-file key -> the `bastion launch` parameter it sets ([train] is the training config, read by train_file.py)
TASK_KEYS: dict[str, str] = {
    "on": "on", "name": "name", "max_restarts": "max_restarts",
    "resources.nodes": "nodes", "resources.gpus_per_node": "gpus_per_node", "resources.device": "device",
    "resources.cpus_per_worker": "cpus_per_worker",
    "slurm.time": "time", "slurm.partition": "partition", "slurm.signal_lead": "signal_lead",
    "slurm.requeue_exit": "requeue_exit", "slurm.max_requeues": "max_requeues",
    "k8s.image": "image", "k8s.kind": "k8s_kind", "k8s.queue": "queue", "k8s.storage": "storage",
}
_TABLES = ("resources", "slurm", "k8s")


def load_task_file(path: Path) -> dict[str, Any]:
    """The launch settings of a task file as {key (`slurm.time`): value}; TASK_KEYS names the `bastion launch`
    parameter each sets (its [train] table is read as the run's --config). Unreadable files, a missing [train]
    table and unknown keys are guidance errors."""
    from bastion.commands.train_file import read_toml

    table = read_toml(path, f"Task file {path}", "task.toml")
    if not isinstance(table.get("train"), dict):
        raise ConfigError(f"Task file {path} has no [train] table.",
                          fix="put the training settings (model, plan, data, steps, run_dir, ...) under [train], "
                              "as in a `bastion train --config` file.")
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key == "train":
            continue
        items = value.items() if key in _TABLES and isinstance(value, dict) else [(None, value)]
        for sub, item in items:
            name = f"{key}.{sub}" if sub is not None else key
            if name not in TASK_KEYS:
                raise ConfigError(f"{path}: unknown setting '{name}'.{did_you_mean(name, TASK_KEYS)}",
                                  fix=f"use one of: {', '.join(TASK_KEYS)}, and [train] for the training settings.")
            values[name] = item
    return values
