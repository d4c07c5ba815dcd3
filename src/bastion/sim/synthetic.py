"""A seeded synthetic workload: many small jobs, a few large ones, Poisson arrivals over a month.

The mix follows the shape reported for shared ML clusters (most jobs use one or a few nodes, a small fraction of
large jobs holds most GPU-hours: Jeon et al., Philly, ATC'19; Hu et al., Acme, NSDI'24): half the jobs are
single-node fine-tunes of a 1.5B model (bastion picks the GPU count), 30% train an 8B model on 32–128 GPUs, 13%
a 13B model on 128–256, 5% a 70B model on 512–1,024 (capped at the largest pool). Token budgets are
log-uniform within each class. Job shapes come from a short list on purpose: the planner runs once per
shape and pool, whatever the number of jobs. The figures are illustrative, not a fit to any published trace.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from bastion.errors import ConfigError
from bastion.sim.inputs import Inventory, Job, Recording, Workload


@dataclass(frozen=True)
class JobClass:
    name: str
    #: share of jobs
    weight: float
    model: str
    #: GPU counts to draw from (empty: bastion chooses per pool)
    gpus: tuple[int, ...]
    global_batch: int
    seq_len: int
    #: log-uniform token budget range
    tokens: tuple[float, float]


JOB_CLASSES = (
    JobClass("finetune-1.5b", 0.52, "llama-1.5b", (), 256, 4096, (2e9, 2e10)),
    JobClass("train-8b", 0.30, "llama3-8b", (32, 64, 128), 512, 8192, (1e10, 8e10)),
    JobClass("train-13b", 0.13, "llama2-13b", (128, 256), 1024, 4096, (3e10, 1.5e11)),
    JobClass("train-70b", 0.05, "llama3-70b", (512, 1024), 1024, 8192, (5e10, 2e11)),
)


def synthetic_workload(inventory: Inventory, num_jobs: int, seed: int = 0, span_hours: float = 720.0) -> Workload:
    """`num_jobs` jobs arriving as a Poisson process over `span_hours`, tenants drawn by quota."""
    if num_jobs < 1:
        raise ConfigError(f"--synthetic needs at least 1 job, got {num_jobs}.", fix="e.g. --synthetic 200.")
    if span_hours <= 0:
        raise ConfigError(f"the arrival span must be > 0 hours, got {span_hours}.", fix="e.g. --span-hours 720.")
    rng = random.Random(f"bastion-synthetic/{seed}")
    largest = max(p.gpus for p in inventory.pools)
    tenants = [t.name for t in inventory.tenants]
    quotas = [t.quota_gpus for t in inventory.tenants]
    rate = num_jobs / span_hours
    now, jobs = 0.0, []
    for i in range(num_jobs):
        cls = rng.choices(JOB_CLASSES, weights=[c.weight for c in JOB_CLASSES])[0]
        gpus = None
        if cls.gpus:
            fitting = [g for g in cls.gpus if g <= largest] or [largest]
            gpus = rng.choice(fitting)
        low, high = cls.tokens
        tokens = float(f"{math.exp(rng.uniform(math.log(low), math.log(high))):.3g}")
        jobs.append(Job(id=f"{cls.name}-{i:04d}", tenant=rng.choices(tenants, weights=quotas)[0], model=cls.model,
                        tokens=tokens, global_batch=cls.global_batch, submit_hours=round(now, 4),
                        seq_len=cls.seq_len, gpus=gpus))
        now += rng.expovariate(rate)
    return Workload(name=f"synthetic-{num_jobs}-seed{seed}", jobs=tuple(jobs))


#: recorded-job GPU counts and their shares, shaped like public traces (Helios, PAI: most jobs use one GPU or
#: less, a few use several nodes)
TRACE_GPUS = ((0.5, 0.05), (1, 0.55), (2, 0.12), (4, 0.1), (8, 0.12), (16, 0.03), (32, 0.02), (64, 0.01))


def synthetic_trace(inventory: Inventory, num_jobs: int, seed: int = 0, load: float = 0.85) -> Workload:
    """`num_jobs` recorded jobs (no model: durations as recorded): log-normal durations (median 20 min, a heavy
    tail), Poisson arrivals at `load` × the cluster's GPUs, queues drawn by quota, and for 80% of the jobs a
    user time limit of 1.2–5× the true duration."""
    if num_jobs < 1:
        raise ConfigError(f"a synthetic trace needs at least 1 job, got {num_jobs}.", fix="e.g. 100000.")
    rng = random.Random(f"bastion-synthetic-trace/{seed}")
    largest = max(p.gpus for p in inventory.pools)
    sizes = [(g, w) for g, w in TRACE_GPUS if g <= largest]
    mean_gpus = sum(g * w for g, w in sizes) / sum(w for _, w in sizes)
    median_h, sigma = 1 / 3, 1.5
    mean_hours = median_h * math.exp(sigma * sigma / 2)
    rate = load * inventory.gpus / (mean_gpus * mean_hours)  # jobs per hour
    tenants = [t.name for t in inventory.tenants]
    quotas = [max(t.quota_gpus, 1) for t in inventory.tenants]
    now, jobs = 0.0, []
    for i in range(num_jobs):
        gpus = rng.choices([g for g, _ in sizes], weights=[w for _, w in sizes])[0]
        hours = min(rng.lognormvariate(math.log(median_h), sigma), 72.0)
        limit = hours * rng.uniform(1.2, 5.0) if rng.random() < 0.8 else None
        jobs.append(Job(id=f"r{i:06d}", tenant=rng.choices(tenants, weights=quotas)[0], model="", tokens=0.0,
                        global_batch=0, submit_hours=now,
                        recorded=Recording(hours, gpus, time_limit_hours=limit, user=f"u{rng.randrange(50)}")))
        now += rng.expovariate(rate)
    return Workload(name=f"synthetic-trace-{num_jobs}-seed{seed}", jobs=tuple(jobs))
