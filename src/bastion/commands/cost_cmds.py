"""`bastion cost`: what a training run costs on owned GPUs versus cloud list prices, and its energy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bastion.cli import app
from bastion.commands import options
from bastion.commands.options import number_option
from bastion.outputs import dumps_json
from bastion.reliability.policies import recommend


@app.command("cost")
def cost_command(
    model: options.Model,
    cluster: options.Cluster,
    tokens: options.Tokens,
    plan: Annotated[Path | None, typer.Option("--plan", help="ParallelPlan file; without it the planner picks "
                                                             "the best plan.")] = None,
    global_batch: options.GlobalBatch = None,
    seq_len: options.SeqLen = None,
    capex_per_gpu: Annotated[float | None, number_option("--capex-per-gpu", help="All-in purchase price per GPU, "
                                                         "USD.", low=0, high=1e9,
                                                         fix="give the all-in purchase price per GPU, e.g. "
                                                             "--capex-per-gpu 45000.")] = None,
    years: Annotated[float, number_option("--years", help="Depreciation period of owned GPUs, years.", above=0,
                                          high=100)] = 5.0,
    utilisation: Annotated[float, number_option("--utilisation", help="Busy fraction of owned GPU-hours.",
                                                above=0, high=1)] = 0.8,
    pue: Annotated[float, number_option("--pue", help="Data-centre power usage effectiveness.", low=1,
                                        high=10)] = 1.3,
    electricity: Annotated[float, number_option("--electricity", help="USD per kWh.", low=0, high=1e6)] = 0.0825,
    mtbf_hours: options.MtbfHours = None,
    software: options.Software = "bastion",
    framework: options.Framework = None,
    framework_version: options.FrameworkVersion = None,
    # ---- recovery policies (reliability/policies.py) ----
    spares: Annotated[int, number_option("--spares", help="Hot spare nodes the `spares` recovery policy allocates.",
                                         integer=True, low=0, high=10**5)] = 1,
    requeue_wait_hours: Annotated[float, number_option("--requeue-wait-hours", help="Wait for a replacement node "
                                                       "after a failure (a requeue); an assumption, state yours.",
                                                       low=0, high=24 * 365)] = 1.0,
    repair_hours: Annotated[float, number_option("--repair-hours", help="Until a failed node is repaired and back "
                                                 "in service; an assumption, state yours.", above=0,
                                                 high=24 * 365)] = 4.0,
    as_json: options.AsJson = False,
) -> None:
    """Predict wall time (with failures and checkpoints), energy, and cost owned vs cloud for a token budget."""
    from bastion.cost import OnPremAssumptions, run_cost
    from bastion.errors import ConfigError
    from bastion.predict.frameworks import command_software
    from bastion.specs import ParallelPlan, load_cluster, load_model

    stack, predict_options, _ = command_software(software, framework, framework_version)
    software = stack.name
    if plan is not None and global_batch is not None:
        raise ConfigError("--plan and --global-batch were both given; the plan file holds its own global batch.",
                          fix="drop --global-batch to cost the plan file, or drop --plan to let bastion plan "
                              "the run at that batch.")
    spec = load_model(model, seq_len=seq_len)
    target = load_cluster(cluster)
    if plan is not None:
        chosen = ParallelPlan.load(plan)
        chosen.validate(spec, target, spec.seq_len)
    else:
        if global_batch is None:
            raise ConfigError("Without --plan, bastion plans the run itself and needs --global-batch.",
                              fix="pass --global-batch N, or --plan PLAN.json from `bastion plan --save`.")
        from bastion.planner.search import PlanRequest, search

        result = search(PlanRequest(model=spec, cluster=target, global_batch=global_batch,
                                    seq_len=spec.seq_len, top_k=1), options=predict_options)
        if not result.plans:
            raise ConfigError(f"No plan of {spec.name} fits on {target.name}.",
                              fix="give a larger cluster, a smaller model or another --global-batch.",
                              hint=f"bastion plan --model {model} --cluster {cluster} "
                                   f"--global-batch {global_batch}   # says what would")
        chosen = result.plans[0].plan
    onprem = OnPremAssumptions(capex_per_gpu_usd=capex_per_gpu, amortisation_years=years,
                               utilisation=utilisation, pue=pue, electricity_usd_per_kwh=electricity)
    cost = run_cost(spec, target, chosen, tokens, seq_len=spec.seq_len, onprem=onprem, mtbf_hours=mtbf_hours,
                    options=predict_options)
    policies = _recovery_policies(cost, target, chosen, spares, requeue_wait_hours, repair_hours)
    if as_json:
        from bastion.predict.estimate import estimate
        from bastion.predict.frameworks import framework_releases
        from bastion.predict.intervals import step_interval

        p10, p90 = step_interval(estimate(spec, target, chosen, spec.seq_len, options=predict_options), spec,
                                 framework is None or framework in framework_releases())
        print(dumps_json({**cost.to_dict(), "predicted_p10_s": p10, "predicted_p90_s": p90, "plan": chosen.to_dict(),
                          "software": software, "recovery_policies": [p.to_dict() for p in policies],
                          "recommended_policy": recommend(policies).policy}, indent=2))
        return
    _print_cost(cost, chosen)
    _print_policies(policies, requeue_wait_hours, repair_hours)


def _recovery_policies(cost, cluster, plan, spares: int, requeue_wait_hours: float, repair_hours: float):
    """Each recovery policy's expected goodput for this run (reliability/policies.py)."""
    import math

    from bastion.errors import ConfigError
    from bastion.reliability.policies import DEFAULT_RESTART_S, PolicyInputs, policy_goodputs

    if spares < 0 or not all(math.isfinite(v) and v >= 0 for v in (requeue_wait_hours, repair_hours)):
        raise ConfigError(f"--spares, --requeue-wait-hours and --repair-hours must be >= 0, got {spares}, "
                          f"{requeue_wait_hours:g} and {repair_hours:g}.",
                          fix="e.g. --spares 1 --requeue-wait-hours 1 --repair-hours 4.")
    nodes = max(1, math.ceil(plan.num_gpus / cluster.gpus_per_node))
    return policy_goodputs(PolicyInputs(
        mtbf_s=cost.mtbf_hours * 3600.0, nodes=nodes, step_s=cost.step_time_s,
        checkpoint_stall_s=cost.checkpoint_stall_s, checkpoint_interval_s=cost.checkpoint_interval_s,
        restart_s=DEFAULT_RESTART_S, requeue_wait_s=requeue_wait_hours * 3600.0, repair_s=repair_hours * 3600.0,
        spares=spares, replicas=plan.dp))


