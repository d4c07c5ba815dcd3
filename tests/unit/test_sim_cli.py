"""`bastion simulate` through the CLI: guidance errors for bad files, the real planner on small cases, JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import bastion.commands.sim_cmds  # noqa: F401  (registers `simulate` until cli.py imports it)
from bastion.cli import main
from bastion.sim import PlannerPerf, SimConfig, load_inventory, resolve, simulate
from bastion.sim.inputs import Job
from bastion.sim.synthetic import JOB_CLASSES, synthetic_workload

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "sim"

GOOD_CLUSTER = """
[[pool]]
name = "h100"
accelerator = "h100-sxm"
nodes = 4
[[pool]]
name = "a100"
accelerator = "a100-80g"
nodes = 2
[[tenant]]
name = "research"
quota_gpus = 32
"""

GOOD_JOB = """
[[job]]
id = "j1"
tenant = "research"
model = "llama-1.5b"
tokens = 1e9
global_batch = 64
seq_len = 2048
submit_hours = 0
"""


def cli(capsys, *args: str) -> tuple[int, str, str]:
    try:
        main(["simulate", *args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


BAD_CLUSTERS = {
    "no pools": ('name = "x"\n', "no 'pool' tables"),
    "unknown accelerator": ('[[pool]]\nname = "p"\naccelerator = "h1000"\nnodes = 2\n', "h1000"),
    "zero nodes": ('[[pool]]\nname = "p"\naccelerator = "h100-sxm"\nnodes = 0\n', "'nodes'"),
    "typo in a pool": ('[[pool]]\nname = "p"\naccelerator = "h100-sxm"\nnode = 2\n', "Did you mean 'nodes'"),
    "duplicate pool": ('[[pool]]\nname = "p"\naccelerator = "h100-sxm"\nnodes = 2\n' * 2, "twice"),
    "quotas above capacity": ('[[pool]]\nname = "p"\naccelerator = "h100-sxm"\nnodes = 1\n'
                              '[[tenant]]\nname = "a"\nquota_gpus = 9\n', "add up to 9"),
    "borrow not a bool": ('[[pool]]\nname = "p"\naccelerator = "h100-sxm"\nnodes = 1\n'
                          '[[tenant]]\nname = "a"\nquota_gpus = 8\nborrow = "sometimes"\n', "'borrow'"),
    "not TOML": ("[[pool]\nname=", "Cannot parse"),
    "unknown software": ('[[pool]]\nname = "p"\naccelerator = "h100-sxm"\nnodes = 1\nsoftware = "prodution"\n',
                         "Did you mean 'production'"),
}


@pytest.mark.parametrize("case", sorted(BAD_CLUSTERS))
def test_bad_cluster_file_is_a_guidance_error(tmp_path, capsys, case) -> None:
    text, expected = BAD_CLUSTERS[case]
    (tmp_path / "c.toml").write_text(text)
    (tmp_path / "w.toml").write_text(GOOD_JOB)
    code, _, err = cli(capsys, "--cluster", str(tmp_path / "c.toml"), "--workload", str(tmp_path / "w.toml"))
    assert code == 2
    assert expected in err and "To fix:" in err
    assert "Traceback" not in err


BAD_JOBS = {
    "no jobs": ('name = "w"\n', "no 'job' tables"),
    "unknown tenant": (GOOD_JOB.replace('"research"', '"reserch"'), "Did you mean 'research'"),
    "missing tokens": (GOOD_JOB.replace("tokens = 1e9\n", ""), "missing 'tokens'"),
    "negative tokens": (GOOD_JOB.replace("tokens = 1e9", "tokens = -5"), "'tokens'"),
    "fractional gpus": (GOOD_JOB + "gpus = 2.5\n", "'gpus'"),
    "unknown pool": (GOOD_JOB + 'pools = ["h200"]\n', "pool 'h200'"),
    "unknown field": (GOOD_JOB + "gpu = 8\n", "Did you mean 'gpus'"),
    "duplicate id": (GOOD_JOB * 2, "twice"),
    "unknown model": (GOOD_JOB.replace("llama-1.5b", "llama-9z"), "Unknown model"),
    "submit as text": (GOOD_JOB.replace("submit_hours = 0", 'submit_hours = "soon"'), "'submit_hours'"),
    # sizes beyond anything: each used to run unbounded (a failure drawn per MTBF of a 1e30-token job, a planner
    # enumerating a 1e30-sequence batch)
    "tokens beyond anything": (GOOD_JOB.replace("tokens = 1e9", "tokens = 1e30"), "'tokens' in"),
    "global batch beyond anything": (GOOD_JOB.replace("global_batch = 64", "global_batch = 1e30"),
                                     "'global_batch' in"),
    "gpus beyond anything": (GOOD_JOB + "gpus = 1e30\n", "'gpus' in"),
    "seq_len beyond anything": (GOOD_JOB.replace("seq_len = 2048", "seq_len = 1e30"), "'seq_len' in"),
    # with node failures, a span of 1e12 hours (or a 1e30-hour service) drew failures without end
    "submit beyond anything": (GOOD_JOB.replace("submit_hours = 0", "submit_hours = 1e12"), "'submit_hours' in"),
    "service beyond anything": ('[[job]]\nid = "s"\ntenant = "research"\nkind = "inference"\ngpus = 8\n'
                                'accelerator = "h100-sxm"\nsubmit_hours = 0\nduration_hours = 1e30\n',
                                "'duration_hours' in"),
}


@pytest.mark.parametrize("case", sorted(BAD_JOBS))
def test_bad_workload_file_is_a_guidance_error(tmp_path, capsys, hang_guard, case) -> None:
    text, expected = BAD_JOBS[case]
    (tmp_path / "c.toml").write_text(GOOD_CLUSTER)
    (tmp_path / "w.toml").write_text(text)
    with hang_guard(60, case):
        code, _, err = cli(capsys, "--cluster", str(tmp_path / "c.toml"), "--workload", str(tmp_path / "w.toml"))
    assert code == 2, err
    assert expected in err and "To fix:" in err
    assert "Traceback" not in err


def test_bad_command_lines_are_guidance_errors(tmp_path, capsys) -> None:
    (tmp_path / "c.toml").write_text(GOOD_CLUSTER)
    cluster = str(tmp_path / "c.toml")
    for args, expected in [((), "either as a file or as a synthetic count"),
                           (("--workload", "w.toml", "--synthetic", "3"), "not both"),
                           (("--synthetic", "3", "--policy", "lottery"), "Unknown policy 'lottery'"),
                           (("--synthetic", "3", "--placement", "best"), "Unknown placement"),
                           (("--synthetic", "0"), "--synthetic must be >= 1"),
                           (("--workload", str(tmp_path / "missing.toml")), "File not found")]:
        code, _, err = cli(capsys, "--cluster", cluster, *args)
        assert code == 2, (args, err)
        assert expected in err and "Traceback" not in err


def test_real_planner_picks_gpus_and_prices_pools_differently() -> None:
    inv = load_inventory(EXAMPLES / "cluster.toml")
    jobs = [Job(id="small", tenant="research", model="llama-1.5b", tokens=1e10, global_batch=256, submit_hours=0.0,
                seq_len=4096),
            Job(id="huge", tenant="research", model="llama3-405b", tokens=1e10, global_batch=64, submit_hours=0.0,
                seq_len=4096, gpus=8)]
    perf = PlannerPerf(workers=1)
    small, huge = resolve(jobs, inv, perf)
    by_pool = {o.pool: o for o in small.options}
    assert set(by_pool) == {"h100", "a100"}
    assert by_pool["h100"].gpus == 8 and by_pool["h100"].nodes == 1  # one node is enough for 1.5B
    assert by_pool["a100"].compute_hours(1e10) > 1.5 * by_pool["h100"].compute_hours(1e10)  # A100 is slower
    assert not huge.options  # 405B does not fit on one node of either
    assert "no plan of llama3-405b fits on 8" in huge.excluded["h100"]
    searches = perf.searches
    resolve(jobs, inv, perf)
    assert perf.searches == searches  # cached per (model, accelerator, GPUs, batch, seq)
    result = simulate([small, huge], inv, SimConfig(policy="fifo"))
    assert result.jobs[0].pool == "h100" and result.cluster.unschedulable == 1


def test_example_files_run_and_print_one_json_object(capsys) -> None:
    code, out, err = cli(capsys, "--cluster", str(EXAMPLES / "cluster.toml"), "--workload",
                         str(EXAMPLES / "workload.toml"), "--policy", "fifo", "--policy", "backfill",
                         "--policy", "fair", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert [r["policy"] for r in data["runs"]] == ["fifo", "backfill", "fair"]
    fifo, backfill = data["runs"][0], data["runs"][1]
    assert fifo["cluster"]["jobs"] == 8
    assert backfill["cluster"]["mean_wait_h"] <= fifo["cluster"]["mean_wait_h"]
    for run in data["runs"]:
        assert 0 < run["cluster"]["utilisation"] <= 1
        assert run["cluster"]["energy_kwh"] > 0
        assert {t["name"] for t in run["tenants"]} == {"pretrain", "research", "product"}


def test_synthetic_workload_is_seeded_and_mostly_small() -> None:
    inv = load_inventory(EXAMPLES / "cluster.toml")
    a = synthetic_workload(inv, 400, seed=5)
    assert a == synthetic_workload(inv, 400, seed=5)
    assert a != synthetic_workload(inv, 400, seed=6)
    small = sum(j.model == "llama-1.5b" for j in a.jobs)
    large = sum(j.model == "llama3-70b" for j in a.jobs)
    assert small > 150 and 0 < large < 50
    assert all(j.gpus is None or j.gpus <= 256 for j in a.jobs)  # capped at the largest pool
    assert len({(j.model, j.gpus, j.global_batch, j.seq_len) for j in a.jobs}) <= sum(
        max(1, len(c.gpus)) for c in JOB_CLASSES)
    submits = [j.submit_hours for j in a.jobs]
    assert submits == sorted(submits) and submits[-1] < 720 * 1.2


def test_a_pool_prices_its_jobs_on_its_own_software(tmp_path) -> None:
    from bastion.sim import load_inventory as load

    text = ('[[pool]]\nname = "own"\naccelerator = "h100-sxm"\nnodes = 1\n'
            '[[pool]]\nname = "titan"\naccelerator = "h100-sxm"\nnodes = 1\nsoftware = "torchtitan-2024"\n')
    (tmp_path / "c.toml").write_text(text)
    inv = load(tmp_path / "c.toml")
    assert [p.software for p in inv.pools] == ["bastion", "torchtitan-2024"]
    job = Job(id="long", tenant="default", model="llama3-8b", tokens=1e10, global_batch=8, submit_hours=0.0,
              seq_len=32768, gpus=8)
    perf = PlannerPerf(workers=1)
    (resolved,) = resolve([job], inv, perf)
    by_pool = {o.pool: o for o in resolved.options}
    # same cards, same job: FlashAttention-2 at 32K tokens makes the torchtitan pool's steps longer
    assert by_pool["titan"].perf.step_time_s > by_pool["own"].perf.step_time_s
    assert perf.searches == 2  # the cache tells the two stacks apart
