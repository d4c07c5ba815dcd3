"""Cluster simulator: multi-tenant, heterogeneous gang scheduling of training jobs, with sampled failures.

inputs.py (inventory and workload files; recorded jobs) and traces.py (public trace formats as recorded jobs)
→ perf.py (each job's plan and speed per pool, via the planner and `run_cost`; a recorded job's duration scaled
per pool) → engine.py (discrete-event loop) over state.py (queues, pools' nodes and GPUs, running jobs;
placement) with a policy from policies/ (fifo, backfill, fair, sjf, priority, kueue, multifactor, qssf, srtf,
las, gavel, elastic: one file each, registered in POLICIES) and failures.py (sampled failures, Daly checkpoints); metrics.py
defines the scheduling figures and their spread over seeds; synthetic.py draws seeded workloads and recorded
traces; sweep.py reruns them over one parameter (`--sweep`); validation.py compares a replay with the
waits and utilisation its trace recorded.

The names below load on first use, so that `bastion --help` can read the policy registry without the rest.
"""

from __future__ import annotations

from bastion.lazy import lazy_attributes

#: public name -> the module (under bastion.sim) that defines it
_HOMES = {
    "SimConfig": "engine", "SimResult": "engine", "simulate": "engine",
    "Inventory": "inputs", "Job": "inputs", "Pool": "inputs", "Recording": "inputs", "Tenant": "inputs",
    "Workload": "inputs", "load_trace": "traces", "TRACE_FORMATS": "traces",
    "load_inventory": "inputs", "load_workload": "inputs",
    "Perf": "perf", "PlannerPerf": "perf", "resolve": "perf",
    "POLICIES": "policies", "PLACEMENTS": "state",
}

__all__ = sorted(_HOMES)

__getattr__ = lazy_attributes(__name__, _HOMES)
