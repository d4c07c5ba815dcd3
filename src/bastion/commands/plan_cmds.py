"""`bastion plan`: search every hybrid-parallel plan and show the best, why it wins, and what was rejected."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer

from bastion.cli import app
from bastion.commands import options
from bastion.commands.options import number_option
from bastion.errors import ConfigError, did_you_mean
from bastion.numbers import MAX_DEVICES, checked_number
from bastion.outputs import dumps_json
from bastion.planner.objectives import DEFAULT_OBJECTIVE, OBJECTIVES

_PRECISIONS = ("fp32", "bf16", "fp16", "fp8")


def parse_gpus(text: str, gpus_per_node: int) -> tuple[int, ...]:
    """`N` or `MIN..MAX`."""
    from bastion.planner.space import gpu_counts_between

    try:
        parts = [int(part) for part in text.split("..", 1)]
    except ValueError as exc:
        raise ConfigError(f"--gpus '{text}' is not a device count.",
                          fix="write N (e.g. --gpus 512) or MIN..MAX (e.g. --gpus 64..1024).") from exc
    for part in parts:
        checked_number(part, "--gpus", integer=True, low=1, high=MAX_DEVICES, fix="e.g. --gpus 512 or 64..1024.")
    if len(parts) == 2:
        return gpu_counts_between(parts[0], parts[1], gpus_per_node)
    return (parts[0],)


def parse_precisions(text: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    for name in names:
        if name not in _PRECISIONS:
            raise ConfigError(f"Unknown precision '{name}'.{did_you_mean(name, _PRECISIONS)}",
                              fix=f"give a comma-separated list of {', '.join(_PRECISIONS)} (e.g. bf16,fp8).")
    if not names:
        raise ConfigError("--precision is empty.", fix="e.g. --precision bf16 or --precision bf16,fp8.")
    return names


def parse_pins(items: list[str]) -> dict[str, Any]:
    """`--fix FIELD=VALUE` entries, typed like the ParallelPlan field."""
    from bastion.planner.space import PINNABLE
    from bastion.specs._files import coerce
    from bastion.specs.plan import ParallelPlan

    types = {f.name: f.type for f in fields(ParallelPlan)}
    pins: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not value.strip():
            raise ConfigError(f"--fix '{item}' is not FIELD=VALUE.", fix="e.g. --fix tp=8 --fix recompute=none.")
        if name not in PINNABLE:
            raise ConfigError(f"--fix cannot pin '{name}'.{did_you_mean(name, PINNABLE)}",
                              fix=f"pin one of: {', '.join(PINNABLE)}.")
        pins[name] = coerce(value.strip(), types[name], name, "--fix")
        _check_pin(name, pins[name])
    return pins


def _check_pin(name: str, value: Any) -> None:
    """A pinned value the plan field can hold, so a bad pin is named instead of emptying the search."""
    from bastion.specs.plan import RECOMPUTE_MODES
    from bastion.specs.schedules import schedule_names

    choices = {"pp_schedule": schedule_names(), "recompute": RECOMPUTE_MODES, "precision": _PRECISIONS,
               "zero_stage": (0, 1, 2, 3)}.get(name)
    if choices is not None and value not in choices:
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        raise ConfigError(f"--fix {name}={value} is not a possible value.{hint}",
                          fix=f"use one of: {', '.join(str(c) for c in choices)}.")
    if choices is None and isinstance(value, int) and not isinstance(value, bool) and value < 1:
        raise ConfigError(f"--fix {name}={value}: {name} must be >= 1.", fix=f"e.g. --fix {name}=2.")


@app.command("plan")
def plan_command(
    model: options.Model,
    cluster: options.Cluster,
    global_batch: options.GlobalBatch,
    seq_len: options.SeqLen = None,
    gpus: str = typer.Option("", "--gpus", help="Device count N, or a range MIN..MAX to search several sizes "
                                                "(default: the cluster's size)."),
    top: Annotated[int, number_option("--top", "-k", help="How many plans to show.", integer=True, low=1,
                                      high=1000)] = 5,
    objective: str = typer.Option(DEFAULT_OBJECTIVE, "--objective", help=f"{OBJECTIVES.prose()}."),
    precision: str = typer.Option("bf16", "--precision",
                                  help="Matmul precisions allowed, comma-separated (e.g. bf16,fp8)."),
    fix: list[str] = typer.Option([], "--fix", help="Pin a plan field, e.g. --fix tp=8 (repeatable)."),
    save: Path | None = typer.Option(None, "--save", help="Write the winning plan here (JSON or .toml)."),
    software: options.Software = "bastion",
    framework: options.Framework = None,
    framework_version: options.FrameworkVersion = None,
    as_json: options.AsJson = False,
    exhaustive: bool = typer.Option(False, "--no-prune", help="Predict every plan, even those the memory and "
                                                              "step-time bounds settle (for checking; slow)."),
) -> None:
    """Search every hybrid-parallel plan (dp·tp·pp·cp, ZeRO, micro-batch, schedule, recompute, sp,
    precision) and rank the ones that fit."""
    from bastion.planner.advice import nothing_fits
    from bastion.planner.search import PlanRequest, default_estimate, search
    from bastion.planner.space import SearchSpace
    from bastion.predict.frameworks import command_software, framework_releases
    from bastion.predict.intervals import interval_note
    from bastion.specs.hardware import load_cluster
    from bastion.specs.model import load_model

    stack, predict_options, _ = command_software(software, framework, framework_version)
    software = stack.name
    if save is not None:
        from bastion.specs.plan import ParallelPlan
        from bastion.specs.profile import find_saved_profile

        # before the search, not after it; never over the model or cluster file (or profile, by path or by the
        # name it was saved under) it reads
        profile = cluster.rpartition("@")[2]
        ParallelPlan.check_save_path(save, keep=(model, profile, *filter(None, [find_saved_profile(profile)])))
    model_spec = load_model(model)
    cluster_spec = load_cluster(cluster)
    seq = seq_len or model_spec.seq_len
    space = SearchSpace(precisions=parse_precisions(precision), pins=parse_pins(fix))
    counts = parse_gpus(gpus, cluster_spec.gpus_per_node) if gpus else ()
    known = framework is None or framework in framework_releases()
    request = PlanRequest(model=model_spec.with_seq_len(seq), cluster=cluster_spec, global_batch=global_batch,
                          seq_len=seq, gpu_counts=counts, top_k=top, objective=objective, space=space,
                          prune=not exhaustive, software_known=known)
    result = search(request, options=predict_options)
    if not result.plans:
        raise nothing_fits(result, estimate=default_estimate(predict_options))
    if save is not None:
        result.plans[0].plan.save(save)
    if as_json:
        print(dumps_json({**result_json(result), "software": software, "rates": cluster_spec.rates_source},
                         indent=2))
    else:
        print_result(result, save)
        print(f"predicted for software stack '{software}' (`bastion software` lists them; --software to change)")
        print(f"rates: {cluster_spec.rates_source}")
        best = result.plans[0]
        print(f"winner's step p10-p90: {best.p10_s:.4g}-{best.p90_s:.4g} s "
              f"({interval_note(best.estimate, request.model, known)})")


def result_json(result: Any) -> dict[str, Any]:
    from bastion.runtime.preflight import runtime_status

    model = result.request.model
    goodput = result.request.objective == "goodput"
    return {"evaluated": result.evaluated, "feasible": result.feasible, "seconds": round(result.seconds, 4),
            "objective": result.request.objective, "rejected": dict(result.rejected.most_common()),
            "plans": [{**p.to_dict(), "runtime": runtime_status(model, p.plan),
                       **({"recovery_policies": _recovery_policies(p)} if goodput else {})} for p in result.plans]}


def _recovery_policies(plan: Any) -> dict[str, Any]:
    """Under --objective goodput: each recovery policy's predicted goodput for the plan, and the one recommended
    (what `bastion train --on-failure auto` would weigh; planner/objectives/goodput.py)."""
    from bastion.planner.objectives.goodput import policies_of
    from bastion.reliability.policies import recommend

    policies = list(policies_of(plan))
    return {"recommended": recommend(policies).policy, "policies": [p.to_dict() for p in policies]}


def _policies_line(plan: Any) -> str:
    found = _recovery_policies(plan)
    shown = ", ".join(f"{p['policy']} {100 * p['goodput']:.1f}%" if p["applicable"] else f"{p['policy']} n/a"
                      for p in found["policies"])
    return f"{shown} → {found['recommended']}"


def _not_executed(result: Any) -> list[tuple[int, Any]]:
    """(rank, refusal) of the shown plans `bastion train` refuses (the predictor models more than it runs)."""
    from bastion.runtime.preflight import runtime_refusal

    found = [(i, runtime_refusal(result.request.model, p.plan)) for i, p in enumerate(result.plans, 1)]
    return [(i, refusal) for i, refusal in found if refusal is not None]


def _group_refusals(refused: dict[int, Any]) -> dict[str, list[int]]:
    """The plans' refusals, one line per distinct problem (with its fix)."""
    grouped: dict[str, list[int]] = {}
    for rank, refusal in refused.items():
        line = refusal.problem + (f" To fix: {refusal.fix}" if refusal.fix else "")
        grouped.setdefault(line, []).append(rank)
    return grouped


