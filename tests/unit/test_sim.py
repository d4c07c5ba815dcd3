"""The cluster simulator: hand-computable schedules under each policy and placement, sampled failures, invariants.

A stub step-time model keeps these fast and exact: a GPU of pool `h100` trains 1,000 tokens/s, of pool `a100` 500,
so a job's run hours are chosen through its token budget. The real planner appears in test_sim_cli.py.
"""

from __future__ import annotations

import math
import random

import pytest

from bastion.errors import ConfigError
from bastion.sim import SimConfig, simulate
from bastion.sim.failures import job_rng, sample_run
from bastion.sim.inputs import Inventory, Job, Tenant, make_pool
from bastion.sim.perf import Perf, resolve

RATE = {"h100-sxm": 1000.0, "a100-80g": 500.0}


def stub_perf(model, pool, gpus, global_batch, seq_len):
    return Perf(gpus=gpus, step_time_s=1.0, tokens_per_s=RATE[pool.accelerator] * gpus, checkpoint_stall_s=0.0,
                checkpoint_interval_s=3600.0, mtbf_hours=1e9, expected_goodput=1.0, plan="stub")


def inventory(pools=(("h100", "h100-sxm", 2),), tenants=(("t", 10_000, True),)) -> Inventory:
    return Inventory("test", tuple(make_pool(*p) for p in pools), tuple(Tenant(*t) for t in tenants))


def job(job_id, hours, gpus, submit, tenant="t", accelerator="h100-sxm", **kw) -> Job:
    """A job that runs `hours` on `gpus` GPUs of `accelerator` under the stub."""
    return Job(id=job_id, tenant=tenant, model="tiny", tokens=hours * 3600 * RATE[accelerator] * gpus,
               global_batch=8, submit_hours=submit, gpus=gpus, **kw)


def run(inv, jobs, policy="backfill", placement="fastest", failures=False, seed=0, **config):
    result = simulate(resolve(jobs, inv, stub_perf), inv,
                      SimConfig(policy=policy, placement=placement, failures=failures, seed=seed, **config))
    return result, {j.id: j for j in result.jobs}


@pytest.mark.parametrize("policy", ["fifo", "backfill", "fair"])
def test_two_jobs_that_cannot_co_run_run_back_to_back(policy) -> None:
    inv = inventory()  # 2 nodes of 8
    result, jobs = run(inv, [job("a", 2.0, 16, 0.0), job("b", 3.0, 16, 0.5)], policy)
    assert (jobs["a"].start_h, jobs["a"].end_h) == (0.0, 2.0)
    assert jobs["b"].start_h == pytest.approx(2.0) and jobs["b"].end_h == pytest.approx(5.0)
    assert jobs["b"].wait_h == pytest.approx(1.5)
    assert result.cluster.makespan_h == pytest.approx(5.0)
    # 16 GPUs busy for 5 of 5 hours except the half hour... both jobs hold all 16 GPUs: 80 GPU-h of 80
    assert result.cluster.busy_gpu_hours == pytest.approx(80.0)
    assert result.cluster.utilisation == pytest.approx(1.0)


def easy_case():
    # 4 nodes. a holds 3 nodes until 10; the head b needs all 4 → reservation at 10.
    # c (1 node, 5 h) ends at 7 ≤ 10: it may backfill at 2. d (1 node, 20 h) would hold a node the head needs.
    return inventory(pools=(("h100", "h100-sxm", 4),)), [
        job("a", 10.0, 24, 0.0), job("b", 4.0, 32, 1.0), job("c", 5.0, 8, 2.0), job("d", 20.0, 8, 2.0)]


def test_easy_backfill_starts_a_short_job_early_without_delaying_the_head() -> None:
    inv, jobs = easy_case()
    _, fifo = run(inv, jobs, "fifo")
    _, easy = run(inv, jobs, "backfill")
    assert fifo["b"].start_h == pytest.approx(10.0)
    assert easy["b"].start_h == pytest.approx(fifo["b"].start_h)  # the head is not delayed
    assert easy["c"].start_h == pytest.approx(2.0)  # backfilled into the hole
    assert fifo["c"].start_h == pytest.approx(14.0)  # strict order: after the head
    # d would end at 22 on a node the head needs at 10: refused, it runs after the head
    assert easy["d"].start_h == pytest.approx(14.0)
    assert easy["d"].start_h >= easy["b"].end_h - 1e-9


