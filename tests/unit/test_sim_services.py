"""Inference services (a steady GPU reservation with a wait objective: first in the queue, never preempted,
counted apart) and fine-tuning jobs in the mix; their workload-file syntax and its guidance errors."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bastion.errors import ConfigError
from bastion.sim import SimConfig, simulate
from bastion.sim.inputs import Inventory, Tenant, make_pool, workload_from_mapping
from bastion.sim.perf import resolve
from helpers.sim_jobs import capacity_kept, hourly_checkpoints, recorded


def service(job_id: str, tenant: str, hours: float, gpus: float, submit: float, slo_hours: float | None = None):
    return replace(recorded(job_id, tenant, hours, gpus, submit), kind="inference", slo_wait_hours=slo_hours)


def one_node(*tenants: Tenant) -> Inventory:
    return Inventory("t", (make_pool("h100", "h100-sxm", 1),), tenants or (Tenant("team", 8, True),))


def run(inv, jobs, policy="fifo"):
    result = simulate(resolve(jobs, inv, hourly_checkpoints), inv, SimConfig(policy=policy))
    capacity_kept(result, inv)
    return result


def test_a_service_is_served_before_any_job_and_counted_apart() -> None:
    # T1 holds the node until 2; then S (a service) goes before T2 although T2 has a higher priority
    jobs = [replace(recorded("T1", "team", 2.0, 8, 0.0), kind="fine-tuning"),
            replace(recorded("T2", "team", 1.0, 8, 1.0), priority=5), service("S", "team", 3.0, 4, 1.0, 1.5)]
    result = run(one_node(), jobs)
    by_id = {j.id: j for j in result.jobs}
    assert {j: (r.start_h, r.end_h) for j, r in by_id.items()} == {"T1": (0.0, 2.0), "T2": (5.0, 6.0),
                                                                    "S": (2.0, 5.0)}
    assert by_id["S"].kind == "inference" and by_id["S"].slo_met is True
    services = result.cluster.services
    assert (services.services, services.gpu_hours, services.mean_wait_h, services.with_slo, services.slo_met) == (
        1, 12.0, 1.0, 1, 1)
    # the job figures leave the service out: waits 0 (T1) and 4 (T2)
    assert result.cluster.mean_wait_h == 2.0 and result.cluster.mean_jct_h == 3.5
    assert result.cluster.kinds == {"fine-tuning": {"jobs": 1, "mean_wait_h": 0.0, "p90_wait_h": 0.0,
                                                    "mean_jct_h": 2.0},
                                    "training": {"jobs": 1, "mean_wait_h": 4.0, "p90_wait_h": 4.0,
                                                 "mean_jct_h": 5.0}}
    # utilisation counts what the service held
    assert result.cluster.busy_gpu_hours == 16.0 + 12.0 + 8.0


def test_a_missed_wait_objective_is_counted() -> None:
    result = run(one_node(), [recorded("T", "team", 2.0, 8, 0.0), service("S", "team", 1.0, 8, 0.0, 1.0)])
    # S was submitted with T, is first in the queue, and starts at once: met; a later one waits 2 h for T
    assert result.cluster.services.slo_met == 1
    late = run(one_node(), [recorded("T", "team", 2.0, 8, 0.0), service("S", "team", 1.0, 8, 0.5, 1.0)])
    s = next(j for j in late.jobs if j.id == "S")
    assert (s.start_h, s.slo_met, late.cluster.services.slo_met, late.cluster.services.max_wait_h) == (
        2.0, False, 0, 1.5)


def test_a_service_is_never_preempted() -> None:
    tenants = (Tenant("low", 4, True, priority=0), Tenant("high", 4, True, priority=10))
    # S and L (low) share the node; H (high, 4 GPUs) preempts L, never S
    jobs = [service("S", "low", 10.0, 4, 0.0), recorded("L", "low", 10.0, 4, 0.0), recorded("H", "high", 1.0, 4, 1.0)]
    by_id = {j.id: j for j in run(one_node(*tenants), jobs, "priority").jobs}
    assert (by_id["H"].start_h, by_id["L"].interruptions, by_id["S"].interruptions) == (1.0, 1, 0)
    # a high job that only stopping S would make room for waits for it instead
    jobs = [service("S", "low", 10.0, 8, 0.0), recorded("H", "high", 1.0, 8, 1.0)]
    by_id = {j.id: j for j in run(one_node(*tenants), jobs, "priority").jobs}
    assert (by_id["S"].end_h, by_id["H"].start_h) == (10.0, 10.0)


def test_the_workload_file_gives_services_fine_tuning_and_elastic_jobs() -> None:
    inv = one_node()
    workload = workload_from_mapping({"job": [
        {"id": "chat", "tenant": "team", "kind": "inference", "gpus": 4, "submit_hours": 0, "duration_hours": 48,
         "slo_wait_s": 300},
        {"id": "ft", "tenant": "team", "kind": "fine-tuning", "model": "tiny", "tokens": 1e9, "global_batch": 8,
         "submit_hours": 1, "gpus": 4},
        {"id": "el", "tenant": "team", "model": "tiny", "tokens": 1e9, "global_batch": 8, "submit_hours": 1,
         "min_gpus": 2, "max_gpus": 8}]}, "w.toml", inv)
    chat, ft, el = workload.jobs
    assert (chat.service, chat.recorded.gpus, chat.recorded.duration_hours, chat.slo_wait_hours) == (
        True, 4.0, 48.0, pytest.approx(300 / 3600))
    assert (ft.kind, ft.service, ft.gpus) == ("fine-tuning", False, 4)
    assert (el.kind, el.min_gpus, el.max_gpus, el.gpus) == ("training", 2, 8, None)


@pytest.mark.parametrize("job, message", [
    ({"kind": "inference", "gpus": 4}, "without 'duration_hours'"),
    ({"kind": "serving", "model": "tiny", "tokens": 1e9, "global_batch": 8}, "must be one of training, fine-tuning"),
    ({"duration_hours": 2, "gpus": 4, "slo_wait_s": 60}, "only an inference service"),
    ({"model": "tiny", "tokens": 1e9, "global_batch": 8, "min_gpus": 8, "max_gpus": 2}, "min_gpus' <= 'max_gpus'"),
    ({"model": "tiny", "tokens": 1e9, "global_batch": 8, "min_gpus": 2}, "min_gpus' <= 'max_gpus'"),
    ({"model": "tiny", "tokens": 1e9, "global_batch": 8, "min_gpus": 2, "max_gpus": 8, "gpus": 4}, "and no 'gpus'"),
])
def test_a_bad_service_or_elastic_job_is_a_guidance_error(job, message) -> None:
    with pytest.raises(ConfigError, match=message):
        workload_from_mapping({"job": [{"id": "x", "tenant": "team", "submit_hours": 0, **job}]}, "w.toml",
                              one_node())


def test_the_mixed_example_runs_a_service_a_fine_tuning_job_and_an_elastic_one(capsys) -> None:
    import json

    import bastion.commands.sim_cmds  # noqa: F401  (registers `simulate` until cli.py imports it)
    from bastion.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--cluster", "example:sim", "--workload", "example:mixed", "-p", "fifo", "-p", "elastic",
              "--no-failures", "--json"])
    assert exc.value.code == 0
    runs = {run["policy"]: run for run in json.loads(capsys.readouterr().out)["runs"]}
    for run in runs.values():
        assert run["cluster"]["services"] == {"services": 1, "gpu_hours": 384.0, "mean_wait_h": 0.0,
                                              "max_wait_h": 0.0, "with_slo": 1, "slo_met": 1}
        assert set(run["cluster"]["kinds"]) == {"training", "fine-tuning"}
    gpus = {policy: {j["id"]: max(r[4] for r in j["runs"]) if j["runs"] else j["gpus"] for j in run["jobs"]}
            for policy, run in runs.items()}
    # fifo runs the elastic job at its minimum; elastic grows it where the planner predicts it pays
    assert gpus["fifo"]["pretrain-8b"] == 64 and gpus["elastic"]["pretrain-8b"] > 64
    assert runs["elastic"]["cluster"]["mean_jct_h"] < runs["fifo"]["cluster"]["mean_jct_h"]
