"""Elastic scheduled jobs, torch-free: the plan a worker takes for the world it was started in, the node counts a
launch allows, the plan changes rank 0 records, and which nodes a Slurm job's next job step uses (down and
straggling nodes excluded, each once, as `node_excluded` events)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bastion.errors import ConfigError, LaunchError
from bastion.launch.elastic import (
    ELASTIC_KEY,
    config_for_world,
    elastic_section,
    node_counts,
    plan_for_world,
    prepare_worker,
)
from bastion.launch.slurm_nodes import next_nodes, unusable
from bastion.launch.worker import run_config
from bastion.rundir.metrics import log_event
from bastion.specs import ParallelPlan
from bastion.specs.model import load_model

SPEC = load_model("tiny")
PLAN = ParallelPlan(dp=4, zero_stage=3, micro_batch=1, global_batch=8, precision="fp32")


def config(run_dir: Path, plan: ParallelPlan = PLAN, elastic: dict | None = None) -> dict:
    made = run_config({"run_dir": str(run_dir), "steps": 10}, SPEC, plan, plan.num_gpus)
    return {**made, ELASTIC_KEY: elastic} if elastic else made


def events(run_dir: Path, kind: str) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [r for r in map(json.loads, lines) if r.get("event") == kind]


def test_a_world_gets_the_plan_with_fewer_replicas_that_uses_it_exactly() -> None:
    assert plan_for_world(SPEC, PLAN, 4) == PLAN
    assert plan_for_world(SPEC, PLAN, 2).dp == 2 and plan_for_world(SPEC, PLAN, 2).global_batch == 8
    assert plan_for_world(SPEC, PLAN, 3) is None     # dp 3 does not divide the global batch of 8
    assert plan_for_world(SPEC, PLAN, 8) is None     # never larger than the plan launched
    tp2 = ParallelPlan(dp=4, tp=2, global_batch=8)
    assert plan_for_world(SPEC, tp2, 4) == ParallelPlan(dp=2, tp=2, global_batch=8)
    assert plan_for_world(SPEC, tp2, 3) is None
    assert node_counts(SPEC, PLAN, procs_per_node=2, max_nodes=2) == [1, 2]
    assert node_counts(SPEC, ParallelPlan(dp=8, global_batch=8), procs_per_node=2, max_nodes=4) == [1, 2, 4]


def test_the_elastic_section_allows_only_counts_the_scheduler_may_settle_on() -> None:
    eight = ParallelPlan(dp=8, global_batch=8)
    # default: the longest run of workable counts ending at --nodes (3 nodes = 6 ranks has no plan)
    assert elastic_section(SPEC, eight, 2, 4, None) == {"min_nodes": 4, "max_nodes": 4, "procs_per_node": 2}
    assert elastic_section(SPEC, PLAN, 2, 2, None)["min_nodes"] == 1
    assert elastic_section(SPEC, eight, 1, 8, 8)["min_nodes"] == 8
    with pytest.raises(LaunchError) as err:
        elastic_section(SPEC, eight, 2, 4, 2)
    assert "On 3 node(s) × 2 worker(s)" in err.value.problem and "these do: 1, 2, 4" in err.value.fix
    with pytest.raises(LaunchError):
        elastic_section(SPEC, PLAN, 2, 2, 3)


def test_a_worker_of_an_elastic_job_takes_the_plan_for_its_world(tmp_path: Path) -> None:
    plain = config(tmp_path)
    assert config_for_world(plain, 2) is plain   # not elastic: the worker's own check refuses the mismatch
    elastic = config(tmp_path, elastic={"min_nodes": 1, "max_nodes": 2, "procs_per_node": 2})
    shrunk = config_for_world(elastic, 2)
    assert shrunk["world_size"] == 2 and ParallelPlan.from_dict(shrunk["plan"]).dp == 2
    assert shrunk["train"] == elastic["train"] and elastic["world_size"] == 4   # the file's copy is untouched
    with pytest.raises(ConfigError) as err:
        config_for_world(elastic, 3)
    assert "started on 3 workers" in err.value.problem


def test_rank_0_records_each_change_of_world_once(tmp_path: Path, monkeypatch) -> None:
    elastic = config(tmp_path, elastic={"min_nodes": 1, "max_nodes": 2, "procs_per_node": 2})
    log_event(tmp_path, "run_start", world_size=4, plan=PLAN.to_dict())
    monkeypatch.setenv("SLURMD_NODENAME", "n1")
    prepare_worker(elastic, 2, 1)                # rank 1: records its node, not the change
    assert not events(tmp_path, "plan_change")
    assert (tmp_path / "nodes" / "rank-00001").read_text() == "n1\n"
    prepare_worker(elastic, 2, 0)
    (shrink,) = events(tmp_path, "plan_change")
    assert (shrink["from_world"], shrink["to_world"], shrink["reason"], shrink["step"]) == (4, 2, "fewer nodes", 0)
    assert shrink["plan"]["dp"] == 2 and shrink["from_plan"] == PLAN.to_dict()
    log_event(tmp_path, "resume", attempt=0, resumed_from_step=4, world_size=2, plan=shrink["plan"])
    prepare_worker(elastic, 2, 0)                # the same world again: nothing new
    assert len(events(tmp_path, "plan_change")) == 1
    prepare_worker(elastic, 4, 0)                # a requeue on the full allocation grows back
    grow = events(tmp_path, "plan_change")[-1]
    assert (grow["from_world"], grow["to_world"], grow["reason"]) == (2, 4, "nodes back")


NODES = ["n1", "n2"]
UP = {"n1": "allocated", "n2": "allocated"}


def test_a_down_node_is_excluded_and_an_elastic_job_continues_on_the_rest(tmp_path: Path) -> None:
    elastic = config(tmp_path, elastic={"min_nodes": 1, "max_nodes": 2, "procs_per_node": 2})
    assert next_nodes(tmp_path, elastic, "7", 0, NODES, UP, since=0) == (["n1", "n2"], [])
    down = {"n1": "allocated", "n2": "down*"}
    assert next_nodes(tmp_path, elastic, "7", 0, NODES, down, since=0) == (["n1"], ["n2"])
    # resumed in Slurm's eyes: still excluded by this job, and recorded once
    assert next_nodes(tmp_path, elastic, "7", 0, NODES, UP, since=0) == (["n1"], ["n2"])
    (excluded,) = events(tmp_path, "node_excluded")
    assert (excluded["node"], excluded["reason"], excluded["job_id"]) == ("n2", "down", "7")
    # another job, or a requeued start of this one (a node Slurm allocates again is in service), starts afresh
    assert next_nodes(tmp_path, elastic, "8", 0, NODES, UP, since=0) == (["n1", "n2"], [])
    assert next_nodes(tmp_path, elastic, "7", 1, NODES, UP, since=0) == (["n1", "n2"], [])


def test_a_job_that_is_not_elastic_needs_every_node(tmp_path: Path) -> None:
    assert next_nodes(tmp_path, config(tmp_path), "7", 0, NODES, UP, since=0) == (["n1", "n2"], [])
    assert next_nodes(tmp_path, config(tmp_path), "7", 0, NODES, {"n1": "idle+drain", "n2": "mixed"},
                      since=0) == ([], ["n1"])


def test_a_stragglers_node_is_excluded_from_the_next_job_step(tmp_path: Path) -> None:
    elastic = config(tmp_path, elastic={"min_nodes": 1, "max_nodes": 2, "procs_per_node": 2})
    for rank, node in enumerate(["n2", "n2", "n1", "n1"]):   # the rendezvous may order nodes either way
        (tmp_path / "nodes").mkdir(parents=True, exist_ok=True)
        (tmp_path / "nodes" / f"rank-{rank:05d}").write_text(node + "\n")
    old = log_event(tmp_path, "straggler", rank=0, step=3, factor=2.0, compute_s=1, baseline_s=0.5,
                    baseline="peers", window=5)
    assert next_nodes(tmp_path, elastic, "7", 0, NODES, UP, since=old["time"] + 1) == (["n1", "n2"], [])
    log_event(tmp_path, "straggler", rank=3, step=9, factor=3.1, compute_s=3, baseline_s=1, baseline="peers",
              window=5)
    assert next_nodes(tmp_path, elastic, "7", 0, NODES, UP, since=old["time"] + 1e-6) == (["n2"], ["n1"])
    (excluded,) = events(tmp_path, "node_excluded")
    assert (excluded["node"], excluded["reason"], excluded["rank"]) == ("n1", "straggler", 3)


def test_node_states_that_rule_a_node_out() -> None:
    states = {"a": "allocated", "b": "down*", "c": "drained", "d": "mixed", "e": "allocated+drain", "f": "idle",
              "g": "fail", "h": "down (not listed by sinfo)"}
    assert unusable(states) == ["b", "c", "e", "g", "h"]


def test_a_node_whose_device_failed_the_health_check_is_excluded(tmp_path: Path) -> None:
    elastic = config(tmp_path, elastic={"min_nodes": 1, "max_nodes": 2, "procs_per_node": 2})
    for rank, node in enumerate(["n1", "n1", "n2", "n2"]):
        (tmp_path / "nodes").mkdir(parents=True, exist_ok=True)
        (tmp_path / "nodes" / f"rank-{rank:05d}").write_text(node + "\n")
    healthy = log_event(tmp_path, "health_check", ok=True, problems=[], failing_ranks=[])
    assert next_nodes(tmp_path, elastic, "7", 0, NODES, UP, since=healthy["time"]) == (["n1", "n2"], [])
    log_event(tmp_path, "health_check", ok=False, problems=["rank 2: 1 uncorrected ECC error(s)"],
              failing_ranks=[2])
    assert next_nodes(tmp_path, elastic, "7", 0, NODES, UP, since=healthy["time"]) == (["n1"], ["n2"])
    (excluded,) = events(tmp_path, "node_excluded")
    assert (excluded["node"], excluded["reason"], excluded["rank"]) == ("n2", "unhealthy", 2)
