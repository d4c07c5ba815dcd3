"""The re-plan for fewer ranks and the --on-failure choices (launch/shrink.py); the relaunch itself runs in
tests/dist/test_shrink.py (this file: the re-plan alone)."""

from __future__ import annotations

import json
import re
import time

import pytest

from bastion.errors import ConfigError
from bastion.launch.shrink import (
    back_at_step,
    grow_boundary,
    lost_nodes,
    shrink_plan,
    with_stop_after,
)
from bastion.rundir.metrics import log_event
from bastion.runtime.faults import parse_fault
from bastion.specs.model import load_model
from bastion.specs.plan import ParallelPlan

TINY = load_model("tiny")


def plan(**fields) -> ParallelPlan:
    base = {"dp": 4, "tp": 1, "pp": 1, "zero_stage": 3, "micro_batch": 1, "global_batch": 8, "precision": "fp32"}
    return ParallelPlan(**{**base, **fields})


def test_shrink_keeps_every_degree_but_dp_and_the_global_batch() -> None:
    # 3 ranks left of dp4: dp3 does not divide 8 samples into whole micro-batches, dp2 does
    smaller = shrink_plan(plan(), TINY, 3)
    assert (smaller.dp, smaller.tp, smaller.pp, smaller.global_batch, smaller.micro_batch) == (2, 1, 1, 8, 1)
    assert smaller.grad_accumulation == 4
    # tp2 × dp2 losing one rank: only dp1 × tp2 fits the 3 left
    assert shrink_plan(plan(dp=2, tp=2), TINY, 3).num_gpus == 2
    assert shrink_plan(plan(dp=6, global_batch=12), TINY, 5).dp == 4


def test_nothing_to_shrink_to_is_none() -> None:
    assert shrink_plan(plan(dp=1, tp=2), TINY, 1) is None   # no replica to drop
    assert shrink_plan(plan(dp=2, tp=2), TINY, 1) is None   # one tp2 replica needs 2 ranks
    assert shrink_plan(plan(dp=2, micro_batch=4), TINY, 1).dp == 1


def test_growing_back_waits_for_the_checkpoint_boundary_and_honours_an_earlier_stop() -> None:
    assert [grow_boundary(7, 2), grow_boundary(8, 2), grow_boundary(7, 0), grow_boundary(7, -1)] == [8, 8, 7, 7]
    config = {"train": {"resilience": {"stop_after_step": 0}}}
    assert with_stop_after(config, 8)["train"]["resilience"]["stop_after_step"] == 8
    assert config["train"]["resilience"]["stop_after_step"] == 0  # not changed in place
    earlier = {"train": {"resilience": {**config["train"]["resilience"], "stop_after_step": 6}}}
    assert with_stop_after(earlier, 8)["train"]["resilience"]["stop_after_step"] == 6
    # every lost node must come back for the world to grow
    assert back_at_step({3: 7}) == 7 and back_at_step({3: 7, 1: 9}) == 9 and back_at_step({3: 7, 2: None}) is None


def test_lose_node_specs() -> None:
    assert parse_fault("lose-node:rank=3,step=5,back_at=9").back_at == 9
    assert parse_fault("lose-node:rank=3,step=5").back_at is None
    with pytest.raises(ConfigError, match="back_at must come after"):
        parse_fault("lose-node:rank=3,step=5,back_at=5")
    with pytest.raises(ConfigError, match="needs a step"):
        parse_fault("lose-node:rank=3")


def test_lost_nodes_are_the_lose_node_faults_of_this_launch(tmp_path) -> None:
    log_event(tmp_path, "fault", fault="lose-node", spec="lose-node:rank=1,step=2", rank=1, step=2, back_at=None)
    since = time.time() + 1e-3
    time.sleep(0.01)
    log_event(tmp_path, "fault", fault="kill", spec="kill:rank=0,step=3", rank=0, step=3)
    log_event(tmp_path, "fault", fault="lose-node", spec="lose-node:rank=3,step=4,back_at=6", rank=3, step=4,
              back_at=6)
    assert lost_nodes(tmp_path, since) == {3: 6}


@pytest.mark.parametrize(("args", "message"), [
    (["--on-failure", "shrnk"], "Did you mean 'shrink'"),
    (["--on-failure", "shrink"], "needs checkpoints|--checkpoint-every is 0"),
])
def test_on_failure_mistakes_are_guidance(args, message, tmp_path, token_dir, capsys) -> None:
    from bastion.cli import main

    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan().to_dict()))
    with pytest.raises(SystemExit) as exc:
        main(["train", "--model", "tiny", "--plan", str(plan_file), "--data", str(token_dir), "--steps", "3",
              "--run-dir", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert re.search(message, err), err


@pytest.fixture
def token_dir(tmp_path):
    from bastion.runtime.data import prepare_dataset

    source = tmp_path / "text.txt"
    source.write_text("hello world " * 2000)
    out = tmp_path / "tokens"
    prepare_dataset([source], out)
    return out


def test_a_crash_relaunched_under_shrink_counts_as_a_restart(tmp_path) -> None:
    """--on-failure shrink relaunches a crashed launch (no node lost) with a fresh torchrun, whose workers log
    `resume`: the launcher's `restart` event is what makes the accounting count it."""
    from bastion.launch.shrink import run_shrinking
    from bastion.rundir.accounting import account
    from bastion.rundir.metrics import read_metrics

    codes = iter([1, 1, 0])
    launched = []

    def launch(config, world):
        launched.append(world)
        log_event(tmp_path, "resume" if launched[1:] else "run_start", attempt=0, world_size=world, plan={})
        return next(codes)

    config = {"train": {"steps": 4, "resilience": {"checkpoint_every": 2}}}
    assert run_shrinking(tmp_path, TINY, plan(), config, 2, launch, lambda p: config) == 0
    assert launched == [4, 4, 4]
    records = read_metrics(tmp_path).records
    assert [r["attempt"] for r in records if r.get("event") == "restart"] == [1, 2]
    assert account(records, time.time())["restarts"] == 2
