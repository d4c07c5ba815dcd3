"""`bastion simulate`: a month of jobs on a shared, heterogeneous cluster under one or more scheduling policies."""

from __future__ import annotations

from typing import Annotated

import typer

from bastion.cli import app
from bastion.commands import options
from bastion.commands.options import number_option
from bastion.outputs import dumps_json
from bastion.sim.policies import POLICIES

#: synthetic jobs one simulation draws (a month of a large shared cluster is a few thousand)
MAX_SYNTHETIC_JOBS = 20_000


@app.command("simulate")
def simulate_command(
    cluster: str = typer.Option(..., "--cluster", "-c", help="Inventory file: [[pool]] and [[tenant]] tables."),
    workload: str = typer.Option(None, "--workload", "-w", help="Workload file: [[job]] tables."),
    synthetic: Annotated[int | None, number_option("--synthetic", help="Instead of --workload: N seeded synthetic "
                                                   "jobs.", integer=True, low=1, high=MAX_SYNTHETIC_JOBS,
                                                   fix="e.g. --synthetic 200.")] = None,
    seed: options.Seed = 0,
    span_hours: Annotated[float, number_option("--span-hours", help="Synthetic arrivals spread over this many "
                                               "hours.", above=0, high=24 * 365 * 10,
                                               fix="e.g. --span-hours 720 (a month).")] = 720.0,
    policy: list[str] = typer.Option(["backfill"], "--policy", "-p",
                                     help=f"{POLICIES.prose()}; repeat to compare policies."),
    placement: str = typer.Option("fastest", "--placement", help="fastest (earliest predicted finish) or first-fit."),
    no_failures: bool = typer.Option(False, "--no-failures", help="Do not sample failures or checkpoint stalls."),
    half_life: Annotated[float, number_option("--fair-half-life", help="Hours after which `fair` counts a GPU-hour "
                                              "of past usage half (Slurm's default: 168); inf never forgets.",
                                              above=0, allow_inf=True)] = 168.0,
    jobs_shown: Annotated[int, number_option("--jobs", help="Job rows to print for a single policy (0: none).",
                                             integer=True, low=0, high=10**6)] = 15,
    as_json: options.AsJson = False,
) -> None:
    """Simulate gang-scheduled training jobs on a multi-pool, multi-tenant cluster: waits, utilisation, failures."""
    from bastion.errors import ConfigError
    from bastion.sim import PlannerPerf, SimConfig, load_inventory, load_workload, resolve, simulate
    from bastion.sim.synthetic import synthetic_workload

    if (workload is None) == (synthetic is None):
        raise ConfigError("Give the jobs either as a file or as a synthetic count, not both and not neither.",
                          fix="pass --workload JOBS.toml or --synthetic N [--seed S].",
                          hint="bastion simulate --cluster examples/sim/cluster.toml "
                               "--workload examples/sim/workload.toml")
    configs = [SimConfig(policy=p, placement=placement, seed=seed, failures=not no_failures,
                         fair_half_life_hours=half_life)
               for p in dict.fromkeys(policy)]
    inventory = load_inventory(cluster)
    jobs = (load_workload(workload, inventory) if workload is not None
            else synthetic_workload(inventory, synthetic, seed=seed, span_hours=span_hours))
    perf = PlannerPerf()
    resolved = resolve(jobs.jobs, inventory, perf)
    results = [simulate(resolved, inventory, config) for config in configs]
    if as_json:
        print(dumps_json({"cluster": inventory.name, "workload": jobs.name, "jobs": len(jobs.jobs),
                          "pools": [{"name": p.name, "accelerator": p.accelerator, "nodes": p.nodes,
                                     "gpus_per_node": p.gpus_per_node} for p in inventory.pools],
                          "planner_searches": perf.searches,
                          "runs": [r.to_dict() for r in results]}, indent=2))
        return
    _print(inventory, jobs, results, jobs_shown)


