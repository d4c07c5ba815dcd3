"""Shrink and grow back, through `bastion train --on-failure shrink` itself (4 gloo processes, CPU).

A dp4 ZeRO-3 run loses rank 3's node at step 5; the node is back at step 7. The launcher re-plans for the ranks
left (dp2), resumes from the newest checkpoint, stops the smaller world at the next checkpoint boundary and grows
back to dp4. Every time comes from metrics.jsonl (the `fault` and `plan_change` events and the step records,
whose world size is the number of ranks in `rank_sections_s`), none from a clock around the subprocess:

- lost rank → next completed step on the shrunken world (target <= 30 s on CPU), split into detection and
  re-plan (fault → the `plan_change` event) and relaunch + reload + the first step (→ that step's record);
- grow-back: the last step of the smaller world → the `plan_change` back → the first step completed on the
  grown world.

    .venv/bin/python benchmarks/bench_shrink.py [--model tiny] [--out benchmarks/results/shrink.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_recovery import bastion, records  # noqa: E402

PLAN = {"dp": 4, "zero_stage": 3, "micro_batch": 1, "global_batch": 8, "precision": "fp32"}
STEPS, LOST_AT, BACK_AT, EVERY = 12, 5, 7, 2


def machine() -> dict:
    """Where and when the figures were taken; the box is shared, so its load average goes with them."""
    return {"cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()],
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


@contextmanager
def scratch_with_data(prefix: str) -> Iterator[tuple[Path, Path]]:
    """A temporary folder (removed afterwards) and a token dataset prepared in it."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        data = root / "data"
        bastion("data", "prepare", str(Path(json.__file__).parent), "--out", str(data))
        yield root, data
    finally:
        shutil.rmtree(root, ignore_errors=True)


def world(record: dict) -> int:
    """The number of ranks that ran a step record."""
    return len(record["rank_sections_s"]["step"])


def first_step_after(recs: list[dict], since: float, world_size: int) -> dict:
    return next(r for r in recs if "event" not in r and r["time"] > since and world(r) == world_size)


def shrink_and_grow(root: Path, data: Path, model: str) -> dict:
    plan = root / "plan.json"
    plan.write_text(json.dumps(PLAN))
    run_dir = root / "shrink"
    bastion("train", "--model", model, "--plan", str(plan), "--data", str(data), "--steps", str(STEPS),
            "--run-dir", str(run_dir), "--nproc", "4", "--no-progress", "--on-failure", "shrink",
            "--checkpoint-every", str(EVERY), "--sync-checkpoint",
            "--inject", f"lose-node:rank=3,step={LOST_AT},back_at={BACK_AT}")
    recs = records(run_dir)
    fault = next(r for r in recs if r.get("event") == "fault")
    shrink, grow = [r for r in recs if r.get("event") == "plan_change"]
    small = shrink["to_world"]
    first_small = first_step_after(recs, shrink["time"], small)
    last_small = [r for r in recs if "event" not in r and shrink["time"] < r["time"] < grow["time"]][-1]
    first_grown = first_step_after(recs, grow["time"], grow["to_world"])
    steps = [r for r in recs if "event" not in r]
    from bastion.rundir.summary import read_summary

    summary = read_summary(run_dir)
    return {
        "model": model, "plan": PLAN, "steps": STEPS, "lost": f"rank 3 at step {LOST_AT}, back at step {BACK_AT}",
        "checkpoint_every": EVERY, "worlds": [shrink["from_world"], small, grow["to_world"]],
        "resumed_from_step": shrink["step"], "grew_at_step": grow["step"],
        "lost_to_next_step_on_shrunken_world_s": first_small["time"] - fault["time"],
        "lost_to_plan_change_s": shrink["time"] - fault["time"],
        "plan_change_to_first_shrunken_step_s": first_small["time"] - shrink["time"],
        "first_shrunken_step_time_s": first_small["step_time_s"],
        "grow_back_s": first_grown["time"] - last_small["time"],
        "grow_plan_change_to_first_grown_step_s": first_grown["time"] - grow["time"],
        "median_step_s": {str(n): sorted(r["step_time_s"] for r in steps if world(r) == n)[
            sum(1 for r in steps if world(r) == n) // 2] for n in sorted({world(r) for r in steps})},
        "target_s": 30.0, "goodput": summary["goodput"], "time_breakdown_s": summary["time_breakdown_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny or small (`small` on dp4 is ~4x slower here)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "shrink.json")
    args = parser.parse_args()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    with scratch_with_data("bastion-bench-shrink-") as (root, data):
        results = {"shrink": shrink_and_grow(root, data, args.model),
                   "machine": {**machine(), "loadavg_at_start": load_at_start}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    s = results["shrink"]
    print(f"{s['model']} dp4 → dp{s['worlds'][1]} (lost {s['lost']}): next step on {s['worlds'][1]} ranks "
          f"{s['lost_to_next_step_on_shrunken_world_s']:.1f} s after the loss (target <= 30 s): detection + re-plan "
          f"{s['lost_to_plan_change_s']:.1f} s, relaunch + reload from step {s['resumed_from_step']} + first step "
          f"{s['plan_change_to_first_shrunken_step_s']:.1f} s")
    print(f"grow back to {s['worlds'][2]} ranks at step {s['grew_at_step']}: {s['grow_back_s']:.1f} s from the last "
          f"step on {s['worlds'][1]} ranks to the first on {s['worlds'][2]}; median step by world "
          f"{s['median_step_s']}; goodput {s['goodput']:.1%}")
    print(f"load average {load_at_start} at start, {results['machine']['loadavg']} at the end; saved {args.out}")


if __name__ == "__main__":
    main()
