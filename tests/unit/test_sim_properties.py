"""Property tests of the simulator on seeded random workloads (stub speeds, so fast and exact).

With failures off, the scheduler's run-time estimates are exact, so EASY's promise can be checked literally: a job
that was given a reservation starts no later than it. Every policy and placement must also keep the event loop's
invariants: no pool over-allocated at any instant, every admitted job run to the end for its compute time, and
(with failures) a loss per failure of at most one checkpoint interval + one save + one restart.
"""

from __future__ import annotations

import random

import pytest

from bastion.sim import SimConfig, simulate
from bastion.sim.failures import job_rng, sample_run
from bastion.sim.inputs import Inventory, Job, Tenant, make_pool
from bastion.sim.perf import Perf, resolve
from bastion.sim.policies import easy

RATE = {"h100-sxm": 1000.0, "a100-80g": 500.0}


def stub_perf(model, pool, gpus, global_batch, seq_len):
    return Perf(gpus=gpus, step_time_s=1.0, tokens_per_s=RATE[pool.accelerator] * gpus, checkpoint_stall_s=0.0,
                checkpoint_interval_s=3600.0, mtbf_hours=1e9, expected_goodput=1.0, plan="stub")


def workload(seed: int, n: int, pools) -> tuple[Inventory, list[Job]]:
    rng = random.Random(seed)
    inv = Inventory("prop", tuple(make_pool(*p) for p in pools), (Tenant("A", 40, True), Tenant("B", 16, False)))
    sizes = [8, 8, 16, 24, 32, 4]
    jobs = []
    for i in range(n):
        gpus = rng.choice(sizes)
        hours = rng.choice([rng.uniform(0.1, 2.0), rng.uniform(2.0, 40.0)])
        submit = round(rng.uniform(0.0, 60.0), 1) if rng.random() < 0.8 else 0.0  # ties at 0 on purpose
        jobs.append(Job(id=f"j{i}", tenant=rng.choice("AB"), model="tiny", tokens=hours * 3600 * 1000.0 * gpus,
                        global_batch=8, submit_hours=submit, gpus=gpus))
    return inv, jobs


POOLS = {"one pool": (("h100", "h100-sxm", 5),),
         "three pools": (("h100", "h100-sxm", 4), ("a100", "a100-80g", 3), ("h100b", "h100-sxm", 2))}


@pytest.mark.parametrize("placement", ["fastest", "first-fit"])
@pytest.mark.parametrize("pools", sorted(POOLS))
@pytest.mark.parametrize("seed", range(6))
def test_easy_never_delays_a_reserved_head_when_estimates_are_exact(monkeypatch, seed, pools, placement) -> None:
    inv, jobs = workload(seed, 70, POOLS[pools])
    promised: dict[str, float] = {}
    original = easy.schedule

    def recording(state, now, order, allow=None):
        reservations = original(state, now, order, allow)
        for reservation in reservations:  # the earliest promise is the binding one
            promised.setdefault(reservation.job, reservation.start)
        return reservations

    monkeypatch.setattr(easy, "schedule", recording)
    result = simulate(resolve(jobs, inv, stub_perf), inv, SimConfig(policy="backfill", placement=placement,
                                                                      failures=False))
    assert promised, "the workload never made a head wait: the property was not exercised"
    started = {j.id: j.start_h for j in result.jobs}
    for job_id, start in promised.items():
        assert started[job_id] <= start + 1e-6, f"{job_id} promised {start}, started {started[job_id]}"


def over_allocation(result, inv) -> None:
    """No pool holds more GPUs than it has at any instant (jobs within a node hold GPUs, gangs whole nodes)."""
    for pool in inv.pools:
        changes = sorted([(r.start_h, r.held_gpus) for r in result.jobs if r.pool == pool.name]
                         + [(r.end_h, -r.held_gpus) for r in result.jobs if r.pool == pool.name])
        used = 0.0
        for _, delta in changes:  # at one instant releases (negative) sort before claims
            used += delta
            assert -1e-9 <= used <= pool.gpus + 1e-9, pool.name
        assert all(r.held_gpus == (r.nodes * pool.gpus_per_node if r.gpus > pool.gpus_per_node else r.gpus)
                   for r in result.jobs if r.pool == pool.name)


@pytest.mark.parametrize("policy", ["fifo", "backfill", "fair"])
@pytest.mark.parametrize("placement", ["fastest", "first-fit"])
@pytest.mark.parametrize("seed", range(4))
def test_exact_runs_keep_the_invariants(seed, policy, placement) -> None:
    inv, jobs = workload(100 + seed, 70, POOLS["three pools"])
    result = simulate(resolve(jobs, inv, stub_perf), inv, SimConfig(policy=policy, placement=placement,
                                                                      failures=False))
    by_id = {j.id: j for j in jobs}
    assert {j.id for j in result.jobs} | {u["id"] for u in result.unschedulable} == set(by_id)
    for r in result.jobs:
        assert r.start_h >= by_id[r.id].submit_hours
        assert r.run_h == pytest.approx(r.compute_h) == pytest.approx(r.estimate_h)
        speed = RATE[inv.pool(r.pool).accelerator] * r.gpus
        assert r.compute_h == pytest.approx(by_id[r.id].tokens / speed / 3600.0)  # tokens / tokens-per-s
        assert r.failures == 0 and r.lost_h == 0
    over_allocation(result, inv)
    assert result.events["finish"] == result.events["start"] == len(result.jobs)
    if policy == "fifo":  # strict order: nobody starts before an earlier-queued job (equal priorities)
        order = sorted(result.jobs, key=lambda r: (r.submit_h, int(r.id[1:])))
        starts = [r.start_h for r in order]
        assert starts == sorted(starts)


@pytest.mark.parametrize("seed", range(40))
def test_a_failure_loses_at_most_an_interval_a_save_and_a_restart(seed) -> None:
    rng = random.Random(seed)
    interval, stall, restart = rng.uniform(0.1, 2.0), rng.uniform(0.0, 0.2), rng.uniform(0.0, 0.5)
    run = sample_run(rng.uniform(1.0, 200.0), interval, stall, rng.uniform(0.5, 30.0), restart, job_rng(seed, "x"))
    at = (0.0, *run.failure_at)
    for previous, failure in zip(at, at[1:], strict=False):
        assert failure > previous  # time never goes back
    assert run.lost_hours <= run.failures * (interval + stall + restart) + 1e-9
    assert run.lost_hours >= run.failures * restart - 1e-9
    assert run.wall_hours >= run.compute_hours + run.lost_hours - 1e-9
    assert run.wall_hours == pytest.approx(run.compute_hours + run.lost_hours + run.checkpoint_hours)
