"""`bastion simulate`: a month of jobs on a shared, heterogeneous cluster under one or more scheduling policies."""

from __future__ import annotations

from dataclasses import replace
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
    cluster: str = typer.Option(..., "--cluster", "-c", help="Inventory file ([[pool]] and [[tenant]] tables), or "
                                "as elsewhere a cluster preset, ACCEL:N (e.g. h100:256), cluster file or machine "
                                "profile (PROFILE.toml, a saved NAME, ACCEL:N@PROFILE): one pool, one tenant. "
                                "example:sim and example:trace are the inventories shipped with bastion."),
    workload: str = typer.Option(None, "--workload", "-w", help="Workload file: [[job]] tables (example:sim: the "
                                 "one shipped with bastion)."),
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
    # ---- recorded traces, queues, seeds (issue 17) ----
    trace: str = typer.Option(None, "--trace", help="Instead of --workload: a recorded trace (CSV) to replay "
                              "(example:trace: the one shipped with bastion)."),
    trace_format: str = typer.Option("generic", "--trace-format", help="generic (submit_time,duration_s,gpus,queue,"
                                     "user,time_limit_s,final_state,accelerator), pai (Alibaba PAI 2020 task "
                                     "table) or helios (Helios / Acme cluster log)."),
    queues: str = typer.Option(None, "--queues", help="per-queue (a blocked head stalls only its tenant's queue) "
                               "or global (one queue); default: per-queue with --trace, else global."),
    seeds: Annotated[int, number_option("--seeds", help="Run seeds SEED..SEED+N-1; print each figure's mean ± 95% "
                                        "confidence interval over them.", integer=True, low=1, high=1000)] = 1,
    sweep: str = typer.Option(None, "--sweep", help="NAME=V1,V2,...: rerun each policy under each value of "
                              "cluster_size (GPUs; pools scaled alike), fair_half_life (hours) or launch_latency_s; "
                              "a table of one row per value and policy (with --json, also an SVG chart)."),
    html: str = typer.Option(None, "--html", help="With --sweep: also write the sweep's charts (wait, "
                             "utilisation by value, one line per policy) and table to this HTML page."),
) -> None:
    """Simulate gang-scheduled training jobs on a multi-pool, multi-tenant cluster: waits, utilisation, failures."""
    from bastion.errors import ConfigError
    from bastion.sim import PlannerPerf, SimConfig, load_workload, resolve, simulate
    from bastion.sim.synthetic import synthetic_workload

    if sum(source is not None for source in (workload, synthetic, trace)) != 1:
        raise ConfigError("Give the jobs either as a file or as a synthetic count or a trace: one of them, not both "
                          "and not none.",
                          fix="pass --workload JOBS.toml, --synthetic N [--seed S] or --trace FILE.",
                          hint="bastion simulate --cluster example:sim --workload example:sim")
    if html is not None and sweep is None:
        raise ConfigError("--html draws a sweep's charts: it needs --sweep.",
                          fix="add --sweep NAME=V1,V2,... (e.g. cluster_size=64,128,256), or leave --html out.")
    if html is not None:  # before the sweep runs, and never over an input file
        from pathlib import Path

        from bastion.outputs import check_output_file

        check_output_file(Path(html), "the sweep's HTML page", fix="give --html a new page, e.g. --html sweep.html.",
                          keep=[name for name in (cluster, workload, trace) if name is not None])
    if queues not in (None, "global", "per-queue"):
        raise ConfigError(f"Unknown --queues '{queues}'.", fix="use global or per-queue.")
    per_queue = queues == "per-queue" if queues is not None else trace is not None
    configs = [SimConfig(policy=p, placement=placement, seed=seed, failures=not no_failures,
                         fair_half_life_hours=half_life, per_queue=per_queue)
               for p in dict.fromkeys(policy)]
    from bastion.examples import resolve_example

    inventory = simulation_inventory(resolve_example(cluster, "inventory", "--cluster"))
    workload = workload and resolve_example(workload, "workload", "--workload")
    trace = trace and resolve_example(trace, "trace", "--trace")
    trace_notes: list[str] = []
    if trace is not None:
        from bastion.sim.traces import load_trace

        loaded = load_trace(trace, trace_format, inventory)
        inventory, jobs = loaded.inventory, loaded.workload
        trace_notes = [*loaded.notes, *(f"left out {n} rows: {why}" for why, n in loaded.skipped.items())]
    elif workload is not None:
        jobs = load_workload(workload, inventory)
    if sweep is not None:
        from bastion.sim.sweep import parse_sweep

        if synthetic is not None:
            jobs = synthetic_workload(inventory, synthetic, seed=seed, span_hours=span_hours)
        _run_sweep(parse_sweep(sweep), inventory, jobs, configs, as_json, html)
        return
    perf = PlannerPerf()
    runs: dict[str, list] = {config.policy: [] for config in configs}
    for run_seed in range(seed, seed + seeds):
        if synthetic is not None:
            jobs = synthetic_workload(inventory, synthetic, seed=run_seed, span_hours=span_hours)
        if run_seed == seed or synthetic is not None:
            resolved = resolve(jobs.jobs, inventory, perf)
        for config in configs:
            runs[config.policy].append(simulate(resolved, inventory, replace(config, seed=run_seed)))
    results = [r[0] for r in runs.values()]
    if synthetic is not None:  # the first seed's workload, whose runs are shown
        jobs = synthetic_workload(inventory, synthetic, seed=seed, span_hours=span_hours)
    spread = {policy: seed_spread(r) for policy, r in runs.items()} if seeds > 1 else {}
    if as_json:
        print(dumps_json({"cluster": inventory.name, "workload": jobs.name, "jobs": len(jobs.jobs),
                          "pools": [{"name": p.name, "accelerator": p.accelerator, "nodes": p.nodes,
                                     "gpus_per_node": p.gpus_per_node} for p in inventory.pools],
                          "planner_searches": perf.searches, "trace_notes": trace_notes,
                          "runs": [r.to_dict() for r in results],
                          "seeds": {"first": seed, "count": seeds, "mean_ci95": spread}}, indent=2))
        return
    _print(inventory, jobs, results, jobs_shown)
    _print_scheduling(results, spread, seeds)
    from rich.console import Console

    for note in trace_notes:
        Console().print(f"  · trace: {note}", soft_wrap=True)


