"""`bastion train --on-failure shrink` on this machine: when a rank's node is lost, continue on the ranks left.

torchrun cannot shrink a group within one node (`--nnodes MIN:MAX` counts nodes, and `--nproc-per-node` is fixed),
so the launcher does it: each launch runs torchrun without elastic restarts; when it fails, the launcher reads
metrics.jsonl for the `lose-node` faults that fired in that launch. With nodes lost it re-plans for the ranks
left (`shrink_plan`), records a `plan_change` event and launches again — the workers resume from the newest
checkpoint, which loads under any plan (runtime/resilience.py reshards) with the same data order (the global
sampler depends on the global batch and seed, not on the plan). With no node lost (a crash) it relaunches the same
plan, up to --max-restarts times.

The re-plan keeps every degree but data parallelism: the model's sharding across tp/pp/cp stays, dp drops to the
largest value the ranks left hold that still divides the global batch into whole micro-batches (more gradient
accumulation makes up the difference), so the run trains on exactly the same samples per step.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion.errors import BastionError, LaunchError
from bastion.rundir import checkpoints as checkpoint_files
from bastion.rundir.layout import checkpoints_dir
from bastion.rundir.metrics import log_event, read_metrics
from bastion.rundir.records import FAULT, is_event
from bastion.specs.model import ModelSpec
from bastion.specs.plan import ParallelPlan

#: --on-failure values: requeue (torchrun restarts the same world), shrink (this module), auto (shrink when the
#: plan has data-parallel replicas to drop: locally no replacement node ever comes, so a requeue would wait forever)
ON_FAILURE = ("requeue", "shrink", "auto")


def shrink_plan(plan: ParallelPlan, spec: ModelSpec, ranks_left: int) -> ParallelPlan | None:
    """The plan for at most `ranks_left` ranks: same degrees but dp, dp as large as fits and divides the global
    batch into whole micro-batches; None when no such plan exists (dp would drop below 1)."""
    other = plan.tp * plan.pp * plan.cp
    for dp in range(min(plan.dp - 1, ranks_left // other), 0, -1):
        if plan.global_batch % (dp * plan.micro_batch):
            continue
        candidate = dataclasses.replace(plan, dp=dp)
        try:
            candidate.validate(spec, None, spec.seq_len)
        except BastionError:
            continue
        return candidate
    return None


def resolve_on_failure(on_failure: str, plan: ParallelPlan) -> str:
    """`auto` decided for this plan: shrink when it has data-parallel replicas to drop, else requeue."""
    if on_failure == "auto":
        return "shrink" if plan.dp > 1 else "requeue"
    return on_failure


def lost_ranks(run_dir: Path, since: float) -> list[int]:
    """Ranks whose node a `lose-node` fault took since `since` (Unix time)."""
    return sorted({r["rank"] for r in read_metrics(run_dir).records
                   if is_event(r, FAULT.name) and r.get("fault") == "lose-node" and r["time"] >= since})


def run_shrinking(run_dir: Path, spec: ModelSpec, plan: ParallelPlan, config: dict[str, Any], max_restarts: int,
                  launch: Callable[[dict[str, Any], int], int],
                  config_for: Callable[[ParallelPlan], dict[str, Any]]) -> int:
    """Launch (`launch(run config, world size)` → exit code) until the run succeeds, shrinking on lost nodes and
    relaunching on other failures while restarts last; the last exit code."""
    restarts_left = max_restarts
    while True:
        started = time.time()
        code = launch(config, plan.num_gpus)
        if code == 0:
            return 0
        lost = lost_ranks(run_dir, started)
        if not lost:
            if restarts_left == 0:
                return code
            restarts_left -= 1
            print(f"bastion: the workers failed (exit {code}); relaunching on {plan.num_gpus} ranks "
                  f"({restarts_left} restart(s) left)", flush=True)
            continue
        smaller = shrink_plan(plan, spec, plan.num_gpus - len(lost))
        if smaller is None:
            raise LaunchError(f"Rank(s) {lost} lost their node, and no plan of {spec.name} with fewer "
                              f"data-parallel replicas fits the {plan.num_gpus - len(lost)} rank(s) left "
                              f"(dp {plan.dp}, global batch {plan.global_batch}, micro-batch {plan.micro_batch}).",
                              fix="resume on the full world once the node is back (rerun the same command), or "
                                  "choose a plan with more data parallelism.")
        newest = checkpoint_files.committed(checkpoints_dir(run_dir))
        log_event(run_dir, "plan_change", step=newest[-1].step if newest else 0, from_world=plan.num_gpus,
                  to_world=smaller.num_gpus, plan=smaller.to_dict(), from_plan=plan.to_dict(), lost_ranks=lost,
                  reason="lose-node")
        print(f"bastion: rank(s) {lost} lost their node; continuing on {smaller.num_gpus} rank(s): dp "
              f"{plan.dp} → {smaller.dp}", flush=True)
        plan, config = smaller, config_for(smaller)
