"""Interrupted runs: preemption by queue priority (victim by least predicted lost work), node failures that
take capacity out for a repair, launch latency; on hand-made traces whose outcome is computed by hand, and the
capacity invariant over every run of every job."""

from __future__ import annotations

import random

import pytest

from bastion.sim import SimConfig, simulate
from bastion.sim.inputs import Inventory, Job, NodeFailures, Tenant, make_pool
from bastion.sim.perf import resolve
from helpers.sim_jobs import RATE, capacity_kept, hourly_checkpoints, recorded, trained


def two_queues(nodes: int = 1, **inventory) -> Inventory:
    return Inventory("t", (make_pool("h100", "h100-sxm", nodes),),
                     (Tenant("low", 4, True, priority=0), Tenant("high", 4, True, priority=10)), **inventory)


def run(inv: Inventory, jobs: list[Job], policy: str = "priority", seed: int = 0):
    return simulate(resolve(jobs, inv, hourly_checkpoints), inv, SimConfig(policy=policy, seed=seed))


# ---- preemption -----------------------------------------------------------------------------------------

def test_a_higher_queue_preempts_a_lower_one_which_loses_its_uncheckpointed_run() -> None:
    inv = two_queues()
    jobs = [recorded("L", "low", 10.0, 8, 0.0), recorded("H", "high", 2.0, 8, 3.0)]
    result = run(inv, jobs)
    by_id = {j.id: j for j in result.jobs}
    # a recorded job has no checkpoints: L loses its 3 h × 8 GPUs, waits for H (3..5), then runs 10 h again
    assert (by_id["H"].start_h, by_id["H"].end_h) == (3.0, 5.0)
    low = by_id["L"]
    assert (low.start_h, low.end_h, low.run_h, low.interruptions) == (0.0, 15.0, 13.0, 1)
    assert low.wait_h == 2.0  # requeued from 3 to 5
    assert low.interrupted_lost_gpu_hours == pytest.approx(24.0)
    assert [r[1:3] for r in low.runs] == [(0.0, 3.0), (5.0, 15.0)]
    assert result.cluster.interrupted_lost_gpu_hours == pytest.approx(24.0)
    assert result.events["preemption"] == 1 and result.events["start"] == 3
    # the same trace without preemption: H waits for L
    backfill = {j.id: (j.start_h, j.end_h) for j in run(inv, jobs, "backfill").jobs}
    assert backfill == {"L": (0.0, 10.0), "H": (10.0, 12.0)}


def test_the_victim_is_the_job_that_loses_least_since_its_last_checkpoint() -> None:
    inv = two_queues()
    # A (started 0) is 0.25 h past its checkpoint at 2.25; B (started 0.5) is 0.75 h past its own
    jobs = [trained("A", "low", 5.0, 4, 0.0), trained("B", "low", 5.0, 4, 0.5), trained("H", "high", 1.0, 4, 2.25)]
    by_id = {j.id: j for j in run(inv, jobs).jobs}
    assert by_id["B"].interruptions == 0 and (by_id["B"].start_h, by_id["B"].end_h) == (0.5, 5.5)
    a = by_id["A"]
    # A keeps 2 h of its 5 h; restarts when H ends at 3.25 and runs the 3 h left
    assert a.interruptions == 1 and a.interrupted_lost_gpu_hours == pytest.approx(0.25 * 4)
    assert a.end_h == pytest.approx(6.25) and a.compute_h == pytest.approx(5.0)
    assert (by_id["H"].start_h, by_id["H"].end_h) == (2.25, 3.25)


def test_equal_or_lower_queues_never_preempt() -> None:
    inv = two_queues()
    jobs = [recorded("H1", "high", 4.0, 8, 0.0), recorded("L", "low", 1.0, 8, 1.0), recorded("H2", "high", 1.0, 8, 2.0)]
    result = run(inv, jobs)
    assert "preemption" not in result.events
    assert {j.id: j.start_h for j in result.jobs} == {"H1": 0.0, "H2": 4.0, "L": 5.0}  # high first, then low