def _print_policies(policies, requeue_wait_hours: float, repair_hours: float) -> None:
    from rich.console import Console
    from rich.table import Table

    from bastion.reliability.policies import DEFAULT_RESTART_S

    best = recommend(policies)
    table = Table(title="recovery policies (expected goodput: kept work / allocated GPU time)")
    for col in ("policy", "goodput", "cost per failure", "nodes allocated", "how"):
        table.add_column(col, justify="right" if col in ("goodput", "cost per failure", "nodes allocated")
                         else "left")
    for p in policies:
        mark = " ←" if p is best else ""
        table.add_row(p.policy + mark, f"{p.goodput:.1%}" if p.applicable else "—",
                      f"{p.cost_per_failure_s / 60:,.1f} min" if p.applicable else "—", str(p.allocated_nodes),
                      p.note)
    console = Console()
    console.print(table)
    console.print(f"  · recommended: [bold]{best.policy}[/]; requeue wait {requeue_wait_hours:g} h and repair "
                  f"{repair_hours:g} h are assumptions (--requeue-wait-hours, --repair-hours), restart "
                  f"{DEFAULT_RESTART_S / 60:.0f} min (Kokolis et al. 2024: 5–20 min). `bastion train "
                  f"--on-failure auto` runs the best of those its launch can (spares: `bastion launch --on slurm "
                  f"--spare-nodes K`; replica-drop: --fault-tolerance torchft).",
                  soft_wrap=True)


def _print_cost(cost, plan) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{cost.model}[/] on {cost.cluster}, {cost.tokens:.3g} tokens — plan "
                  f"dp{plan.dp} tp{plan.tp} pp{plan.pp} cp{plan.cp} zero{plan.zero_stage}")
    console.print(f"step {cost.step_time_s:.3f} s, {cost.tokens_per_s:,.0f} tokens/s, MFU {cost.mfu:.1%}; "
                  f"compute {cost.compute_hours:,.0f} h; expected goodput {cost.expected_goodput:.1%} "
                  f"(MTBF {cost.mtbf_hours:.1f} h) → wall {cost.wall_hours:,.0f} h = {cost.wall_hours / 24:,.1f} days; "
                  f"{cost.gpu_hours:,.0f} GPU-h; energy {cost.energy_mwh:,.0f} MWh")
    table = Table(title="cost of the run")
    for col in ("option", "pricing", "$/GPU-h", "total $", "as of"):
        table.add_column(col, justify="right" if col in ("$/GPU-h", "total $") else "left")
    if cost.onprem_usd is not None:
        table.add_row("owned (amortised)", "capital+facility+energy",
                      f"{cost.onprem_usd_per_gpu_hour['total']:.2f}", f"{cost.onprem_usd:,.0f}", "")
    for row in cost.cloud:
        table.add_row(f"{row['provider']} {row['offering']}", row["pricing"], f"{row['usd_per_gpu_hour']:.2f}",
                      f"{row['usd']:,.0f}", row["as_of"])
    console.print(table)
    for note in cost.assumptions:
        console.print(f"  · {note}", soft_wrap=True)
