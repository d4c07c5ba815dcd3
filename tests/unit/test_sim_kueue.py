"""The `kueue` policy: nominal quota, borrowing within a cohort up to the borrowing and lending limits, reclaim
by preempting borrowers; hand-made traces, the example inventory, and the quota invariant on a random trace."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bastion.sim import SimConfig, simulate
from bastion.sim.inputs import DEFAULT_QUEUE, Inventory, Tenant, load_inventory, make_pool
from bastion.sim.perf import resolve
from helpers.sim_jobs import capacity_kept, hourly_checkpoints, recorded, trained

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "sim"


def cohort(a: dict | None = None, b: dict | None = None) -> Inventory:
    """Two 8-GPU nodes; queues A and B with 8 GPUs of quota each, in cohort c unless told otherwise."""
    return Inventory("t", (make_pool("h100", "h100-sxm", 2),),
                     (Tenant("A", 8, **({"borrow": True, "cohort": "c"} | (a or {}))),
                      Tenant("B", 8, **({"borrow": True, "cohort": "c"} | (b or {})))))


def spans(inv: Inventory, jobs) -> dict[str, tuple]:
    result = simulate(resolve(jobs, inv, hourly_checkpoints), inv, SimConfig(policy="kueue"))
    return {j.id: (j.runs and [r[1:3] for r in j.runs]) or (j.start_h, j.end_h) for j in result.jobs}


A_TWICE = [trained("A1", "A", 10.0, 8, 0.0), trained("A2", "A", 10.0, 8, 0.5)]


def test_a_queue_borrows_its_cohorts_idle_quota_and_the_lender_reclaims_it() -> None:
    # A2 borrows B's idle 8 GPUs; B1 (within B's quota) arrives at 3 and reclaims them from the borrower that
    # loses least: A1 is at a checkpoint (3 h done), A2 0.5 h past one. A1 resumes at 5 with 7 h left, borrowing
    # again once B1 is done
    assert spans(cohort(), [*A_TWICE, trained("B1", "B", 2.0, 8, 3.0)]) == {
        "A1": [(0.0, 3.0), (5.0, 12.0)], "A2": (0.5, 10.5), "B1": (3.0, 5.0)}


@pytest.mark.parametrize("a, b", [({"borrowing_limit_gpus": 0}, None), (None, {"lending_limit_gpus": 0}),
                                  ({"cohort": None}, None), ({"borrow": False}, None)],
                         ids=["no-borrowing", "no-lending", "no-cohort", "borrow-false"])
def test_without_borrowing_a_queue_waits_for_its_own_quota_on_an_idle_cluster(a, b) -> None:
    assert spans(cohort(a, b), A_TWICE) == {"A1": (0.0, 10.0), "A2": (10.0, 20.0)}


def test_borrowing_stops_at_the_borrowing_limit() -> None:
    inv = Inventory("t", (make_pool("h100", "h100-sxm", 3),),
                    (Tenant("A", 8, True, cohort="c", borrowing_limit_gpus=8), Tenant("B", 16, True, cohort="c")))
    jobs = [trained(f"A{i}", "A", 4.0, 8, 0.0) for i in range(3)]
    assert spans(inv, jobs) == {"A0": (0.0, 4.0), "A1": (0.0, 4.0), "A2": (4.0, 8.0)}


def test_a_queue_without_quota_or_cohort_runs_nothing_and_says_why() -> None:
    inv = cohort().with_default_queue()
    result = simulate(resolve([recorded("d", DEFAULT_QUEUE, 1.0, 1, 0.0)], inv, hourly_checkpoints), inv,
                      SimConfig(policy="kueue"))
    assert not result.jobs and "can hold at most 0 GPUs" in result.unschedulable[0]["reasons"]["h100"]


def test_the_example_inventory_reads_cohorts_limits_priorities_and_node_failures() -> None:
    inv = load_inventory(EXAMPLES / "cohort-cluster.toml")
    queues = {t.name: t for t in inv.tenants}
    assert (queues["pretrain"].cohort, queues["pretrain"].lending_limit_gpus, queues["pretrain"].priority) == (
        "ml", 64, 5)
    assert (queues["research"].borrowing_limit_gpus, queues["product"].cohort) == (32, None)
    assert inv.launch_hours == pytest.approx(60 / 3600) and inv.node_failures.repair_hours == 24
    assert inv.node_failures.mtbf_hours(inv.pools[0]) > 1000  # the published rate, per 8-GPU node


@pytest.mark.parametrize("seed", range(3))
def test_queues_never_hold_more_than_quota_plus_what_they_may_borrow(seed) -> None:
    inv = Inventory("t", (make_pool("h100", "h100-sxm", 4),),
                    (Tenant("A", 8, True, cohort="c", borrowing_limit_gpus=8),
                     Tenant("B", 16, True, cohort="c", lending_limit_gpus=8), Tenant("C", 8, True)))
    rng = random.Random(seed)
    jobs = [trained(f"j{i}", rng.choice("ABC"), rng.uniform(0.5, 6.0), rng.choice([1, 2, 4, 8]),
                    rng.uniform(0.0, 20.0)) for i in range(60)]
    result = simulate(resolve(jobs, inv, hourly_checkpoints), inv, SimConfig(policy="kueue", seed=seed))
    assert len(result.jobs) == 60
    capacity_kept(result, inv)
    ceiling = {"A": 16, "B": 24, "C": 8}  # A: 8 + 8 borrowed; B: 16 + all A may lend... A lends all 8; C: none
    runs = [(r.tenant, start, end, held) for r in result.jobs for _, start, end, held, _ in r.held_runs()]
    for t in {start for _, start, _, _ in runs}:
        for queue, most in ceiling.items():
            assert sum(h for q, s, e, h in runs if q == queue and s <= t < e) <= most + 1e-9


@pytest.mark.parametrize("extra, message", [
    ({"tenant": [{"name": "a", "quota_gpus": 8, "cohort": 3}]}, "'cohort' in"),
    ({"tenant": [{"name": "a", "quota_gpus": 8, "borrowing_limit_gpus": -1}]}, "must be >= 0"),
    ({"tenant": [{"name": "a", "quota_gpus": 8, "priority": 1.5}]}, "must be a whole number"),
    ({"tenant": [{"name": "a", "quota_gpus": 8, "lending_limt_gpus": 1}]}, "Did you mean 'lending_limit_gpus'"),
    ({"node_failures": {"node_mtbf_hours": 100}}, "missing 'repair_hours'"),
    ({"node_failures": {"repair_hours": 0}}, "must be > 0"),
    ({"node_failures": 5}, "must be a table"),
    ({"launch_latency_s": -5}, "must be >= 0"),
    ({"launch_latency_s": 1e30}, "must be <= 604800"),   # ran without end, drawing node failures
])
def test_bad_queue_and_failure_fields_are_guidance_errors(extra, message) -> None:
    from bastion.errors import ConfigError
    from bastion.sim.inputs import inventory_from_mapping

    data = {"pool": [{"name": "h100", "accelerator": "h100-sxm", "nodes": 2}], **extra}
    with pytest.raises(ConfigError, match=message):
        inventory_from_mapping(data, "inv.toml")