def test_easy_backfill_lets_a_long_job_use_nodes_the_head_does_not_need() -> None:
    # head b needs 3 of 4 nodes at 10, so one node is spare then: the long job d may take it now
    inv = inventory(pools=(("h100", "h100-sxm", 4),))
    _, jobs = run(inv, [job("a", 10.0, 24, 0.0), job("b", 4.0, 24, 1.0), job("d", 20.0, 8, 2.0)], "backfill")
    assert jobs["d"].start_h == pytest.approx(2.0)
    assert jobs["b"].start_h == pytest.approx(10.0)


def test_fair_share_orders_tenants_by_usage_over_quota() -> None:
    # one node; A has quota 6 GPUs, B 2, both may borrow (every job takes the whole node: 8 GPUs)
    inv = inventory(pools=(("h100", "h100-sxm", 1),), tenants=(("A", 6, True), ("B", 2, True)))
    jobs = [job("a1", 2.0, 8, 0.0, "A"), job("b1", 1.0, 8, 0.1, "B"), job("b2", 1.0, 8, 0.2, "B"),
            job("a2", 1.0, 8, 0.3, "A")]
    _, fifo = run(inv, jobs, "fifo")
    _, fair = run(inv, jobs, "fair")
    assert [j for j, _ in sorted(((k, v.start_h) for k, v in fifo.items()), key=lambda kv: kv[1])] == \
        ["a1", "b1", "b2", "a2"]
    # at 2: usage A = 16 GPU-h / 6 = 2.7, B = 0 → b1. At 3: A = 2.7, B = 8 / 2 = 4 → a2 (usage alone would say b2)
    assert fair["b1"].start_h == pytest.approx(2.0)
    assert fair["a2"].start_h == pytest.approx(3.0)
    assert fair["b2"].start_h == pytest.approx(4.0)


def test_fair_keeps_a_tenant_that_may_not_borrow_within_its_quota() -> None:
    inv = inventory(tenants=(("P", 8, False), ("Q", 8, True)))  # 2 nodes of 8
    jobs = [job("p1", 2.0, 8, 0.0, "P"), job("p2", 1.0, 8, 0.0, "P"), job("big", 1.0, 16, 0.0, "P")]
    _, fair = run(inv, jobs, "fair")
    assert fair["p2"].start_h == pytest.approx(2.0)  # a node is free at 0, but P is at its quota
    assert "big" not in fair  # 16 GPUs > P's quota of 8 and P may not borrow: never admitted
    result, backfill = run(inv, jobs, "backfill")
    assert backfill["p2"].start_h == 0.0 and "big" in backfill  # only `fair` enforces quotas
    fair_result, _ = run(inv, jobs, "fair")
    assert [u["id"] for u in fair_result.unschedulable] == ["big"]
    assert "quota" in fair_result.unschedulable[0]["reasons"]["h100"]


def two_pools():
    return inventory(pools=(("h100", "h100-sxm", 1), ("a100", "a100-80g", 1)))


def test_fastest_prefers_h100_when_free_and_a100_when_h100_is_busy_long_enough() -> None:
    inv = two_pools()
    _, jobs = run(inv, [job("x", 1.0, 8, 0.0)])  # 1 h on H100, 2 h on A100
    assert jobs["x"].pool == "h100" and jobs["x"].end_h == pytest.approx(1.0)
    # H100 busy until 5: waiting finishes at 6, the A100 now at 2
    _, jobs = run(inv, [job("busy", 5.0, 8, 0.0, pools=("h100",)), job("x", 1.0, 8, 0.0)])
    assert jobs["x"].pool == "a100" and jobs["x"].end_h == pytest.approx(2.0)
    # H100 busy only until 0.5: waiting finishes at 1.5, earlier than 2 on the A100
    _, jobs = run(inv, [job("busy", 0.5, 8, 0.0, pools=("h100",)), job("x", 1.0, 8, 0.0)])
    assert jobs["x"].pool == "h100" and jobs["x"].start_h == pytest.approx(0.5)
    # first-fit takes whichever pool is free now, in inventory order
    _, jobs = run(inv, [job("busy", 0.5, 8, 0.0, pools=("h100",)), job("x", 1.0, 8, 0.0)], placement="first-fit")
    assert jobs["x"].pool == "a100" and jobs["x"].start_h == 0.0


def test_a_job_too_large_for_every_pool_is_reported_not_run() -> None:
    inv = two_pools()
    result, jobs = run(inv, [job("huge", 1.0, 64, 0.0), job("ok", 1.0, 8, 0.0)])
    assert list(jobs) == ["ok"]
    assert result.unschedulable[0]["id"] == "huge"
    assert "needs 64 GPUs" in result.unschedulable[0]["reasons"]["h100"]


