"""The `gavel` (heterogeneity-aware) and `elastic` (marginal-goodput resizing) policies on hand-made jobs whose
schedules are worked out by hand: speeds per model and accelerator come from a stub, so every ratio is exact."""

from __future__ import annotations

import pytest

from bastion.sim import SimConfig, simulate
from bastion.sim.inputs import Inventory, Job, Tenant, make_pool
from bastion.sim.perf import Perf, elastic_sizes, resolve
from helpers.sim_jobs import capacity_kept

#: tokens/s per GPU: `tiny` runs 3× faster on H100 than on A100, `llama3-8b` only 1.2×
RATE = {("tiny", "h100-sxm"): 3000.0, ("tiny", "a100-80g"): 1000.0,
        ("llama3-8b", "h100-sxm"): 1200.0, ("llama3-8b", "a100-80g"): 1000.0, ("tiny-moe", "h100-sxm"): 1200.0}
#: `tiny-moe` (the elastic jobs) scales sublinearly: effective GPUs at each size (4 → 8 gains 0.75 per GPU, 8 → 16 0.25)
CURVE = {4: 4.0, 8: 7.0, 16: 9.0}


def stub(model, pool, gpus, global_batch, seq_len):
    per_gpu = RATE[model.name, pool.accelerator]
    effective = CURVE[gpus] if model.name == "tiny-moe" else gpus
    return Perf(gpus=gpus, step_time_s=1.0, tokens_per_s=per_gpu * effective, checkpoint_stall_s=0.0,
                checkpoint_interval_s=3600.0, mtbf_hours=1e12, expected_goodput=1.0, plan="stub")


def on_a100(job_id: str, model: str, a100_hours: float, gpus: int, submit: float = 0.0) -> Job:
    """A job of `a100_hours` on `gpus` A100s."""
    return Job(id=job_id, tenant="team", model=model, tokens=a100_hours * 3600 * 1000.0 * gpus, global_batch=8,
               submit_hours=submit, gpus=gpus)


def run(inv: Inventory, jobs: list[Job], policy: str):
    result = simulate(resolve(jobs, inv, stub), inv, SimConfig(policy=policy, failures=False))
    capacity_kept(result, inv)
    return result, {j.id: (j.pool, j.start_h, pytest.approx(j.end_h)) for j in result.jobs}


def two_pools() -> Inventory:
    return Inventory("t", (make_pool("h100", "h100-sxm", 1), make_pool("a100", "a100-80g", 1)),
                     (Tenant("team", 16, True),))


# ---- gavel ----------------------------------------------------------------------------------------------

def test_gavel_gives_the_fast_pool_to_the_job_it_speeds_up_most_where_fifo_gives_it_to_the_first() -> None:
    # B (first in the queue) gains 1.2× on H100, A 3×: 12 h and 6 h on an A100 node
    jobs = [on_a100("B", "llama3-8b", 12.0, 8), on_a100("A", "tiny", 6.0, 8)]
    _, gavel = run(two_pools(), jobs, "gavel")
    assert gavel == {"A": ("h100", 0.0, 2.0), "B": ("a100", 0.0, 12.0)}
    # fastest placement in queue order: B takes the H100 (done at 10 h, not 12), A the A100
    _, backfill = run(two_pools(), jobs, "backfill")
    assert backfill == {"B": ("h100", 0.0, 10.0), "A": ("a100", 0.0, 6.0)}


def test_under_contention_the_best_ratio_waits_for_its_pool_only_when_no_other_is_free() -> None:
    # A and C both gain 3× on H100; A is first: it takes the H100; B (1.2×) takes the free A100; C, whose
    # A100 is now taken too, waits for the H100 (free at 2 h)
    jobs = [on_a100("B", "llama3-8b", 12.0, 8), on_a100("A", "tiny", 6.0, 8), on_a100("C", "tiny", 3.0, 8)]
    result, gavel = run(two_pools(), jobs, "gavel")
    assert gavel == {"A": ("h100", 0.0, 2.0), "B": ("a100", 0.0, 12.0), "C": ("h100", 2.0, 3.0)}
    assert result.cluster.interruptions == 0  # not preemptive


def test_gavel_ratios_are_over_each_jobs_slowest_pool() -> None:
    from bastion.sim.policies.gavel import throughput_ratios
    from bastion.sim.state import Queued

    inv = two_pools()
    resolved = resolve([on_a100("A", "tiny", 6.0, 8), on_a100("B", "llama3-8b", 12.0, 8)], inv, stub)
    ratios = [throughput_ratios(Queued(i, r.job, r.options)) for i, r in enumerate(resolved)]
    assert ratios == [pytest.approx([3.0, 1.0]), pytest.approx([1.2, 1.0])]


