"""Cluster simulator: multi-tenant, heterogeneous gang scheduling of training jobs, with sampled failures.

inputs.py (inventory and workload files) → perf.py (each job's plan and speed per pool, via the planner and
`run_cost`) → engine.py (discrete-event loop) over state.py (queue, pools, running jobs; placement) with a
policy from policies/ (fifo, backfill, fair: one file each, registered in POLICIES) and failures.py (sampled
failures, Daly checkpoints); synthetic.py draws seeded workloads.

The names below load on first use, so that `bastion --help` can read the policy registry without the rest.
"""

from __future__ import annotations

from bastion.lazy import lazy_attributes

#: public name -> the module (under bastion.sim) that defines it
_HOMES = {
    "SimConfig": "engine", "SimResult": "engine", "simulate": "engine",
    "Inventory": "inputs", "Job": "inputs", "Pool": "inputs", "Tenant": "inputs", "Workload": "inputs",
    "load_inventory": "inputs", "load_workload": "inputs",
    "Perf": "perf", "PlannerPerf": "perf", "resolve": "perf",
    "POLICIES": "policies", "PLACEMENTS": "state",
}

__all__ = sorted(_HOMES)

__getattr__ = lazy_attributes(__name__, _HOMES)