def _print(inventory, workload, results, jobs_shown: int) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console()
    pools = ", ".join(f"{p.name}: {p.nodes}×{p.gpus_per_node} {p.accelerator}" for p in inventory.pools)
    console.print(f"[bold]{workload.name}[/] ({len(workload.jobs)} jobs) on {inventory.name} — {pools}")
    first = results[0]
    for row in first.unschedulable:
        reasons = "; ".join(f"{pool}: {why}" for pool, why in row["reasons"].items())
        console.print(f"  [yellow]cannot run[/] {row['id']} ({first.policy}): {reasons}", soft_wrap=True)
    if len(results) > 1:
        # ten columns: no vertical rules, so that they fit 80 columns (what a pipe gets)
        table = Table(title=f"policies compared (placement {first.placement})", box=box.SIMPLE_HEAD)
        columns = ("policy", "jobs", "span\nh", "util", "goodput", "wait\nh", "p90\nh", "fails", "lost\nGPU-h",
                   "MWh")
        rows = [(r.policy, f"{r.cluster.jobs}", f"{r.cluster.makespan_h:,.1f}", f"{r.cluster.utilisation:.1%}",
                 f"{r.cluster.goodput:.1%}", f"{r.cluster.mean_wait_h:,.1f}", f"{r.cluster.p90_wait_h:,.1f}",
                 f"{r.cluster.failures}", f"{r.cluster.lost_gpu_hours:,.0f}", f"{r.cluster.energy_kwh / 1000:,.1f}")
                for r in results]
        for i, col in enumerate(columns):
            # names, headers and figures are never cut, whatever the terminal's width (80 columns when piped)
            width = max([*map(len, col.split("\n")), *(len(row[i]) for row in rows)])
            table.add_column(col, justify="left" if col == "policy" else "right", no_wrap=True, min_width=width)
        for row in rows:
            table.add_row(*row)
        console.print(table)
    else:
        c = first.cluster
        console.print(f"policy {first.policy}, placement {first.placement}: makespan {c.makespan_h:,.1f} h, "
                      f"utilisation {c.utilisation:.1%}, goodput {c.goodput:.2%}, mean wait {c.mean_wait_h:,.1f} h "
                      f"(p90 {c.p90_wait_h:,.1f} h), {c.failures} failures losing {c.lost_gpu_hours:,.0f} GPU-h, "
                      f"energy {c.energy_kwh / 1000:,.1f} MWh")
        if jobs_shown:
            table = Table(title=f"jobs (first {min(jobs_shown, len(first.jobs))} of {len(first.jobs)} by start)")
            for col in ("job", "tenant", "pool", "GPUs", "plan", "submit h", "start h", "end h", "wait h",
                        "failures", "lost h"):
                table.add_column(col, justify="right" if col.endswith(("h", "GPUs", "failures")) else "left")
            for j in sorted(first.jobs, key=lambda j: (j.start_h, j.id))[:jobs_shown]:
                table.add_row(j.id, j.tenant, j.pool, f"{j.gpus}", j.plan, f"{j.submit_h:,.1f}", f"{j.start_h:,.1f}",
                              f"{j.end_h:,.1f}", f"{j.wait_h:,.1f}", f"{j.failures}", f"{j.lost_h:.2f}")
            console.print(table)
    for r in results:
        table = Table(title=f"tenants ({r.policy})")
        for col in ("tenant", "quota GPUs", "jobs", "GPU-h used", "of quota GPU-h", "mean wait h", "p90 wait h"):
            table.add_column(col, justify="left" if col == "tenant" else "right")
        for t in r.tenants:
            share = t.gpu_hours / t.quota_gpu_hours if t.quota_gpu_hours else 0.0
            table.add_row(t.name, f"{t.quota_gpus}", f"{t.jobs}", f"{t.gpu_hours:,.0f}", f"{share:.0%}",
                          f"{t.mean_wait_h:,.1f}", f"{t.p90_wait_h:,.1f}")
        console.print(table)
        pools_line = ", ".join(f"{p.name} {p.utilisation:.0%} ({p.jobs} jobs)" for p in r.pools)
        console.print(f"  pools ({r.policy}): {pools_line}")
    for note in first.notes:
        console.print(f"  · {note}", soft_wrap=True)
