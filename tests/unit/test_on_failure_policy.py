"""`--on-failure`: the candidates a launch can run, `auto` chosen by the reliability model's predicted goodput, and
hot spares (launch/policy.py, launch/slurm_nodes.py); the CLI paths are in tests/unit/test_launch.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bastion.errors import ConfigError
from bastion.launch.policy import (
    candidate_policies,
    check_spares,
    choose_policy,
    on_failure_record,
    run_policy_inputs,
)
from bastion.launch.slurm_nodes import SPARES_KEY, next_nodes
from bastion.launch.worker import run_config
from bastion.reliability.policies import PolicyInputs
from bastion.specs import ParallelPlan
from bastion.specs.model import load_model

SPEC = load_model("tiny")
DP4 = ParallelPlan(dp=4, zero_stage=3, micro_batch=1, global_batch=8, precision="fp32")
HOUR = 3600.0


def test_the_candidates_are_what_the_launch_can_run() -> None:
    assert candidate_policies(DP4, spare_nodes=0, torchft=False) == ("requeue", "shrink")
    assert candidate_policies(ParallelPlan(dp=1, tp=4, global_batch=8), 0, torchft=False) == ("requeue",)
    assert candidate_policies(DP4, spare_nodes=2, torchft=False) == ("requeue", "shrink", "spares")
    # shrink continues from the newest checkpoint: none without checkpoints
    assert candidate_policies(DP4, spare_nodes=0, torchft=False, checkpoints=False) == ("requeue",)
    # torchft's replica groups recover on their own: no shrink beside them
    assert candidate_policies(DP4, spare_nodes=0, torchft=True) == ("requeue", "replica-drop")


def test_auto_shrinks_a_large_job_whose_requeue_waits_long() -> None:
    # 64 nodes: a lost node costs the survivors 1/64 of the throughput while it is repaired; a requeue waits 2 h
    inputs = PolicyInputs(mtbf_s=3 * HOUR, nodes=64, step_s=2.0, checkpoint_stall_s=10.0,
                          requeue_wait_s=2 * HOUR, spares=0, replicas=64)
    choice = choose_policy(inputs, ("requeue", "shrink"))
    assert choice.policy == "shrink"
    shown = {c.policy: c.goodput for c in choice.candidates}
    assert shown["shrink"] > shown["requeue"] > 0
    assert choice.line().startswith("on-failure auto: shrink (predicted goodput requeue ")
    assert choice.line().endswith("; job MTBF 3.0 h)")
    assert on_failure_record("auto", "shrink", choice)["predicted_goodput"] == shown


def test_auto_requeues_a_small_job_whose_replacement_comes_at_once() -> None:
    # two nodes, no wait for a replacement: running on half the nodes until a 4 h repair costs more than a restart
    inputs = PolicyInputs(mtbf_s=3 * HOUR, nodes=2, step_s=2.0, checkpoint_stall_s=10.0, requeue_wait_s=0.0,
                          spares=0, replicas=2)
    assert choose_policy(inputs, ("requeue", "shrink")).policy == "requeue"


def test_auto_takes_spares_only_where_they_are_allocated() -> None:
    inputs = PolicyInputs(mtbf_s=3 * HOUR, nodes=64, step_s=2.0, checkpoint_stall_s=10.0, requeue_wait_s=HOUR,
                          repair_s=600.0, spares=1, replicas=64)
    assert choose_policy(inputs, ("requeue", "shrink", "spares")).policy == "spares"
    without = choose_policy(inputs, ("requeue", "shrink"))
    assert without.policy == "shrink" and "spares" not in {c.policy for c in without.candidates}


def test_the_runs_own_prediction_feeds_the_model() -> None:
    inputs = run_policy_inputs(SPEC, DP4, None, mtbf_hours=5.0, checkpoint_every=4, spare_nodes=1)
    assert inputs.mtbf_s == 5 * HOUR and inputs.spares == 1 and inputs.replicas == 4
    assert inputs.step_s > 0 and inputs.checkpoint_interval_s == pytest.approx(4 * inputs.step_s)
    # `--checkpoint-every auto` (-1): Young/Daly's interval, as the workers will choose it
    assert run_policy_inputs(SPEC, DP4, None, None, -1, 0).checkpoint_interval_s is None


@pytest.mark.parametrize(("on_failure", "engine", "spares", "needle"), [
    ("spares", "k8s", 0, "Kubernetes job does not have"),
    ("spares", "slurm", 0, "add --spare-nodes K"),
    ("requeue", "local", 1, "--spare-nodes allocates hot spare nodes for a Slurm job"),
    ("auto", "k8s", 2, "--spare-nodes allocates hot spare nodes for a Slurm job"),
])
def test_spares_where_they_cannot_run_are_refused(on_failure, engine, spares, needle) -> None:
    with pytest.raises(ConfigError, match=needle):
        check_spares(on_failure, engine, spares)


def test_spares_run_locally_and_on_slurm_with_spare_nodes() -> None:
    check_spares("spares", "local", 0)   # a local restart gets a replacement at once (requeue)
    check_spares("spares", "slurm", 1)


def _spares_config(run_dir: Path) -> dict:
    made = run_config({"run_dir": str(run_dir), "steps": 10}, SPEC, DP4, DP4.num_gpus)
    return {**made, SPARES_KEY: {"plan_nodes": 2, "spare_nodes": 1}}


def test_a_lost_node_is_swapped_for_a_spare_at_the_next_step(tmp_path: Path) -> None:
    config, nodes = _spares_config(tmp_path), ["n1", "n2", "n3"]
    up = dict.fromkeys(nodes, "allocated")
    # N + K allocated: each step runs on the plan's N, the spare idle
    assert next_nodes(tmp_path, config, "7", 0, nodes, up, since=0) == (["n1", "n2"], [])
    # n2 goes down: the next step runs on N nodes again, the spare in its place, no re-plan and no requeue
    down = {**up, "n2": "down*"}
    assert next_nodes(tmp_path, config, "7", 0, nodes, down, since=0) == (["n1", "n3"], ["n2"])
    assert next_nodes(tmp_path, config, "7", 0, nodes, up, since=0) == (["n1", "n3"], ["n2"])
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [r["node"] for r in map(json.loads, lines) if r.get("event") == "node_excluded"] == ["n2"]
    # a second loss with no spare left: too few nodes, so the script requeues
    assert next_nodes(tmp_path, config, "7", 0, nodes, {**down, "n1": "down"}, since=0) == ([], ["n2", "n1"])


def test_the_report_says_which_policy_ran_and_why(tmp_path: Path) -> None:
    from bastion.report.panel import run_panel
    from bastion.report.run_files import RunFiles

    choice = choose_policy(PolicyInputs(mtbf_s=3 * HOUR, nodes=64, step_s=2.0, checkpoint_stall_s=10.0,
                                        requeue_wait_s=2 * HOUR, replicas=64), ("requeue", "shrink"))
    report = {"failures": {"recomputed": {"count": 0}}, "steps_completed": 0, "world_size": 4}

    def row(section: dict | None) -> str:
        files = RunFiles(tmp_path, [], 0, None, None, None,
                         run_config={"on_failure": section} if section is not None else None)
        return dict(run_panel(files, report)["rows"])["on failure"]

    assert row(on_failure_record("auto", "shrink", choice)) == f"shrink (asked: auto) — {choice.line()}"
    assert row(on_failure_record("spares", "requeue", None)) == "requeue (asked: spares)"
    assert row(on_failure_record("shrink", "shrink", None)) == "shrink"
    assert row(None) == "—"   # a run from before the record