def test_sampled_failures_are_reproducible_and_bounded() -> None:
    args = dict(compute_hours=500.0, interval_hours=0.5, stall_hours=0.01, mtbf_hours=20.0, restart_hours=0.2)
    first = sample_run(**args, rng=job_rng(7, "j"))
    assert first == sample_run(**args, rng=job_rng(7, "j"))
    assert first != sample_run(**args, rng=job_rng(8, "j"))
    assert 10 < first.failures < 50  # ≈ 500 h / 20 h; seeded, so exact every run
    per_failure_bound = args["interval_hours"] + args["stall_hours"] + args["restart_hours"]
    assert first.lost_hours <= first.failures * per_failure_bound + 1e-9
    assert first.lost_hours >= first.failures * args["restart_hours"]
    saves = round(first.checkpoint_hours / args["stall_hours"])
    assert first.wall_hours == pytest.approx(first.compute_hours + first.lost_hours + saves * args["stall_hours"])
    assert all(b > a for a, b in zip(first.failure_at, first.failure_at[1:], strict=False))
    no_failures = sample_run(**{**args, "mtbf_hours": 1e12}, rng=job_rng(7, "j"))
    assert no_failures.failures == 0
    assert no_failures.wall_hours == pytest.approx(500.0 + 999 * 0.01)  # 1000 segments, no save after the last


def random_workload(seed: int, n: int = 60) -> tuple[Inventory, list[Job]]:
    rng = random.Random(seed)
    inv = inventory(pools=(("h100", "h100-sxm", 8), ("a100", "a100-80g", 4), ("h100b", "h100-sxm", 3)),
                    tenants=(("A", 40, True), ("B", 24, False), ("C", 16, True)))
    jobs = []
    for i in range(n):
        gpus = rng.choice([4, 8, 8, 16, 16, 24, 32])
        jobs.append(job(f"j{i}", rng.uniform(0.2, 30.0), gpus, round(rng.uniform(0, 100), 2),
                        rng.choice(["A", "B", "C"]), priority=rng.choice([0, 0, 0, 1])))
    return inv, jobs


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("policy", ["fifo", "backfill", "fair"])
@pytest.mark.parametrize("placement", ["fastest", "first-fit"])
def test_invariants_on_random_workloads(seed, policy, placement) -> None:
    inv, jobs = random_workload(seed)
    # failures on, with a short MTBF so that they happen
    def flaky(model, pool, gpus, global_batch, seq_len):
        return Perf(gpus=gpus, step_time_s=1.0, tokens_per_s=RATE[pool.accelerator] * gpus, checkpoint_stall_s=30.0,
                    checkpoint_interval_s=1800.0, mtbf_hours=200.0 / gpus, expected_goodput=0.9, plan="stub")
    result = simulate(resolve(jobs, inv, flaky), inv, SimConfig(policy=policy, placement=placement, seed=seed))
    scheduled = {j.id for j in result.jobs}
    assert scheduled | {u["id"] for u in result.unschedulable} == {j.id for j in jobs}  # every job accounted
    assert len(result.jobs) >= len(jobs) - 10
    assert result.cluster.failures > 0
    by_id = {j.id: j for j in jobs}
    for r in result.jobs:
        assert r.start_h >= by_id[r.id].submit_hours - 1e-9  # starts after submit
        assert r.end_h > r.start_h  # finishes
        assert r.run_h >= r.compute_h - 1e-9
    for pool in inv.pools:  # no pool is ever over-allocated (4-GPU jobs hold 4 GPUs of a node, gangs whole nodes)
        changes = sorted([(r.start_h, r.held_gpus) for r in result.jobs if r.pool == pool.name]
                         + [(r.end_h, -r.held_gpus) for r in result.jobs if r.pool == pool.name],
                         key=lambda e: (e[0], e[1]))  # releases before claims at the same instant
        used = 0
        for _, delta in changes:
            used += delta
            assert 0 <= used <= pool.gpus
    c = result.cluster
    assert c.busy_gpu_hours <= c.capacity_gpu_hours + 1e-6
    assert 0 < c.utilisation <= 1 and 0 < c.goodput <= 1
    assert c.useful_gpu_hours + c.lost_gpu_hours <= c.busy_gpu_hours + 1e-6
    if policy == "fair":  # B may not borrow: never above its quota of 24 GPUs
        b_jobs = [r for r in result.jobs if r.tenant == "B"]
        for t in sorted({r.start_h for r in b_jobs}):
            held = sum(r.held_gpus for r in b_jobs if r.start_h <= t < r.end_h)
            assert held <= 24
    again = simulate(resolve(jobs, inv, flaky), inv, SimConfig(policy=policy, placement=placement, seed=seed))
    assert again == result  # deterministic