# ---- node failures --------------------------------------------------------------------------------------

class Scripted(random.Random):
    """A stand-in for a pool's node-failure stream: failures after the scripted gaps, always on node 0."""

    gaps: list[float] = []

    def __init__(self) -> None:
        super().__init__(0)
        self.left = list(self.gaps)

    def expovariate(self, _rate: float) -> float:
        return self.left.pop(0) if self.left else 1e9

    def randrange(self, *_args: object) -> int:
        return 0


def test_a_node_failure_requeues_its_jobs_from_their_checkpoint_and_removes_the_node_until_repaired(
        monkeypatch) -> None:
    import bastion.sim.engine as engine

    monkeypatch.setattr(engine, "node_failure_stream", lambda *_: Scripted())
    Scripted.gaps = [2.5]  # node 0 fails at 2.5 h, back at 4.5 h
    inv = two_queues(nodes=2, node_failures=NodeFailures(repair_hours=2.0))
    # G is a 2-node gang; S a 4-GPU job queued behind it
    jobs = [trained("G", "low", 5.0, 16, 0.0), trained("S", "low", 1.0, 4, 0.0)]
    result = run(inv, jobs, policy="fifo")
    by_id = {j.id: j for j in result.jobs}
    g = by_id["G"]
    # G saved 2 h at 2.5 h and lost 0.5 h × 16 GPUs; the gang needs both nodes: it waits for the repair at 4.5
    # and runs its 3 h left
    assert g.interruptions == 1 and g.interrupted_lost_gpu_hours == pytest.approx(8.0)
    assert [r[1:3] for r in g.runs] == [(0.0, 2.5), (4.5, 7.5)]
    assert result.events["node_failure"] == 1 and result.events["repair"] == 1
    assert by_id["S"].start_h == pytest.approx(7.5)  # fifo: S waits behind the head G, though a node is up
    capacity_kept(result, inv)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("policy", ["fifo", "backfill", "fair", "priority"])
def test_random_node_failures_keep_capacity_and_every_job_completes_its_work(seed, policy) -> None:
    inv = two_queues(nodes=3, node_failures=NodeFailures(repair_hours=3.0, node_mtbf_hours=40.0))
    rng = random.Random(seed)
    jobs = [trained(f"j{i}", rng.choice(["low", "high"]), rng.uniform(0.5, 8.0), rng.choice([1, 2, 4, 8, 16]),
                    rng.uniform(0.0, 30.0)) for i in range(40)]
    result = run(inv, jobs, policy=policy, seed=seed)
    assert len(result.jobs) == 40 and result.events.get("node_failure", 0) > 0
    capacity_kept(result, inv)
    by_id = {j.id: j for j in jobs}
    for r in result.jobs:
        work = by_id[r.id].tokens / (RATE * r.gpus * 3600.0)
        assert r.compute_h == pytest.approx(work)  # saved work + the last run's = the job's work
        lost = r.interrupted_lost_gpu_hours / r.held_gpus if r.interruptions else 0.0
        assert r.run_h == pytest.approx(work + lost)  # every held hour was either work or lost
        assert r.interrupted_lost_gpu_hours <= r.interruptions * r.held_gpus * 1.0 + 1e-9  # < 1 interval each
    assert result.cluster.interrupted_lost_gpu_hours == pytest.approx(
        sum(r.interrupted_lost_gpu_hours for r in result.jobs))
    # the same seed replays the same failures
    again = run(inv, jobs, policy=policy, seed=seed)
    assert [(j.id, j.end_h) for j in again.jobs] == [(j.id, j.end_h) for j in result.jobs]


def test_launch_latency_delays_every_run_and_the_scheduler_plans_with_it() -> None:
    inv = two_queues(launch_hours=0.5)
    jobs = [trained("A", "low", 2.0, 8, 0.0), trained("B", "low", 1.0, 8, 0.0)]
    by_id = {j.id: (j.start_h, j.end_h, j.estimate_h) for j in run(inv, jobs, "fifo").jobs}
    assert by_id == {"A": (0.0, 2.5, 2.5), "B": (2.5, 4.0, 1.5)}


