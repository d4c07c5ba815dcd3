"""--fault-tolerance torchft end to end: real `bastion train` launches (gloo), 2 replica groups × 1 process.

The first test, two launches: a plain dp2 run as the reference, and a torchft run of the same plan in which
group 1's node is lost at step KILL_AT and back from step BACK_AT. Before the loss both groups step together and the losses are the
dp2 run's; at the loss group 0 keeps stepping alone (never restarted; the step records say which groups took part
and which samples were dropped), group 1's torchrun restarts its worker, which stays out until its node is back
(group 0 has finished step BACK_AT - 1: a quickly restarted worker could otherwise be back before group 0's next
quorum and never be dropped), heals from group 0 and rejoins; at the end both groups hold bit-identical
parameters. Group 0's rank waits 0.5 s before each step's closing collective (`flaky-link`), so the run is still
going when group 1 is back (a process start takes 5-25 s on this machine, quiet or loaded).

The second: a torchft run checkpointed every CKPT_EVERY steps and stopped after STOP_AT (as when every group dies),
then launched again (it resumes from the newest committed checkpoint in every group) to RESUMED_STEPS: its losses,
data positions, sample accounting and final parameters are those of an uninterrupted torchft run, bit for bit (and
its losses the plain dp2 run's, within 1e-5). The third: both groups killed at ALL_DIE_AT: with no live peer to
heal from, every restarted group loads the newest committed checkpoint, and the run again ends as the
uninterrupted one. The fourth: NaN gradients at NAN_AT in one group (averaged into every group's): every group
rejects the step, none applies it, and all skip its batch without a rollback (the checkpoint another group may be
writing is no common point): the run is a `--skip-batch NAN_AT` torchft run's, bit for bit, the batch counted
once for the run. The fifth: the same with groups of two ranks each (SHARDED_PLAN: 2 groups × 2 processes, ZeRO-3
inside a group), the NaN on one rank of the non-leading group only: every rank of every group skips the same
step, and the run is the same plan's `--skip-batch` run, bit for bit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torchft")
pytestmark = [pytest.mark.dist, pytest.mark.timeout(900)]

STEPS = 40
KILL_AT = 4
BACK_AT = 8
CKPT_EVERY = 5
STOP_AT = 10
RESUMED_STEPS = 20
ALL_DIE_AT = 7
NAN_AT = 6
PLAN = {"dp": 2, "pp": 1, "tp": 1, "zero_stage": 0, "micro_batch": 1, "global_batch": 4, "precision": "fp32"}
#: two replica groups of two FSDP ranks each (`--replica-groups 2`), two micro-batches per rank
SHARDED_PLAN = {**PLAN, "dp": 4, "zero_stage": 3, "global_batch": 8}
SHARDED_STEPS = 10


def train(tmp_path: Path, token_data: Path, name: str, *extra: str, steps: int = STEPS, plan: dict = PLAN) -> Path:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    run_dir = tmp_path / name
    result = subprocess.run(
        [sys.executable, "-m", "bastion", "train", "--model", "tiny", "--plan", str(plan_file), "--data", str(token_data),
         "--steps", str(steps), "--run-dir", str(run_dir), "--no-progress", *extra],
        capture_output=True, text=True, timeout=800, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    (tmp_path / f"{name}.out").write_text(result.stdout + result.stderr)  # what the person saw
    return run_dir


def test_a_killed_replica_group_is_dropped_restarted_healed_and_rejoins(tmp_path, token_data) -> None:
    reference = json.loads((train(tmp_path, token_data, "dp2", "--nproc", "2", "--checkpoint-every", "never")
                            / "summary.json").read_text())["losses"]
    run_dir = train(tmp_path, token_data, "ft", "--fault-tolerance", "torchft", "--max-restarts", "1",
                    "--inject", f"lose-node:rank=1,step={KILL_AT},back_at={BACK_AT}", "--inject", "flaky-link:rank=0,delay_ms=500")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = {r["step"]: r for r in records if "event" not in r}
    assert sorted(steps) == list(range(1, STEPS + 1))  # every step once: group 0 never went back
    # no fault yet: both groups, the dp2 run's losses
    for step in range(1, KILL_AT):
        assert steps[step]["replica_groups"] == [0, 1] and steps[step]["dropped_sample_ids"] == []
        assert steps[step]["loss"] == pytest.approx(reference[step - 1], abs=1e-5)
    # group 1's node was lost at the start of KILL_AT and was back for BACK_AT at the earliest: group 0 stepped alone, group 1's share (samples 2..3 of the step's 4)
    # was not trained on; then group 1 rejoined and both stepped to the end
    alone = [s for s in steps if steps[s]["replica_groups"] == [0]]
    assert alone and alone[0] == KILL_AT and alone == list(range(KILL_AT, alone[-1] + 1))
    assert BACK_AT - 1 <= alone[-1] < STEPS
    for step in alone:
        start = (step - 1) * 4
        assert steps[step]["dropped_sample_ids"] == [[start + 2, start + 4]]
    assert all(steps[s]["replica_groups"] == [0, 1] for s in range(alone[-1] + 1, STEPS + 1))
    events = [(r["event"], r["step"], r["groups"]) for r in records
              if r.get("event") in ("replica_group_drop", "replica_group_join")]
    assert events == [("replica_group_drop", KILL_AT, [1]), ("replica_group_join", alone[-1] + 1, [1])]
    restarts = [r for r in records if r.get("event") == "restart"]
    # group 0 was never restarted; group 1 logged its restart once healed, at group 0's step then
    assert [(r["replica_group"], r["resumed_from_step"]) for r in restarts] == [(1, alone[-1])]
    groups = [json.loads((run_dir / "replica_groups" / f"group-{g}.json").read_text()) for g in (0, 1)]
    assert [g["restarts"] for g in groups] == [0, 1] and [g["steps"] for g in groups] == [STEPS, STEPS]
    assert groups[0]["params_sha256"] == groups[1]["params_sha256"] is not None  # healed: bit-identical
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["finished"] and summary["steps"] == STEPS and summary["plan"]["dp"] == 2
    assert summary["replica_groups"] == {"groups": 2, "steps_with_fewer_groups": len(alone), "drops": 1,
                                         "rejoins": 1, "samples_trained": STEPS * 4 - 2 * len(alone),
                                         "samples_dropped": 2 * len(alone)}
    assert summary["params_sha256"] == groups[0]["params_sha256"]


def _steps(run_dir: Path) -> dict[int, dict]:
    """The last record of each step in metrics.jsonl (a resumed launch appends after the first one's)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r for r in records if "event" not in r}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, token_data) -> Path:
    """A torchft run of RESUMED_STEPS steps, nothing stopped or killed."""
    return train(tmp_path_factory.mktemp("whole"), token_data, "whole", "--fault-tolerance", "torchft",
                 "--checkpoint-every", "never", steps=RESUMED_STEPS)


def _same_run(run_dir: Path, whole: Path) -> dict:
    """`run_dir`'s run trained on the same batches as `whole`'s, bit for bit, every group on all of them; its
    summary."""
    mine, reference = _steps(run_dir), _steps(whole)
    assert sorted(mine) == sorted(reference) == list(range(1, RESUMED_STEPS + 1))
    for step in mine:
        assert mine[step]["loss"] == reference[step]["loss"], step
        start = (step - 1) * PLAN["global_batch"]
        assert mine[step]["sample_ids"] == [start, start + PLAN["global_batch"]]
        assert mine[step]["replica_groups"] == [0, 1] and mine[step]["dropped_sample_ids"] == []
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["finished"] and summary["steps"] == RESUMED_STEPS
    groups = [json.loads((run_dir / "replica_groups" / f"group-{g}.json").read_text()) for g in (0, 1)]
    assert groups[0]["params_sha256"] == groups[1]["params_sha256"] == summary["params_sha256"]
    assert summary["params_sha256"] == json.loads((whole / "summary.json").read_text())["params_sha256"] is not None
    assert summary["replica_groups"] == {"groups": 2, "steps_with_fewer_groups": 0, "drops": 0, "rejoins": 0,
                                         "samples_trained": RESUMED_STEPS * PLAN["global_batch"],
                                         "samples_dropped": 0}
    return summary


def test_a_torchft_run_checkpoints_stops_and_resumes_as_if_uninterrupted(tmp_path, token_data,
                                                                         uninterrupted) -> None:
    steps = RESUMED_STEPS
    dp2 = json.loads((train(tmp_path, token_data, "dp2", "--nproc", "2", "--checkpoint-every", "never", steps=steps)
                      / "summary.json").read_text())
    ft = ("--fault-tolerance", "torchft", "--checkpoint-every", str(CKPT_EVERY))
    stopped = train(tmp_path, token_data, "stopped", *ft, "--stop-after-step", str(STOP_AT), steps=steps)
    first = json.loads((stopped / "summary.json").read_text())
    assert not first["finished"] and first["steps"] == STOP_AT
    # one copy per checkpoint (one group wrote each), sharded as a group's plan: dp 1, half the global batch
    saved = sorted(p.name for p in (stopped / "checkpoints").iterdir())
    assert saved == [f"step-{s:08d}" for s in range(CKPT_EVERY, STOP_AT + 1, CKPT_EVERY)]
    state = json.loads((stopped / "checkpoints" / f"step-{STOP_AT:08d}" / "state.json").read_text())
    assert state["step"] == STOP_AT and state["world_size"] == 1
    assert (state["plan"]["dp"], state["plan"]["global_batch"]) == (1, PLAN["global_batch"] // 2)

    resumed = train(tmp_path, token_data, "stopped", *ft, steps=steps)  # --resume is the default
    resumes = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()
               if '"resume"' in line]
    assert sorted((r["replica_group"], r["resumed_from_step"]) for r in resumes) == [(0, STOP_AT), (1, STOP_AT)]
    summary = _same_run(resumed, uninterrupted)
    # the dp2 run's parameters differ in the last bits (DDP averages its gradients in another order than
    # torchft's managed all-reduce): its losses are compared within 1e-5
    assert [r["loss"] for _, r in sorted(_steps(resumed).items())] == pytest.approx(dp2["losses"], abs=1e-5)
    assert summary["checkpoints"][-1] == steps  # the final step saved too (--checkpoint-every N keeps it)


def test_when_every_group_dies_each_resumes_from_the_newest_checkpoint(tmp_path, token_data, uninterrupted) -> None:
    # both groups killed at the start of step ALL_DIE_AT: torchrun restarts each, no live peer is left to heal
    # from, so every group loads the newest committed checkpoint (step CKPT_EVERY) and replays from there
    run_dir = train(tmp_path, token_data, "all-died", "--fault-tolerance", "torchft", "--checkpoint-every",
                    str(CKPT_EVERY), "--sync-checkpoint", "--max-restarts", "2",
                    "--inject", f"kill:rank=0,step={ALL_DIE_AT}",
                    "--inject", f"kill:rank=1,step={ALL_DIE_AT}", steps=RESUMED_STEPS)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    restarts = [(r["replica_group"], r["resumed_from_step"]) for r in records if r.get("event") == "restart"]
    assert sorted(restarts) == [(0, CKPT_EVERY), (1, CKPT_EVERY)]  # from disk: no peer was live
    assert not [r for r in records if r.get("event") == "resume"]
    replayed = [r["step"] for r in records if "event" not in r]
    assert replayed == [*range(1, ALL_DIE_AT), *range(CKPT_EVERY + 1, RESUMED_STEPS + 1)]
    _same_run(run_dir, uninterrupted)


def _skipped_as(run_dir: Path, skipped: Path, bad: list[int], steps: int) -> dict:
    """`run_dir`'s run rejected its step NAN_AT (samples `bad`) once, retried and replayed nothing, and trained
    as `skipped`'s (`--skip-batch NAN_AT`) did, bit for bit, every group on every step; its summary."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [r["step"] for r in records if "event" not in r] == list(range(1, steps + 1))  # nothing replayed
    [rollback] = [r for r in records if r.get("event") == "rollback"]  # one verdict, logged once for the run
    assert (rollback["step"], rollback["skipped_sample_ids"], rollback["resumed_from_step"]) == (NAN_AT, bad,
                                                                                                 NAN_AT - 1)
    mine, reference = _steps(run_dir), _steps(skipped)
    for step in mine:
        assert mine[step]["loss"] == reference[step]["loss"], step
        assert mine[step]["sample_ids"] == reference[step]["sample_ids"]
        assert mine[step]["replica_groups"] == [0, 1]
    summary = json.loads((run_dir / "summary.json").read_text())
    groups = [json.loads((run_dir / "replica_groups" / f"group-{g}.json").read_text()) for g in (0, 1)]
    assert [g["steps"] for g in groups] == [steps, steps]
    assert groups[0]["params_sha256"] == groups[1]["params_sha256"] == summary["params_sha256"]
    assert summary["params_sha256"] == json.loads((skipped / "summary.json").read_text())["params_sha256"]
    return summary


def test_a_nan_step_is_rejected_and_skipped_by_every_group_alike(tmp_path, token_data, uninterrupted) -> None:
    batch = PLAN["global_batch"]
    bad = [(NAN_AT - 1) * batch, NAN_AT * batch]  # the run's step NAN_AT: both groups' shares
    # the reference: the batch of the run's step NAN_AT skipped (--skip-batch counts the run's steps)
    skipped = train(tmp_path, token_data, "skipped", "--fault-tolerance", "torchft", "--checkpoint-every", "never",
                    "--skip-batch", str(NAN_AT), steps=RESUMED_STEPS)
    records = [json.loads(line) for line in (skipped / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [r["sample_ids"] for r in records if r.get("event") == "skip_batch"] == [bad]  # once for the run
    reference, whole = _steps(skipped), _steps(uninterrupted)
    assert [reference[s]["loss"] for s in range(1, NAN_AT)] == [whole[s]["loss"] for s in range(1, NAN_AT)]
    assert reference[NAN_AT]["sample_ids"] == [bad[1], bad[1] + batch]

    run_dir = train(tmp_path, token_data, "nan", "--fault-tolerance", "torchft", "--checkpoint-every", "3",
                    "--inject", f"nan:step={NAN_AT}", steps=RESUMED_STEPS)
    summary = _skipped_as(run_dir, skipped, bad, RESUMED_STEPS)
    assert summary["rollbacks"] == 1 and summary["skipped_batch_starts"] == [bad[0]]
    assert summary["replica_groups"]["samples_trained"] == RESUMED_STEPS * batch  # the skipped batch is no step's


def test_a_nan_step_is_skipped_alike_by_every_rank_of_groups_of_several_ranks(tmp_path, token_data) -> None:
    batch = SHARDED_PLAN["global_batch"]
    bad = [(NAN_AT - 1) * batch, NAN_AT * batch]
    ft = ("--fault-tolerance", "torchft", "--replica-groups", "2")
    skipped = train(tmp_path, token_data, "skipped", *ft, "--checkpoint-every", "never", "--skip-batch",
                    str(NAN_AT), steps=SHARDED_STEPS, plan=SHARDED_PLAN)
    # group 1's second rank (the run's rank 3) alone: its shards of the gradients are NaN, group 0's rank 1 gets
    # them from the managed all-reduce, every rank's clipping norm from its group's
    run_dir = train(tmp_path, token_data, "nan", *ft, "--checkpoint-every", "3", "--inject",
                    f"nan:rank=3,step={NAN_AT}", steps=SHARDED_STEPS, plan=SHARDED_PLAN)
    # every rank holds its shard of the same parameters as the reference's (the hash is of the gathered model)
    summary = _skipped_as(run_dir, skipped, bad, SHARDED_STEPS)
    assert summary["skipped_batch_starts"] == [bad[0]] and summary["plan"]["dp"] == SHARDED_PLAN["dp"]
    said = (tmp_path / "nan.out").read_text()  # skipped, not rolled back: the console says which
    assert f"step {NAN_AT} rejected (gradient norm is nan); its update was not applied in any replica group, " \
           f"continuing from step {NAN_AT - 1} and skipping samples {bad[0]}..{bad[1] - 1}" in said
    assert "1 bad step(s) skipped" in said and "rolled back" not in said and "rollback(s)" not in said
