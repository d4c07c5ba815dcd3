"""Cluster simulator: multi-tenant, heterogeneous gang scheduling of training jobs, with sampled failures.

inputs.py (inventory and workload files) → perf.py (each job's plan and speed per pool, via the planner and
`run_cost`) → engine.py (discrete-event loop) with policies.py (fifo, backfill, fair; fastest / first-fit
placement) and failures.py (sampled failures, Daly checkpoints); synthetic.py draws seeded workloads.
"""

from bastion.sim.engine import SimConfig, SimResult, simulate
from bastion.sim.inputs import Inventory, Job, Pool, Tenant, Workload, load_inventory, load_workload
from bastion.sim.perf import Perf, PlannerPerf, resolve
from bastion.sim.policies import PLACEMENTS, POLICIES

__all__ = ["PLACEMENTS", "POLICIES", "Inventory", "Job", "Perf", "PlannerPerf", "Pool", "SimConfig", "SimResult",
           "Tenant", "Workload", "load_inventory", "load_workload", "resolve", "simulate"]
