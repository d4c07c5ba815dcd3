"""Elastic jobs on a scheduler (Slurm or Kubernetes with --on-failure shrink|auto): the plan a worker runs is the
plan for the world it was started in, not only the one it was launched with.

`bastion launch` writes an `elastic` section into the run config (`elastic_section`: the node counts the job may
run on, each with a plan that fits it exactly). A scheduler then starts the workers on however many nodes it still
has — the Slurm batch script's loop after a node went down (launch/slurm_nodes.py chooses them), torchrun's elastic
rendezvous in a PyTorchJob/JobSet with `minReplicas < maxReplicas` — and every worker takes the plan for its
WORLD_SIZE (`plan_for_world`: launch/shrink.py's re-plan, the same on every rank). Rank 0 records a `plan_change`
when that world differs from the last one the run directory records (shrinking, or growing back after a requeue);
the workers resume from the newest checkpoint, which loads under any plan. Under Slurm each worker also writes the
node it runs on (`record_node`), so a straggler rank's node can be excluded. No torch here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bastion.errors import ConfigError, LaunchError
from bastion.launch.shrink import record_plan_change, shrink_plan
from bastion.rundir import checkpoints as checkpoint_files
from bastion.rundir.layout import checkpoints_dir, rank_node_path
from bastion.rundir.metrics import read_metrics
from bastion.rundir.records import is_event
from bastion.specs.model import ModelSpec, model_from_mapping
from bastion.specs.plan import ParallelPlan

#: the run config's key for the elastic section
ELASTIC_KEY = "elastic"


def plan_for_world(spec: ModelSpec, plan: ParallelPlan, world: int) -> ParallelPlan | None:
    """The plan for exactly `world` ranks: `plan` itself, or its re-plan with fewer data-parallel replicas
    (launch/shrink.py); None when no such plan uses exactly `world` ranks."""
    if world == plan.num_gpus:
        return plan
    smaller = shrink_plan(plan, spec, world) if world < plan.num_gpus else None
    return smaller if smaller is not None and smaller.num_gpus == world else None


def node_counts(spec: ModelSpec, plan: ParallelPlan, procs_per_node: int, max_nodes: int) -> list[int]:
    """The node counts up to `max_nodes` that have a plan using all their `procs_per_node` workers each."""
    return [n for n in range(1, max_nodes + 1) if plan_for_world(spec, plan, n * procs_per_node) is not None]


def elastic_section(spec: ModelSpec, plan: ParallelPlan, procs_per_node: int, max_nodes: int,
                    min_nodes: int | None) -> dict[str, Any]:
    """The run config's `elastic` section: the node counts the job may continue on, from `min_nodes` (default:
    the fewest that fit) up to `max_nodes`; refused when some count in that range has no plan (a scheduler may
    settle on any count between its minimum and maximum)."""
    counts = node_counts(spec, plan, procs_per_node, max_nodes)
    if min_nodes is None:
        # the longest run of workable counts ending at max_nodes
        min_nodes = max_nodes
        while min_nodes - 1 in counts:
            min_nodes -= 1
    if not 1 <= min_nodes <= max_nodes:
        raise LaunchError(f"--min-nodes {min_nodes} is outside 1..{max_nodes} (the job's --nodes).",
                          fix=f"give --min-nodes between 1 and {max_nodes}.")
    gaps = [n for n in range(min_nodes, max_nodes + 1) if n not in counts]
    if gaps:
        raise LaunchError(
            f"On {', '.join(map(str, gaps))} node(s) × {procs_per_node} worker(s) no plan of {spec.name} with fewer "
            f"data-parallel replicas uses every worker (dp {plan.dp}, global batch {plan.global_batch}, "
            f"micro-batch {plan.micro_batch}), so the job could not continue there.",
            fix=f"give --min-nodes so that every count from it to {max_nodes} works (these do: "
                f"{', '.join(map(str, counts)) or 'none'}), or drop --on-failure shrink.")
    return {"min_nodes": min_nodes, "max_nodes": max_nodes, "procs_per_node": procs_per_node}


def config_for_world(config: dict[str, Any], world: int) -> dict[str, Any]:
    """The run config a worker of an elastic job runs in a world of `world` ranks; a guidance error when the
    world has no plan (a worker of a job that is not elastic gets the config unchanged)."""
    if ELASTIC_KEY not in config or world == config["world_size"]:
        return config
    spec = model_from_mapping(config["model"], "the run config's model")
    plan = ParallelPlan.from_dict(config["plan"])
    fitted = plan_for_world(spec, plan, world)
    if fitted is None:
        raise ConfigError(f"This elastic job was started on {world} workers, and no plan of {spec.name} with fewer "
                          f"data-parallel replicas than dp {plan.dp} uses exactly {world}.",
                          fix=f"run it on the node counts it was launched for ({config[ELASTIC_KEY]}).")
    return {**config, "plan": fitted.to_dict(), "world_size": world}


def record_world(run_dir: Path, config: dict[str, Any]) -> None:
    """Rank 0 of an elastic job: a `plan_change` when this start's world differs from the last one recorded."""
    if ELASTIC_KEY not in config:
        return
    last = last_plan(run_dir)
    plan = ParallelPlan.from_dict(config["plan"])
    if last is None or last.num_gpus == plan.num_gpus:
        return
    newest = checkpoint_files.committed(checkpoints_dir(run_dir))
    grew = plan.num_gpus > last.num_gpus
    record_plan_change(run_dir, newest[-1].step if newest else 0, last, plan, [],
                       "nodes back" if grew else "fewer nodes")


def last_plan(run_dir: Path) -> ParallelPlan | None:
    """The plan of the newest start, restart or plan change the run directory records."""
    for record in reversed(read_metrics(run_dir).records):
        if is_event(record, "run_start", "resume", "restart", "plan_change") and isinstance(record.get("plan"),
                                                                                              dict):
            return ParallelPlan.from_dict(record["plan"])
    return None


def record_node(run_dir: Path, rank: int) -> None:
    """Under Slurm: the name of the node this rank runs on, for the batch script's straggler exclusion."""
    node = os.environ.get("SLURMD_NODENAME")
    if not node:
        return
    path = rank_node_path(run_dir, rank)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(node + "\n")
    except OSError:  # a missing record only means a straggler's node cannot be named
        pass


def nodes_of_ranks(run_dir: Path) -> dict[int, str]:
    """Rank -> node name, as the workers of the last start wrote them."""
    found = {}
    for path in rank_node_path(run_dir, 0).parent.glob("rank-*"):
        suffix = path.name.removeprefix("rank-")
        if suffix.isdigit():
            found[int(suffix)] = path.read_text().strip()
    return found


def prepare_worker(config: dict[str, Any], world: int, rank: int) -> dict[str, Any]:
    """What a scheduled worker does before it trains: take the plan for its world, record its node, and (rank 0)
    the plan change."""
    config = config_for_world(config, world)
    run_dir = Path(config["train"]["run_dir"])
    record_node(run_dir, rank)
    if rank == 0:
        record_world(run_dir, config)
    return config