def simulation_inventory(cluster: str):
    """`--cluster` as `simulate` reads it: an inventory file ([[pool]] tables; a file with neither those nor a
    cluster file's `accelerator` is read as an inventory, and its errors say so), else what `--cluster` means in
    every other command (a preset, ACCEL:N, a cluster file) as an inventory of one pool and one tenant."""
    from pathlib import Path

    from bastion.sim.inputs import Inventory, Pool, Tenant, load_inventory
    from bastion.specs._files import read_mapping
    from bastion.specs.hardware import load_cluster

    path = Path(cluster)
    if path.suffix in (".toml", ".json") or path.is_file():
        data = read_mapping(path)
        if "pool" in data or "accelerator" not in data:
            return load_inventory(path)
    spec = load_cluster(cluster)
    pool = Pool(name=spec.accelerator.name, accelerator=spec.accelerator.name, nodes=spec.num_nodes,
                gpus_per_node=spec.gpus_per_node, cluster=spec)
    return Inventory(name=spec.name, pools=(pool,),
                     tenants=(Tenant(name="default", quota_gpus=pool.gpus, borrow=True),))


def _run_sweep(sweep, inventory, jobs, configs, as_json: bool, html: str | None = None) -> None:
    """`--sweep`: every policy under every value of one parameter, the first seed's jobs; a table or JSON."""
    from bastion.sim import PlannerPerf, resolve, simulate
    from bastion.sim.sweep import sweep_chart, sweep_row

    perf = PlannerPerf()
    rows = []
    for value in sweep.values:
        swept, _ = sweep.apply(inventory, configs[0], value)
        resolved = resolve(jobs.jobs, swept, perf)
        for config in configs:
            rows.append(sweep_row(value, simulate(resolved, swept, sweep.apply(inventory, config, value)[1]),
                                  swept.gpus))
    title = f"{jobs.name} ({len(jobs.jobs)} jobs) on {inventory.name}, by {sweep.parameter}"
    if html is not None:
        from pathlib import Path

        from bastion.outputs import write_error
        from bastion.sim.sweep import sweep_page

        page = Path(html)
        try:
            page.parent.mkdir(parents=True, exist_ok=True)
            page.write_text(sweep_page(title, sweep.parameter, rows), encoding="utf-8")
        except OSError as exc:
            raise write_error(exc, page, "the sweep's HTML page", "give --html a path you can write to.") from exc
    if as_json:
        print(dumps_json({"cluster": inventory.name, "workload": jobs.name, "jobs": len(jobs.jobs),
                          "sweep": {"parameter": sweep.parameter, "values": list(sweep.values), "rows": rows,
                                    "chart_svg": sweep_chart(sweep.parameter, rows)}}, indent=2))
        return
    from rich.console import Console

    columns = (sweep.parameter.replace("_", "\n", 1), "policy", "GPUs", "util\nheld", "wait\nmean h", "wait\np90 h",
               "Jain", "lost\nGPU-h", "not\nrun")
    table = [(f"{row['value']:g}", row["policy"], f"{row['gpus']}", f"{row['window_utilisation']:.1%}",
              f"{row['mean_wait_h']:,.2f}", f"{row['p90_wait_h']:,.2f}", f"{row['jain_fairness']:.3f}",
              f"{row['interrupted_lost_gpu_hours']:,.0f}", f"{row['unschedulable']}")
             for row in rows]
    Console().print(_figures_table(title, columns, table))
    if html is not None:
        Console().print(f"  → {html}", soft_wrap=True)  # a path stays whole, whatever the width