# ---- shortest-service and least-attained-service policies ----------------------------------------------

def test_srtf_stops_a_long_job_for_a_shorter_one_and_qssf_weighs_gpus() -> None:
    inv = two_queues()
    # L (8 h, 8 GPUs) runs from 0; S (1 h) arrives at 2.5: 5.5 h remain of L, so S preempts it; L kept 2 h
    jobs = [trained("L", "low", 8.0, 8, 0.0), trained("S", "low", 1.0, 8, 2.5)]
    result = {j.id: j for j in run(inv, jobs, "srtf").jobs}
    assert (result["S"].start_h, result["S"].end_h) == (2.5, 3.5)
    assert [r[1:3] for r in result["L"].runs] == [(0.0, 2.5), (3.5, 9.5)]
    assert result["L"].interrupted_lost_gpu_hours == pytest.approx(0.5 * 8)
    # not preemptive, sjf lets L finish
    assert {j.id: j.start_h for j in run(inv, jobs, "sjf").jobs} == {"L": 0.0, "S": 8.0}
    # qssf: W (2 h on 8 GPUs = 16 GPU-h) after N (3 h on 4 GPUs = 12 GPU-h), sjf the other way round
    jobs = [trained("B", "low", 1.0, 8, 0.0), trained("W", "low", 2.0, 8, 0.5), trained("N", "low", 3.0, 4, 0.5),
            trained("N2", "low", 3.0, 4, 0.5)]
    assert {j.id: j.start_h for j in run(inv, jobs, "qssf").jobs} == {"B": 0.0, "N": 1.0, "N2": 1.0, "W": 4.0}
    assert {j.id: j.start_h for j in run(inv, jobs, "sjf").jobs} == {"B": 0.0, "W": 1.0, "N": 3.0, "N2": 3.0}


def test_las_serves_the_job_with_least_attained_service_and_demotes_a_long_runner() -> None:
    inv = two_queues()
    # L has run 2 h × 8 GPUs = 16 GPU-h (above 10: the second queue) when F arrives with none: F preempts it
    jobs = [recorded("L", "low", 4.0, 8, 0.0), recorded("F", "low", 1.0, 8, 2.0)]
    result = {j.id: j for j in run(inv, jobs, "las").jobs}
    assert (result["F"].start_h, result["F"].end_h) == (2.0, 3.0)
    assert [r[1:3] for r in result["L"].runs] == [(0.0, 2.0), (3.0, 7.0)]  # no checkpoints: L starts over
    # L at 1 h (8 GPU-h, the first queue) is not preempted by F
    jobs = [recorded("L", "low", 4.0, 8, 0.0), recorded("F", "low", 1.0, 8, 1.0)]
    assert {j.id: j.start_h for j in run(inv, jobs, "las").jobs} == {"L": 0.0, "F": 4.0}


@pytest.mark.parametrize("policy", ["priority", "srtf", "las", "qssf", "multifactor", "kueue"])
def test_every_new_policy_keeps_capacity_and_finishes_every_job(policy) -> None:
    inv = Inventory("t", (make_pool("h100", "h100-sxm", 3), make_pool("a100", "a100-80g", 2)),
                    (Tenant("low", 16, True, priority=0, cohort="c"), Tenant("high", 16, True, priority=5,
                                                                              cohort="c")))
    rng = random.Random(7)
    jobs = [trained(f"j{i}", rng.choice(["low", "high"]), rng.uniform(0.2, 12.0), rng.choice([1, 2, 4, 8, 16]),
                    rng.uniform(0.0, 40.0)) for i in range(80)]
    result = run(inv, jobs, policy)
    assert len(result.jobs) == 80
    capacity_kept(result, inv)
    by_id = {j.id: j for j in jobs}
    for r in result.jobs:
        assert r.compute_h == pytest.approx(by_id[r.id].tokens / (RATE * r.gpus * 3600.0))
        assert r.start_h >= r.submit_h
