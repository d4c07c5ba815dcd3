"""Which of its nodes a Slurm job runs its next job step on (`bastion _slurm_nodes`, called by the batch script
before every srun).

A job allocated with `--no-kill` keeps running when one of its nodes fails; the batch script then starts the next
srun on the nodes it still has instead of waiting for a requeue. Before each srun it asks this module:
- which nodes of the allocation are gone (taken out of the job, or down, drained, failing in `sinfo`), unhealthy
  (a rank's device failed a `health_check` since the script started: runtime/health.py) or slow (a `straggler`
  event since then), each mapped to its node through the workers' node records (launch/elastic.py); each newly
  excluded node is a `node_excluded` event in metrics.jsonl, and is not used again by this start of the job (nor
  by the job it starts again instead of a requeue, launch/slurm.py);
- how many of the rest to use: the most that have a plan (the run config's `elastic` section), or with hot spares
  (`--spare-nodes`, the run config's `spares` section) the plan's node count, so a lost node's place is taken by a
  spare at the next step without a re-plan or a requeue; without either, the full count;
and prints `COUNT NODES EXCLUDED` (how many nodes, which, and the nodes excluded so far; lists comma-separated,
`-` for none). Exit status 3: too few
nodes are left, so the script requeues the job.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bastion.launch.elastic import ELASTIC_KEY, nodes_of_ranks
from bastion.rundir.metrics import log_event, read_metrics
from bastion.rundir.records import HEALTH_CHECK, NODE_EXCLUDED, STRAGGLER, is_event

#: the run config's section of a job with hot spare nodes: {"plan_nodes": N, "spare_nodes": K}
SPARES_KEY = "spares"
#: `bastion _slurm_nodes`'s exit status when too few nodes are left to continue
TOO_FEW_NODES = 3
#: node states (sinfo %T, lowercase; a flag may be appended, e.g. `idle+drain`) a job step must not use
_UNUSABLE = ("down", "drain", "fail", "maint", "reboot", "power", "not_responding", "no_respond", "future")


def excluded_nodes(run_dir: Path, job_id: str, start: int) -> list[str]:
    """The nodes this start of the job stopped using, in order (its `node_excluded` events)."""
    found: list[str] = []
    for record in read_metrics(run_dir).records:
        if (is_event(record, NODE_EXCLUDED.name) and str(record.get("job_id")) == job_id
                and record.get("start") == start and record["node"] not in found):
            found.append(record["node"])
    return found


def unusable(states: dict[str, str]) -> list[str]:
    """Nodes whose Slurm state says a job step cannot run there."""
    return [node for node, state in states.items() if any(word in state.lower() for word in _UNUSABLE)]


def straggler_nodes(run_dir: Path, since: float) -> dict[str, int]:
    """Node -> straggler rank, for the `straggler` events since `since` whose rank's node is known."""
    nodes = nodes_of_ranks(run_dir)
    return {nodes[r["rank"]]: r["rank"] for r in read_metrics(run_dir).records
            if is_event(r, STRAGGLER.name) and r["time"] >= since and r["rank"] in nodes}


def unhealthy_nodes(run_dir: Path, since: float) -> dict[str, int]:
    """Node -> rank, for the ranks whose device failed a `health_check` since `since` (node known)."""
    nodes = nodes_of_ranks(run_dir)
    return {nodes[rank]: rank for r in read_metrics(run_dir).records
            if is_event(r, HEALTH_CHECK.name) and r["time"] >= since
            for rank in r.get("failing_ranks", []) if rank in nodes}


def next_nodes(run_dir: Path, config: dict[str, Any], job_id: str, start: int, job_nodes: list[str],
               states: dict[str, str], since: float) -> tuple[list[str], list[str]]:
    """(the nodes the next srun uses, in allocation order; every node excluded so far); no nodes when too few
    are left. Records a `node_excluded` event for each node newly excluded."""
    excluded = excluded_nodes(run_dir, job_id, start)
    reasons = {node: ("down", None) for node in unusable(states) if node in job_nodes}
    for reason, found in (("unhealthy", unhealthy_nodes(run_dir, since)),
                          ("straggler", straggler_nodes(run_dir, since))):
        reasons.update({node: (reason, rank) for node, rank in found.items()
                        if node in job_nodes and node not in reasons})
    for node, (reason, rank) in reasons.items():
        if node not in excluded:
            excluded.append(node)
            log_event(run_dir, NODE_EXCLUDED.name, node=node, reason=reason, rank=rank, job_id=job_id,
                      start=start)
    left = [n for n in job_nodes if n not in excluded]
    elastic, spares = config.get(ELASTIC_KEY), config.get(SPARES_KEY)
    if elastic:
        counts: Sequence[int] = range(elastic["min_nodes"], elastic["max_nodes"] + 1)
    else:
        counts = [spares["plan_nodes"]] if spares else [len(job_nodes)]
    usable = [n for n in counts if n <= len(left)]
    return (left[:max(usable)] if usable else []), excluded
