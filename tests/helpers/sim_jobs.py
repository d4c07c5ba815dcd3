"""Hand-made simulator jobs for the scheduling tests: exact runs that checkpoint hourly, recorded jobs, and the
capacity invariant over every run of every job."""

from __future__ import annotations

from bastion.sim.inputs import Inventory, Job, Recording
from bastion.sim.perf import Perf

#: tokens per second per GPU of the stub: a job of `hours` on `gpus` GPUs has hours × 3600 × RATE × gpus tokens
RATE = 1000.0


def hourly_checkpoints(model, pool, gpus, global_batch, seq_len):
    """Exact runs that checkpoint every hour of compute, never fail on their own."""
    return Perf(gpus=gpus, step_time_s=1.0, tokens_per_s=RATE * gpus, checkpoint_stall_s=0.0,
                checkpoint_interval_s=3600.0, mtbf_hours=1e12, expected_goodput=1.0, plan="stub")


def trained(job_id: str, tenant: str, hours: float, gpus: int, submit: float) -> Job:
    return Job(id=job_id, tenant=tenant, model="tiny", tokens=hours * 3600 * RATE * gpus, global_batch=8,
               submit_hours=submit, gpus=gpus)


def recorded(job_id: str, tenant: str, hours: float, gpus: float, submit: float) -> Job:
    return Job(id=job_id, tenant=tenant, model="", tokens=0.0, global_batch=0, submit_hours=submit,
               recorded=Recording(hours, gpus))


def capacity_kept(result, inv: Inventory) -> None:
    """No pool ever holds more GPUs than it has, counting every run of every job."""
    for pool in inv.pools:
        changes = sorted((t, sign * held) for r in result.jobs for name, start, end, held, _ in r.held_runs()
                         if name == pool.name for t, sign in ((start, 1), (end, -1)))
        held = 0.0
        for _, delta in changes:
            held += delta
            assert -1e-9 <= held <= pool.gpus + 1e-9
