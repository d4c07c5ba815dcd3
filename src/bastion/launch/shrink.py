"""`bastion train --on-failure shrink` on this machine: when a rank's node is lost, continue on the ranks left.

torchrun cannot shrink a group within one node (`--nnodes MIN:MAX` counts nodes, and `--nproc-per-node` is fixed),
so the launcher does it: each launch runs torchrun without elastic restarts; when it fails, the launcher reads
metrics.jsonl for the `lose-node` faults that fired in that launch. With nodes lost it re-plans for the ranks
left (`shrink_plan`), records a `plan_change` event and launches again — the workers resume from the newest
checkpoint, which loads under any plan (runtime/resilience.py reshards) with the same data order (the global
sampler depends on the global batch and seed, not on the plan). When the lost nodes come back (`back_at`), the
smaller world stops at the first checkpoint boundary at or after that step (--stop-after-step's mechanism: it
saves there) and the launcher grows back to the plan it had, another `plan_change`. With no node lost (a crash)
it relaunches the same plan, up to --max-restarts times.

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
from bastion.rundir.records import FAULT, RESTART, is_event
from bastion.specs.model import ModelSpec
from bastion.specs.plan import ParallelPlan


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


def lost_nodes(run_dir: Path, since: float) -> dict[int, int | None]:
    """Rank -> the step its node is back (None: never), for the `lose-node` faults that fired since `since`."""
    return {r["rank"]: r.get("back_at") for r in read_metrics(run_dir).records
            if is_event(r, FAULT.name) and r.get("fault") == "lose-node" and r["time"] >= since}


def grow_boundary(back_at: int, checkpoint_every: int) -> int:
    """The first checkpoint boundary at or after `back_at` (`auto` or no interval: `back_at` itself)."""
    if checkpoint_every <= 0:
        return back_at
    return -(-back_at // checkpoint_every) * checkpoint_every


def with_stop_after(config: dict[str, Any], stop_after_step: int) -> dict[str, Any]:
    """The run config with --stop-after-step set (the earlier of the user's and `stop_after_step`)."""
    train = dict(config["train"])
    resilience = dict(train["resilience"])
    asked = resilience.get("stop_after_step", 0)
    resilience["stop_after_step"] = min(asked, stop_after_step) if asked else stop_after_step
    train["resilience"] = resilience
    return {**config, "train": train}


def back_at_step(lost: dict[int, int | None]) -> int | None:
    """The step by which every lost node is back (None: one never comes back)."""
    back = list(lost.values())
    return None if not back or None in back else max(back)  # type: ignore[type-var]


def run_shrinking(run_dir: Path, spec: ModelSpec, plan: ParallelPlan, config: dict[str, Any], max_restarts: int,
                  launch: Callable[[dict[str, Any], int], int],
                  config_for: Callable[[ParallelPlan], dict[str, Any]]) -> int:
    """Launch (`launch(run config, world size)` → exit code) until the run succeeds, shrinking on lost nodes (and
    growing back when they return) and relaunching on other failures while restarts last; the last exit code."""
    restarts_left = max_restarts
    steps, every = config["train"]["steps"], config["train"]["resilience"]["checkpoint_every"]
    grow_to: tuple[int, ParallelPlan] | None = None  # (the step the smaller world stops at, the plan to grow to)
    while True:
        started = time.time()
        code = launch(config, plan.num_gpus)
        if code == 0:
            if grow_to is None:
                return 0
            step, larger = grow_to
            record_plan_change(run_dir, step, plan, larger, [], "node back")
            print(f"bastion: the lost node(s) are back; growing to {larger.num_gpus} rank(s) at step {step}: dp "
                  f"{plan.dp} → {larger.dp}", flush=True)
            plan, config, grow_to = larger, config_for(larger), None
            continue
        lost_back = lost_nodes(run_dir, started)
        lost = sorted(lost_back)
        if not lost:
            if restarts_left == 0:
                return code
            restarts_left -= 1
            record_relaunch(run_dir, plan, max_restarts - restarts_left)
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
        record_plan_change(run_dir, newest[-1].step if newest else 0, plan, smaller, lost, "lose-node")
        print(f"bastion: rank(s) {lost} lost their node; continuing on {smaller.num_gpus} rank(s): dp "
              f"{plan.dp} → {smaller.dp}", flush=True)
        back_at = back_at_step(lost_back)
        boundary = grow_boundary(back_at, every) if back_at is not None else None
        grow_to = (boundary, grow_to[1] if grow_to else plan) if boundary is not None and boundary < steps else None
        plan, config = smaller, config_for(smaller)
        if grow_to is not None:
            config = with_stop_after(config, grow_to[0])


def record_relaunch(run_dir: Path, plan: ParallelPlan, attempt: int) -> None:
    """A `restart` event for a crashed launch relaunched on the same plan: its workers, a fresh torchrun, log a
    `resume` (their restart count starts at 0 again), which the accounting does not count as a restart."""
    newest = checkpoint_files.committed(checkpoints_dir(run_dir))
    log_event(run_dir, RESTART.name, attempt=attempt, resumed_from_step=newest[-1].step if newest else 0,
              world_size=plan.num_gpus, plan=plan.to_dict())


def record_plan_change(run_dir: Path, step: int, old: ParallelPlan, new: ParallelPlan, lost: list[int],
                       reason: str) -> None:
    """A `plan_change` event: the run continues from the checkpoint of `step` under `new`."""
    log_event(run_dir, "plan_change", step=step, from_world=old.num_gpus, to_world=new.num_gpus, plan=new.to_dict(),
              from_plan=old.to_dict(), lost_ranks=lost, reason=reason)