def test_same_seed_same_failures_across_policies() -> None:
    inv, jobs = random_workload(4, n=20)

    def flaky(model, pool, gpus, global_batch, seq_len):
        return Perf(gpus=gpus, step_time_s=1.0, tokens_per_s=RATE[pool.accelerator] * gpus, checkpoint_stall_s=30.0,
                    checkpoint_interval_s=1800.0, mtbf_hours=100.0 / gpus, expected_goodput=0.9, plan="stub")
    runs = [simulate(resolve(jobs, inv, flaky), inv, SimConfig(policy=p, placement="first-fit", seed=3))
            for p in ("fifo", "backfill")]
    a, b = ({j.id: j for j in r.jobs} for r in runs)
    for job_id in a:  # a job on the same pool draws the same failures whatever the policy
        if a[job_id].pool == b[job_id].pool:
            assert a[job_id].failures == b[job_id].failures
            assert a[job_id].run_h == pytest.approx(b[job_id].run_h)



def test_fair_reserves_for_a_borrowers_job_above_its_quota_instead_of_starving_it() -> None:
    # 3 nodes; R and S may borrow, quota one node each. S holds its node for 100 h and submits a 1-node, 1-hour
    # job every quarter hour: each borrows. R's 2-node job (above its quota) comes at 0.5 with R's share at 0.
    # Without a reservation in the borrowers' pass, every node freed went to a later S job: `big` waited 40 h.
    inv = inventory(pools=(("h100", "h100-sxm", 3),), tenants=(("R", 8, True), ("S", 8, True)))
    jobs = [job("hold", 100.0, 8, 0.0, "S"), job("big", 1.0, 16, 0.5, "R")] + \
        [job(f"s{i}", 1.0, 8, 0.25 * i, "S") for i in range(1, 80)]
    _, fair = run(inv, jobs, "fair")
    # s1 (0.25-1.25) and s2 (0.5-1.5) hold the two other nodes; big is reserved at 1.25, when s1 ends:
    # s3 (1.25-2.25) may not take s1's node, which the reservation needs
    assert fair["big"].start_h == pytest.approx(1.25)
    assert fair["s3"].start_h >= fair["big"].start_h


def test_decayed_usage_integrates_each_hour_at_its_age() -> None:
    from bastion.sim.policies.usage import decay, decayed_gpu_hours

    assert decayed_gpu_hours(8, 0.0, 10.0, 10.0, math.inf) == 80.0
    assert decay(168.0, 168.0) == pytest.approx(0.5) and decay(1e6, math.inf) == 1.0
    # a short window long ago weighs what it weighed then, halved per half-life since
    assert decayed_gpu_hours(8, 0.0, 0.01, 168.0, 168.0) == pytest.approx(0.08 * 0.5, rel=1e-3)
    # a long window: the integral of 8 * 2^-(age / h), checked numerically
    steps = 10_000
    numeric = sum(8 * 2 ** (-(100.0 - (i + 0.5) * 50.0 / steps) / 24.0) * 50.0 / steps for i in range(steps))
    assert decayed_gpu_hours(8, 0.0, 50.0, 100.0, 24.0) == pytest.approx(numeric, rel=1e-6)


def test_fair_share_forgets_old_usage_with_its_half_life() -> None:
    # A used the node for 100 h long ago; at 500 h A and B each submit a 1 h job, A's first (fifo would run A's)
    inv = inventory(pools=(("h100", "h100-sxm", 1),), tenants=(("A", 4, True), ("B", 4, True)))
    jobs = [job("old", 100.0, 8, 0.0, "A"), job("b0", 0.5, 8, 100.0, "B"),
            job("a", 1.0, 8, 500.0, "A"), job("b", 1.0, 8, 500.0, "B"), job("blocker", 1.0, 8, 499.5, "B")]
    _, never = run(inv, jobs, "fair", fair_half_life_hours=math.inf)
    _, weekly = run(inv, jobs, "fair", fair_half_life_hours=24.0)
    # never forgetting: A's 800 GPU-h outweigh B's 4 + 8 → B's job goes first when the node frees at 500.5
    assert never["b"].start_h < never["a"].start_h
    # a one-day half-life: A's usage is ~2^-16 of it by then, B's blocker just ran → A goes first
    assert weekly["a"].start_h < weekly["b"].start_h


def test_a_half_life_that_is_not_positive_is_a_guidance_error() -> None:
    with pytest.raises(ConfigError, match="half-life"):
        SimConfig(fair_half_life_hours=0)