def print_result(result: Any, saved: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table

    from bastion.planner.explain import describe, expert_placement_line, explain

    req = result.request
    console = Console(highlight=False)
    counts = req.counts
    where = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}..{counts[-1]} ({len(counts)} sizes)"
    table = Table(title=f"{req.model.name} on {req.cluster.accelerator.name} × {where}, global batch "
                        f"{req.global_batch}, seq {req.seq_len} — best by {req.objective}")
    for col in ("#", "plan", "GPUs", "step s", "p10-p90 s", "tokens/s", "MFU", "mem GiB"):
        table.add_column(col, justify="left" if col == "plan" else "right")
    refused = dict(_not_executed(result))
    for i, p in enumerate(result.plans, 1):
        table.add_row(f"{i}*" if i in refused else str(i), describe(p.plan), str(p.num_gpus), f"{p.step_time_s:.4g}",
                      f"{p.p10_s:.4g}-{p.p90_s:.4g}", f"{p.tokens_per_s:,.0f}", f"{100 * p.mfu:.1f}%",
                      f"{p.memory_gib:.1f}")
    console.print(table)
    for problem, ranks in _group_refusals(refused).items():
        shown = ", ".join(f"#{i}" for i in ranks)
        console.print(f"[yellow]* predicted, but `bastion train` does not execute {shown}:[/] {problem}",
                      soft_wrap=True)
    best = result.plans[0]
    terms = ", ".join(f"{k} {v:.4g}" for k, v in best.time_breakdown().items() if v)
    mem = ", ".join(f"{k} {v / 2**30:.2f}" for k, v in best.memory_breakdown().items() if v)
    console.print(f"[bold]winner time (s):[/] {terms}", soft_wrap=True)
    console.print(f"[bold]winner memory (GiB/device):[/] {mem}", soft_wrap=True)
    if req.objective == "goodput":
        console.print(f"[bold]winner's recovery policies (predicted goodput; default failure figures):[/] "
                      f"{_policies_line(best)}", soft_wrap=True)
    placement = expert_placement_line(best)
    if placement:
        console.print(f"[bold]winner {placement}[/]", soft_wrap=True)
    if result.runner_up is not None:
        console.print(f"[bold]why #1 beats #2:[/] {explain(best, result.runner_up)}", soft_wrap=True)
    alt = result.alternative
    if alt is not None and alt is not result.runner_up and alt.plan != result.runner_up.plan:
        console.print(f"[bold]best with other degrees:[/] {describe(alt.plan)} — {explain(best, alt, 'that plan')}",
                      soft_wrap=True)
    census = ", ".join(f"{n:,} {r}" for r, n in result.rejected.most_common() if n) or "none"
    console.print(f"[bold]searched[/] {result.evaluated:,} plans in {result.seconds:.2f} s "
                  f"({result.predicted:,} predicted, the rest settled by rules and provable memory and step-time "
                  f"bounds): {result.feasible:,} of the predicted fit; rejected: {census}.", soft_wrap=True)
    if saved is not None and 1 in refused:
        console.print(f"[bold]saved[/] the winner to {saved}  ([yellow]`bastion train` refuses it, see *[/]; "
                      f"--fix pins a plan it executes)", soft_wrap=True)
    elif saved is not None:
        console.print(f"[bold]saved[/] the winner to {saved}  (run it: bastion train --plan {saved} ...)")