# ---- elastic --------------------------------------------------------------------------------------------

def one_h100_node() -> Inventory:
    return Inventory("t", (make_pool("h100", "h100-sxm", 1),), (Tenant("team", 8, True),))


def elastic(job_id: str, units: float, submit: float = 0.0) -> Job:
    """An elastic tiny-moe job of 4..16 GPUs whose work takes `units` / CURVE[gpus] hours."""
    return Job(id=job_id, tenant="team", model="tiny-moe", tokens=units * 3600 * 1200.0, global_batch=8,
               submit_hours=submit, min_gpus=4, max_gpus=16)


def fixed(job_id: str, hours: float, gpus: int, submit: float) -> Job:
    return Job(id=job_id, tenant="team", model="tiny", tokens=hours * 3600 * 3000.0 * gpus, global_batch=8,
               submit_hours=submit, gpus=gpus)


def test_elastic_sizes_double_from_the_minimum_to_the_maximum_within_the_pool() -> None:
    assert elastic_sizes(4, 16, 64) == [4, 8, 16]
    assert elastic_sizes(3, 16, 8) == [3, 6]  # 12 and 16 are more than the pool
    assert elastic_sizes(8, 8, 8) == [8]


def test_an_elastic_job_grows_while_the_marginal_gain_pays_and_shrinks_to_let_a_job_start() -> None:
    # E: 112 units = 28 h on 4 GPUs, 16 h on 8. Alone it grows 4 → 8 at once (gain 0.75/GPU ≥ 0.5 × 1/GPU);
    # 16 is more than the node. F (4 GPUs, 3 h) comes at 2 h: E shrinks to 4 (2 h × 7 = 14 units done), F starts;
    # F ends at 5: E (3 h × 4 = 12 more units) grows back to 8 and does the last 86 units in 86/7 h
    result, elastic_run = run(one_h100_node(), [elastic("E", 112.0), fixed("F", 3.0, 4, 2.0)], "elastic")
    assert elastic_run == {"E": ("h100", 0.0, 5.0 + 86.0 / 7.0), "F": ("h100", 2.0, 5.0)}
    e = next(j for j in result.jobs if j.id == "E")
    assert [(start, pytest.approx(end), used) for _, start, end, _, used in e.runs] == [
        (0.0, 2.0, 8), (2.0, 5.0, 4), (5.0, pytest.approx(5.0 + 86.0 / 7.0), 8)]
    assert e.interrupted_lost_gpu_hours == 0.0 and result.events["resize"] == 3  # grow at 0, shrink, grow
    # useful GPU-hours are each run's GPUs × its compute: 8 × 2 + 4 × 3 + 8 × 86/7; nothing was lost
    assert e.gpus * e.compute_h == pytest.approx(16.0 + 12.0 + 8.0 * 86.0 / 7.0)
    assert result.cluster.goodput == pytest.approx(1.0)
    # other policies run an elastic job at its minimum size: 28 h on 4 GPUs, F beside it
    _, fifo = run(one_h100_node(), [elastic("E", 112.0), fixed("F", 3.0, 4, 2.0)], "fifo")
    assert fifo == {"E": ("h100", 0.0, 28.0), "F": ("h100", 2.0, 5.0)}


def test_an_elastic_job_does_not_grow_where_the_step_gains_too_little() -> None:
    inv = Inventory("t", (make_pool("h100", "h100-sxm", 2),), (Tenant("team", 16, True),))
    # 8 → 16 gains 2 units over 8 GPUs (0.25 per GPU), under half of 7/8 per GPU at 8: E stays at 8
    result, elastic_run = run(inv, [elastic("E", 112.0)], "elastic")
    assert elastic_run == {"E": ("h100", 0.0, 16.0)}
    assert result.jobs[0].interruptions == 0  # the grow at its start left no run behind


def test_shrinking_that_cannot_make_room_shrinks_nothing() -> None:
    # G wants the whole node; E shrunk to 4 would still hold half of it: E keeps its 8 GPUs, G waits
    result, elastic_run = run(one_h100_node(), [elastic("E", 112.0), fixed("G", 1.0, 8, 1.0)], "elastic")
    assert elastic_run == {"E": ("h100", 0.0, 16.0), "G": ("h100", 16.0, 17.0)}
    assert result.events["resize"] == 1  # the grow at its start