#: the figures `--seeds` gives a mean and confidence interval of (ClusterResult fields)
SPREAD_FIGURES = ("window_utilisation", "window_used_utilisation", "utilisation", "mean_jct_h",
                  "mean_bounded_slowdown", "mean_wait_h", "p50_wait_h", "p90_wait_h", "p99_wait_h", "jain_fairness",
                  "goodput", "makespan_h")


def seed_spread(results: list) -> dict[str, tuple[float, float]]:
    """figure -> (mean, 95% CI half-width) over one policy's runs, one per seed."""
    from bastion.sim.metrics import mean_ci

    return {name: mean_ci(getattr(r.cluster, name) for r in results) for name in SPREAD_FIGURES}


def _figures_table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]):
    """A table of one row per policy that fits 80 columns (what a pipe gets): no vertical rules, and names,
    headers and figures never cut, whatever the terminal's width."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD)
    for i, col in enumerate(columns):
        width = max([*map(len, col.split("\n")), *(len(row[i]) for row in rows)])
        table.add_column(col, justify="left" if col == "policy" else "right", no_wrap=True, min_width=width)
    for row in rows:
        table.add_row(*row)
    return table


def _print_scheduling(results, spread: dict, seeds: int) -> None:
    from rich.console import Console

    console = Console()
    columns = ("policy", "util\nheld", "util\nused", "JCT\nh", "slow-\ndown", "wait\np50 h", "wait\np90 h",
               "wait\np99 h", "Jain")
    rows = [(r.policy, f"{r.cluster.window_utilisation:.1%}", f"{r.cluster.window_used_utilisation:.1%}",
             f"{r.cluster.mean_jct_h:,.2f}", f"{r.cluster.mean_bounded_slowdown:,.2f}", f"{r.cluster.p50_wait_h:,.2f}",
             f"{r.cluster.p90_wait_h:,.2f}", f"{r.cluster.p99_wait_h:,.2f}", f"{r.cluster.jain_fairness:.3f}")
            for r in results]
    console.print(_figures_table("scheduling (utilisation in the window from first to last submission)", columns,
                                 rows))
    for r in results:
        services = r.cluster.services
        if services is not None:
            objective = (f", wait objective met by {services.slo_met} of {services.with_slo}" if services.with_slo
                         else "")
            console.print(f"  inference services ({r.policy}, left out of the job figures): {services.services}, "
                          f"{services.gpu_hours:,.0f} GPU-h, wait mean {services.mean_wait_h:,.2f} h, max "
                          f"{services.max_wait_h:,.2f} h{objective}", soft_wrap=True)
    recorded = results[0].cluster
    if recorded.recorded_mean_wait_h is not None:
        console.print(f"  recorded waits (the trace's own, under the scheduler it ran): mean "
                      f"{recorded.recorded_mean_wait_h:,.2f} h, p50 {recorded.recorded_p50_wait_h:,.2f} h, p90 "
                      f"{recorded.recorded_p90_wait_h:,.2f} h; simulated minus recorded:", soft_wrap=True)
        for r in results:
            c = r.cluster
            console.print(f"    {r.policy}: mean {c.mean_wait_h - c.recorded_mean_wait_h:+,.2f} h, p50 "
                          f"{c.p50_wait_h - c.recorded_p50_wait_h:+,.2f} h, p90 "
                          f"{c.p90_wait_h - c.recorded_p90_wait_h:+,.2f} h")
    if spread:
        columns = ("policy", "util %", "JCT h", "slowdown", "wait h", "p90 h", "Jain")
        names = ("mean_jct_h", "mean_bounded_slowdown", "mean_wait_h", "p90_wait_h")
        rows = [(policy, "{:.1f}±{:.1f}".format(*(100 * v for v in figures["window_utilisation"])),
                 *("{:,.1f}±{:,.1f}".format(*figures[name]) for name in names),
                 "{:.2f}±{:.2f}".format(*figures["jain_fairness"]))
                for policy, figures in spread.items()]
        console.print(_figures_table(f"mean ± 95% CI over {seeds} seeds", columns, rows))


def _print(inventory, workload, results, jobs_shown: int) -> None:
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
        columns = ("policy", "jobs", "span\nh", "util", "goodput", "wait\nh", "p90\nh", "fails", "lost\nGPU-h",
                   "MWh")
        rows = [(r.policy, f"{r.cluster.jobs}", f"{r.cluster.makespan_h:,.1f}", f"{r.cluster.utilisation:.1%}",
                 f"{r.cluster.goodput:.1%}", f"{r.cluster.mean_wait_h:,.1f}", f"{r.cluster.p90_wait_h:,.1f}",
                 f"{r.cluster.failures}", f"{r.cluster.lost_gpu_hours:,.0f}", f"{r.cluster.energy_kwh / 1000:,.1f}")
                for r in results]
        console.print(_figures_table(f"policies compared (placement {first.placement})", columns, rows))
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
