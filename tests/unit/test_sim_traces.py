"""Recorded jobs and trace import: the three formats read from hand-written fixtures (tests/unit/sim_traces/,
written from the published schemas), GPU-granular placement, per-queue ordering, time-limit backfill, the
metrics, and an independent per-queue FIFO that must agree exactly with `simulate` on a trace slice."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

import bastion.commands.sim_cmds  # noqa: F401  (registers `simulate` until cli.py imports it)
from bastion.cli import main
from bastion.errors import ConfigError
from bastion.sim import SimConfig, simulate
from bastion.sim.inputs import DEFAULT_QUEUE, Inventory, Job, Recording, Tenant, make_pool
from bastion.sim.metrics import bounded_slowdown, jain, mean_ci
from bastion.sim.perf import Perf, resolve
from bastion.sim.traces import load_trace
from bastion.specs.hardware import load_accelerator
from helpers.reference_fifo import reference_fifo

TRACES = Path(__file__).resolve().parent / "sim_traces"


def no_planner(*_args):
    raise AssertionError("a recorded job without a model must not reach the planner")


def inventory(nodes: int = 2, tenants=(("research", 16, True, ("a100",)), ("pretrain", 24, True, ()))) -> Inventory:
    return Inventory("t", (make_pool("h100", "h100-sxm", nodes), make_pool("a100", "a100-80g", 2)),
                     tuple(Tenant(*t) for t in tenants))


def recorded(job_id: str, submit: float, hours: float, gpus: float, queue: str = "pretrain",
             limit: float | None = None, accelerator: str | None = None, **kw) -> Job:
    return Job(id=job_id, tenant=queue, model="", tokens=0.0, global_batch=0, submit_hours=submit,
               recorded=Recording(hours, gpus, accelerator=accelerator, time_limit_hours=limit), **kw)


def run(inv: Inventory, jobs: list[Job], policy: str = "fifo", **config) -> dict[str, tuple]:
    result = simulate(resolve(jobs, inv, no_planner), inv, SimConfig(policy=policy, **config))
    return {j.id: (j.pool, j.start_h, j.end_h) for j in result.jobs}


# ---- the formats --------------------------------------------------------------------------------------

def test_the_generic_csv_reads_iso_times_shares_limits_states_and_queues() -> None:
    trace = load_trace(TRACES / "generic.csv", "generic", inventory())
    jobs = {j.id: j for j in trace.workload.jobs}
    assert [j.submit_hours for j in trace.workload.jobs] == [0.0, 0.0, 0.5, 1.0, 1.0]  # from the earliest date
    first = jobs["line-2"].recorded
    assert first == Recording(2.0, 8.0, "a100-80g", "alice", 3.0, "completed")
    assert jobs["line-3"].recorded.gpus == 0.5 and jobs["line-3"].recorded.accelerator is None
    assert jobs["line-4"].recorded.final_state == "failed" and jobs["line-6"].recorded.final_state == "cancelled"
    # research and pretrain are the inventory's queues; product and interns are not: the default queue
    assert [j.tenant for j in trace.workload.jobs] == ["research", "research", DEFAULT_QUEUE, "pretrain",
                                                       DEFAULT_QUEUE]
    default = trace.inventory.tenant(DEFAULT_QUEUE)
    assert (default.quota_gpus, default.pools) == (0, ())


def test_pai_jobs_are_their_tasks_together_with_users_and_submissions_from_the_job_table() -> None:
    trace = load_trace(TRACES / "pai_task_table.csv", "pai", inventory())
    jobs = {j.id: j for j in trace.workload.jobs}
    assert set(jobs) == {"6f1a", "7b2c", "8c3d"}
    assert trace.skipped == {"not finished (Running or Waiting)": 1, "CPU only": 1}
    # 6f1a: 2 workers × 50% of a GPU + a parameter server without GPU = 1 GPU; submitted at 40 s, ran 100-3700 s
    one = jobs["6f1a"]
    assert one.recorded.gpus == 1.0 and one.recorded.user == "u1" and one.submit_hours == 0.0
    assert one.recorded.duration_hours == pytest.approx(1.0)
    assert one.recorded.recorded_start_hours == pytest.approx(60 / 3600)
    assert jobs["8c3d"].recorded.gpus == 8.0  # 4 instances × 200%
    assert jobs["7b2c"].recorded.final_state == "failed"
    assert {j.tenant for j in jobs.values()} == {DEFAULT_QUEUE}
    assert any("V100" in note for note in trace.notes)  # not in the catalog: durations as recorded


def test_helios_maps_vcs_to_queues_slurm_states_and_recorded_waits() -> None:
    inv = inventory(tenants=(("vcJkd", 16, True, ()),))
    trace = load_trace(TRACES / "helios_cluster_log.csv", "helios", inv)
    jobs = {j.id: j for j in trace.workload.jobs}
    assert set(jobs) == {"1425511", "1425512", "1425514", "1425515"}
    assert trace.skipped == {"CPU only": 1, "state PENDING": 1}
    assert jobs["1425511"].tenant == "vcJkd" and jobs["1425512"].tenant == DEFAULT_QUEUE
    assert [jobs[i].recorded.final_state for i in ("1425512", "1425514", "1425515")] == [
        "failed", "cancelled", "failed"]  # TIMEOUT counts as failed
    result = simulate(resolve(trace.workload.jobs, trace.inventory, no_planner), trace.inventory,
                      SimConfig(policy="fifo", per_queue=True))
    waits = {j.id: j.recorded_wait_h for j in result.jobs}
    assert waits["1425514"] == pytest.approx(2.0) and waits["1425512"] == pytest.approx(600 / 3600)
    assert result.cluster.recorded_p50_wait_h == pytest.approx((600 / 3600 + 30 / 3600) / 2)


BAD_GENERIC = {
    "missing column": ("submit_time,duration_s,gpus,queue,user,time_limit_s,final_state\n0,1,1,a,u,,\n",
                       "no 'accelerator' column"),
    "mixed times": ("submit_time,duration_s,gpus,queue,user,time_limit_s,final_state,accelerator\n"
                    "0,1,1,a,u,,,\n2024-01-01T00:00:00,1,1,a,u,,,\n", "mixes ISO 8601 and seconds"),
    "zero gpus": ("submit_time,duration_s,gpus,queue,user,time_limit_s,final_state,accelerator\n0,1,0,a,u,,,\n",
                  "gpus in"),
    "bad state": ("submit_time,duration_s,gpus,queue,user,time_limit_s,final_state,accelerator\n0,1,1,a,u,,done,\n",
                  "final_state"),
    "unknown accelerator": ("submit_time,duration_s,gpus,queue,user,time_limit_s,final_state,accelerator\n"
                            "0,1,1,a,u,,,v100\n", "'v100', which the catalog does not know"),
    "bad time": ("submit_time,duration_s,gpus,queue,user,time_limit_s,final_state,accelerator\n"
                 "yesterday,1,1,a,u,,,\n", "neither seconds nor ISO 8601"),
    # a NaN submit time used to stall the simulated clock for ever; an infinite one is no time either
    "nan time": ("submit_time,duration_s,gpus,queue,user,time_limit_s,final_state,accelerator\n"
                 "nan,1,1,a,u,,,\n", "submit_time in"),
    "a run beyond a year": ("submit_time,duration_s,gpus,queue,user,time_limit_s,final_state,accelerator\n"
                            "0,1e12,1,a,u,,,\n", "beyond anything bastion simulates"),
    "infinite start": ("submit_time,duration_s,gpus,queue,user,time_limit_s,final_state,accelerator,start_time\n"
                       "0,1,1,a,u,,,,inf\n", "start_time in"),
    # Unix epoch seconds instead of seconds from the trace's start: said so, with the way out
    "epoch seconds": ("submit_time,duration_s,gpus,queue,user,time_limit_s,final_state,accelerator\n"
                      "1733500000,3600,1,a,u,,,\n1733503600,600,2,a,u,,,\n", "looks like Unix epoch seconds"),
}


@pytest.mark.parametrize("case", sorted(BAD_GENERIC))
def test_a_bad_generic_trace_is_a_guidance_error_from_the_cli(tmp_path, capsys, hang_guard, case) -> None:
    text, expected = BAD_GENERIC[case]
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(SystemExit) as exc, hang_guard(60, case):
        main(["simulate", "--cluster", str(Path(__file__).parents[2] / "examples" / "sim" / "cluster.toml"),
              "--trace", str(tmp_path / "t.csv")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and expected in err and "To fix:" in err and "Traceback" not in err


PAI_ROWS = "j0,worker,1,Terminated,100,200,600,29,100,\n"
HELIOS_ROWS = "job_id,user,gpu_num,state,submit_time,start_time,duration,vc\n1,u,8,COMPLETED,100,150,3600,vcA\n"
#: a row of a public trace with a NaN or infinite number (once a stalled clock or an OverflowError in the
#: node count), beside a sound row
NON_FINITE = {
    "pai nan start": ("pai", PAI_ROWS + "j1,worker,1,Terminated,nan,200,600,29,100,\n"),
    "pai infinite instances": ("pai", PAI_ROWS + "j1,worker,inf,Terminated,100,200,600,29,100,\n"),
    "pai GPUs overflowing": ("pai", PAI_ROWS + "j1,worker,1e308,Terminated,100,200,600,29,1e308,\n"),
    "helios infinite gpus": ("helios", HELIOS_ROWS + "2,u,inf,COMPLETED,100,150,3600,vcA\n"),
    "helios nan submit": ("helios", HELIOS_ROWS + "2,u,8,COMPLETED,nan,150,3600,vcA\n"),
}


@pytest.mark.parametrize("case", sorted(NON_FINITE))
def test_a_non_finite_number_leaves_its_row_of_a_public_trace_out(tmp_path, capsys, hang_guard, case) -> None:
    trace_format, text = NON_FINITE[case]
    (tmp_path / "t.csv").write_text(text)
    trace = load_trace(tmp_path / "t.csv", trace_format, inventory())
    assert len(trace.workload.jobs) == 1 and sum(trace.skipped.values()) == 1
    # alone, it leaves nothing to replay: a guidance error, not a hang or a traceback
    (tmp_path / "t.csv").write_text(text.replace(PAI_ROWS, "").replace(HELIOS_ROWS, HELIOS_ROWS.splitlines()[0] + "\n"))
    with pytest.raises(SystemExit) as exc, hang_guard(60, case):
        main(["simulate", "--cluster", str(Path(__file__).parents[2] / "examples" / "sim" / "cluster.toml"),
              "--trace", str(tmp_path / "t.csv"), "--trace-format", trace_format])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "no job that can be replayed" in err and "To fix:" in err, err


def test_an_unknown_trace_format_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'helios'"):
        load_trace(TRACES / "generic.csv", "helio", inventory())


# ---- allocation -----------------------------------------------------------------------------------------

def test_single_node_jobs_share_nodes_by_gpu_and_fractions_share_a_gpu() -> None:
    inv = inventory(nodes=1, tenants=(("pretrain", 8, True, ("h100",)),))
    jobs = [recorded(f"one{i}", 0.0, 1.0, 1) for i in range(6)]
    jobs += [recorded("half-a", 0.0, 2.0, 0.5), recorded("half-b", 0.0, 2.0, 0.5), recorded("two", 0.0, 1.0, 2)]
    result = simulate(resolve(jobs, inv, no_planner), inv, SimConfig(policy="fifo"))
    spans = {j.id: (j.start_h, j.held_gpus) for j in result.jobs}
    # 6 one-GPU jobs + two halves on the 7th GPU fill one 8-GPU node at once; the 2-GPU job waits for two GPUs
    assert all(spans[f"one{i}"] == (0.0, 1) for i in range(6))
    assert spans["half-a"] == spans["half-b"] == (0.0, 0.5)
    assert spans["two"] == (1.0, 2)
    assert result.cluster.busy_gpu_hours == pytest.approx(6 * 1 + 2 * 0.5 * 2 + 2 * 1)


def test_a_gang_takes_whole_nodes_and_waits_while_small_jobs_scatter() -> None:
    inv = inventory(nodes=2, tenants=(("pretrain", 16, True, ("h100",)),))
    jobs = [recorded("small", 0.0, 3.0, 1), recorded("gang", 0.0, 1.0, 16), recorded("small2", 0.5, 1.0, 1)]
    spans = run(inv, jobs)
    # the 1-GPU job leaves one node whole; the 16-GPU gang needs both: it waits for small (to 3)
    assert spans["gang"][1:] == (3.0, 4.0)
    assert spans["small2"][1] == 4.0  # fifo: behind the waiting gang
    backfilled = run(inv, jobs, policy="backfill")
    assert backfilled["small2"][1] == 0.5  # ends at 1.5 < 3, before the gang's reservation
    assert backfilled["gang"][1] == 3.0


def test_per_queue_ordering_lets_other_queues_past_a_blocked_head() -> None:
    tenants = (("a", 8, True, ("h100",)), ("b", 8, True, ("h100",)))
    inv = inventory(nodes=2, tenants=tenants)
    jobs = [recorded("a-long", 0.0, 5.0, 8, "a"), recorded("a-gang", 0.5, 1.0, 16, "a"),
            recorded("b-small", 1.0, 1.0, 4, "b")]
    assert run(inv, jobs)["b-small"][1] == 6.0  # one global queue: b waits behind a's blocked gang
    assert run(inv, jobs, per_queue=True)["b-small"][1] == 1.0


def test_backfill_plans_with_time_limits_not_true_run_times() -> None:
    inv = inventory(nodes=2, tenants=(("pretrain", 16, True, ("h100",)),))
    head_blocker = recorded("busy", 0.0, 4.0, 8, limit=4.0)
    gang = recorded("gang", 0.1, 1.0, 16, limit=1.0)
    # truly 1 h, so it would end before the gang's start at 4, but its user asked for 10 h: not backfilled
    padded = recorded("padded", 0.2, 1.0, 8, limit=10.0)
    honest = recorded("honest", 0.2, 1.0, 8, limit=2.0)
    assert run(inv, [head_blocker, gang, padded], policy="backfill")["padded"][1] == 5.0
    spans = run(inv, [head_blocker, gang, honest], policy="backfill")
    assert spans["honest"][1:] == (0.2, 1.2) and spans["gang"][1] == 4.0


def test_a_time_limit_cuts_the_run_and_marks_it() -> None:
    inv = inventory(nodes=1, tenants=(("pretrain", 8, True, ()),))
    result = simulate(resolve([recorded("over", 0.0, 5.0, 1, limit=2.0)], inv, no_planner), inv,
                      SimConfig(policy="fifo"))
    (job,) = result.jobs
    assert (job.run_h, job.final_state) == (2.0, "timeout")


def test_durations_scale_by_the_bf16_peak_ratio_or_by_the_planner_when_the_model_is_known() -> None:
    inv = inventory(tenants=(("pretrain", 8, True, ()),))
    ratio = load_accelerator("h100-sxm").peak_tflops("bf16") / load_accelerator("a100-80g").peak_tflops("bf16")
    (resolved,) = resolve([recorded("r", 0.0, 3.0, 8, accelerator="a100-80g")], inv, no_planner)
    hours = {o.pool: o.hours for o in resolved.options}
    assert hours == {"h100": pytest.approx(3.0 / ratio), "a100": 3.0}
    speed = {"h100-sxm": 3000.0, "a100-80g": 1000.0}

    def stub(model, pool, gpus, global_batch, seq_len):
        return Perf(gpus, 1.0, speed[pool.accelerator] * gpus, 0.0, 3600.0, 1e9, 1.0, "stub")

    known = Job(id="m", tenant="pretrain", model="llama-1.5b", tokens=0.0, global_batch=64, submit_hours=0.0,
                recorded=Recording(3.0, 8, accelerator="a100-80g"))
    (resolved,) = resolve([known], inv, stub)
    assert {o.pool: o.hours for o in resolved.options} == {"h100": pytest.approx(1.0), "a100": 3.0}
    assert "planner" in resolved.options[0].perf.plan


def test_sjf_serves_the_shortest_limit_first() -> None:
    inv = inventory(nodes=1, tenants=(("pretrain", 8, True, ("h100",)),))
    jobs = [recorded("busy", 0.0, 1.0, 8), recorded("long", 0.1, 5.0, 8, limit=5.0),
            recorded("short", 0.2, 1.0, 8, limit=1.0)]
    assert run(inv, jobs, policy="sjf")["short"][1] == 1.0 and run(inv, jobs, policy="fifo")["short"][1] == 6.0


# ---- metrics ----------------------------------------------------------------------------------------------

def test_metrics_in_window_utilisation_slowdown_and_fairness() -> None:
    inv = inventory(nodes=1, tenants=(("a", 4, True, ("h100",)), ("b", 4, True, ("h100",))))
    jobs = [recorded("a1", 0.0, 2.0, 4, "a"), recorded("b1", 1.0, 4.0, 2, "b")]
    c = simulate(resolve(jobs, inv, no_planner), inv, SimConfig(policy="fifo")).cluster
    # window 0-1 h on 8 + 16 GPUs: only a1's 4 GPUs busy then
    assert c.window_h == 1.0 and c.window_utilisation == pytest.approx(4 / 24)
    assert c.mean_jct_h == pytest.approx((2 + 4) / 2) and c.mean_bounded_slowdown == 1.0
    # a used 8 of its 4 × 5 quota GPU-hours, b 8 of 20: equal shares
    assert c.jain_fairness == pytest.approx(1.0)
    assert jain([1.0, 0.0]) == 0.5 and bounded_slowdown(1.0, 0.0) == pytest.approx(1.0 / (10 / 3600))
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * 1.0 / 3 ** 0.5)
    assert mean_ci([5.0]) == (5.0, 0.0)


# ---- an independent per-queue FIFO (helpers/reference_fifo.py) ---------------------------------------

def test_an_independent_per_queue_fifo_agrees_exactly_on_a_trace_slice(tmp_path) -> None:
    rng = random.Random(17)
    inv = Inventory("slice", (make_pool("h100", "h100-sxm", 3), make_pool("a100", "a100-80g", 2)),
                    (Tenant("vision", 8, True, ("h100",)), Tenant("speech", 8, True, ("h100",)),
                     Tenant("nlp", 8, True, ("a100",))))
    rows = ["submit_time,duration_s,gpus,queue,user,time_limit_s,final_state,accelerator"]
    for _ in range(300):
        gpus = rng.choice([0.25, 0.5, 1, 1, 1, 2, 3, 4, 8, 16])
        limit = rng.choice(["", str(rng.randint(600, 20000))])
        rows.append(f"{rng.randint(0, 100_000)},{rng.randint(60, 30_000)},{gpus},"
                    f"{rng.choice(['vision', 'speech', 'nlp'])},u,{limit},,")
    (tmp_path / "slice.csv").write_text("\n".join(rows) + "\n")
    trace = load_trace(tmp_path / "slice.csv", "generic", inv)
    jobs = list(trace.workload.jobs)
    result = simulate(resolve(jobs, trace.inventory, no_planner), trace.inventory,
                      SimConfig(policy="fifo", per_queue=True))
    expected = reference_fifo(jobs, {"vision": "h100", "speech": "h100", "nlp": "a100"},
                              {"h100": (3, 8), "a100": (2, 8)})
    got = {j.id: j.start_h for j in result.jobs}
    assert got == expected
    assert sum(1 for j in result.jobs if j.wait_h > 0) > 50  # the queues really contended


# ---- the command ------------------------------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "sim"


def test_simulate_replays_the_example_trace_per_queue_with_seeds_as_json(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--cluster", str(EXAMPLES / "trace-cluster.toml"), "--trace", str(EXAMPLES / "trace.csv"),
              "-p", "fifo", "-p", "sjf", "--seeds", "2", "--json"])
    assert exc.value.code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["jobs"] == 400 and out["planner_searches"] == 0
    fifo, sjf = out["runs"]
    assert fifo["policy"] == "fifo" and len(fifo["jobs"]) == 400
    assert {j["final_state"] for j in fifo["jobs"]} >= {"completed", "failed", "cancelled"}
    for j in fifo["jobs"]:  # a job cut at its limit ran slower than recorded (an H100 recording on an A100)
        if j["final_state"] == "timeout":
            assert j["run_h"] == pytest.approx(j["estimate_h"])  # the limit
            assert float(j["plan"].split("×")[1].split()[0]) > 1  # "recorded ×3.17 (bf16 peak)"
    assert sjf["cluster"]["mean_bounded_slowdown"] < fifo["cluster"]["mean_bounded_slowdown"]
    # a trace replays the same way under every seed: the interval has no width
    assert out["seeds"]["mean_ci95"]["fifo"]["mean_jct_h"] == [fifo["cluster"]["mean_jct_h"], 0.0]
    product = [j for j in fifo["jobs"] if j["tenant"] == "product"]
    assert product and all(j["pool"] == "a100" for j in product)  # the queue's pools


def test_simulate_takes_exactly_one_source_of_jobs(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--cluster", str(EXAMPLES / "cluster.toml"), "--trace", str(EXAMPLES / "trace.csv"),
              "--synthetic", "5"])
    assert exc.value.code == 2 and "--trace FILE" in capsys.readouterr().err


@pytest.mark.parametrize("per_queue", [False, True])
@pytest.mark.parametrize("policy", ["fifo", "backfill", "fair", "sjf"])
def test_replays_keep_the_invariants_under_every_policy(policy, per_queue) -> None:
    from bastion.sim.synthetic import synthetic_trace

    inv = Inventory("inv", (make_pool("h100", "h100-sxm", 4), make_pool("a100", "a100-80g", 3)),
                    (Tenant("x", 16, True, ("h100",)), Tenant("y", 16, True, ()), Tenant("z", 8, False, ("a100",))))
    jobs = synthetic_trace(inv, 200, seed=3).jobs
    result = simulate(resolve(jobs, inv, no_planner), inv, SimConfig(policy=policy, per_queue=per_queue))
    by_id = {j.id: j for j in jobs}
    assert {j.id for j in result.jobs} | {u["id"] for u in result.unschedulable} == set(by_id)
    for r in result.jobs:
        recording = by_id[r.id].recorded
        assert r.start_h >= r.submit_h
        limit = recording.time_limit_hours
        assert r.run_h == pytest.approx(min(recording.duration_hours, limit) if limit else recording.duration_hours)
        assert r.pool in (inv.tenant(r.tenant).pools or ("h100", "a100"))
    for pool in inv.pools:  # never more GPUs held than the pool has
        changes = sorted([(r.start_h, r.held_gpus) for r in result.jobs if r.pool == pool.name]
                         + [(r.end_h, -r.held_gpus) for r in result.jobs if r.pool == pool.name])
        held = 0.0
        for _, delta in changes:
            held += delta
            assert held <= pool.gpus + 1e-9
    if policy == "fair":  # z may not borrow: never above its 8 GPUs
        z = [r for r in result.jobs if r.tenant == "z"]
        for t in {r.start_h for r in z}:
            assert sum(r.held_gpus for r in z if r.start_h <= t < r.end_h) <= 8 + 1e-9


def test_a_workload_file_may_hold_recorded_jobs_and_tenants_may_name_their_pools(tmp_path) -> None:
    from bastion.sim import load_inventory, load_workload

    (tmp_path / "c.toml").write_text('[[pool]]\nname = "h100"\naccelerator = "h100-sxm"\nnodes = 1\n'
                                     '[[pool]]\nname = "a100"\naccelerator = "a100-80g"\nnodes = 1\n'
                                     '[[tenant]]\nname = "research"\nquota_gpus = 8\npools = ["a100"]\n')
    (tmp_path / "w.toml").write_text('[[job]]\nid = "r1"\ntenant = "research"\nsubmit_hours = 0.5\n'
                                     'duration_hours = 3.0\naccelerator = "h100-sxm"\ngpus = 0.5\n'
                                     'time_limit_hours = 4.0\nfinal_state = "failed"\nuser = "alice"\n')
    inv = load_inventory(tmp_path / "c.toml")
    (job,) = load_workload(tmp_path / "w.toml", inv).jobs
    assert job.recorded == Recording(3.0, 0.5, "h100-sxm", "alice", 4.0, "failed")
    result = simulate(resolve([job], inv, no_planner), inv, SimConfig(policy="backfill"))
    (run_,) = result.jobs
    ratio = load_accelerator("h100-sxm").peak_tflops("bf16") / load_accelerator("a100-80g").peak_tflops("bf16")
    # the queue's only pool is a100, slower than the recording's h100: 3 h × 3.17 > the 4 h limit
    assert (run_.pool, run_.run_h, run_.final_state) == ("a100", 4.0, "timeout") and 3.0 * ratio > 4.0
    assert result.unschedulable == []
    (tmp_path / "bad.toml").write_text('[[job]]\nid = "r1"\ntenant = "research"\nsubmit_hours = 0\n'
                                       'duration_hours = 1.0\ngpus = 1\nfinal_state = "crashed"\n')
    with pytest.raises(ConfigError, match="final_state"):
        load_workload(tmp_path / "bad.toml", inv)
    (tmp_path / "bad.toml").write_text('[[tenant]]\nname = "x"\nquota_gpus = 8\npools = ["h200"]\n'
                                       '[[pool]]\nname = "h100"\naccelerator = "h100-sxm"\nnodes = 1\n')
    with pytest.raises(ConfigError, match="pool 'h200'"):
        load_inventory(tmp_path / "bad.toml")
