"""`bastion estimate` (memory and step time of one plan) and `bastion validate` (the predictor against published
training runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from bastion.cli import app
from bastion.commands import options
from bastion.outputs import dumps_json

GIB = 2**30


#: the plan fields a framework recipe may fill (recipes.recipe_values names); otherwise their ParallelPlan default
_RECIPE_FIELDS = ("micro_batch", "vpp", "recompute", "zero_stage", "sequence_parallel")


def _fill_from_recipe(given: dict[str, Any], recipe: Any) -> list[str]:
    """Fill the plan fields the flags left unstated from the framework's recipe (`recipe`: recipes.RecipeValues,
    None without --framework); say per field where its value came from."""
    import dataclasses

    from bastion.predict.recipes import PRACTITIONER
    from bastion.specs.plan import ParallelPlan

    plan_defaults = {f.name: f.default for f in dataclasses.fields(ParallelPlan)}
    notes: list[str] = []
    defaults = []
    for name in _RECIPE_FIELDS:
        default = plan_defaults[name]
        if name in given:
            continue
        taken = recipe.values.get(name) if recipe is not None else None
        if name == "sequence_parallel" and given.get("tp", 1) == 1:
            taken = None  # sequence parallelism splits the TP group's activations: off without TP
        if name == "vpp" and taken is not None and "pp_schedule" in given:
            notes.append(f"vpp: not given; the recipe's {taken.value} not taken (--schedule was given)")
            taken = None
        if name == "micro_batch" and taken is not None and "global_batch" in given \
                and given["global_batch"] % (taken.value * given["dp"]):
            notes.append(f"micro_batch: not given; the recipe's {taken.value} does not divide the global batch "
                         f"{given['global_batch']} over dp {given['dp']}, not taken")
            taken = None
        if taken is not None:
            given[name] = taken.value
            notes.append(f"{name}: not given; {taken.value}, {taken.why}")
        elif name == "micro_batch":
            notes.append(f"micro_batch: not given; {PRACTITIONER['micro_batch']}")
        else:
            defaults.append(f"{name} {default}")
    if recipe is not None:
        notes.extend(f"vpp: not given; {note}: the recipe's interleaving not taken" for note in recipe.skipped)
    if defaults:
        notes.append(f"not given, the plan's defaults: {', '.join(defaults)} (no framework recipe sets them)")
    return notes


def _build_plan(plan_file: Path | None, num_gpus: int, flags: dict[str, Any],
                recipe: Any = None) -> tuple[Any, list[str]]:
    """The plan from a file, or from flags with dp (and the global batch) filled in and the settings they leave
    unstated taken from the framework's `recipe` (recipes.RecipeValues) or the plan's defaults; says what it
    inferred."""
    from bastion.errors import PlanError
    from bastion.specs.plan import ParallelPlan
    from bastion.specs.schedules import schedule_for_vpp

    given = {k: v for k, v in flags.items() if v is not None}
    if plan_file is not None:
        if given:
            raise PlanError(f"--plan and plan flags ({', '.join('--' + k for k in given)}) were both given.",
                            fix="use either --plan PLAN.json or the flags, not both.", reason="bad plan file")
        return ParallelPlan.load(plan_file), []
    notes: list[str] = []  # the flags' ranges were checked as they were parsed (commands/options.py)
    tp, pp, cp = given.get("tp", 1), given.get("pp", 1), given.get("cp", 1)
    if "dp" not in given:
        if num_gpus % (tp * pp * cp):
            raise PlanError(f"tp × pp × cp = {tp * pp * cp} does not divide the cluster's {num_gpus} devices, so "
                            f"dp cannot fill it.", fix="choose degrees whose product divides the device count, "
                            "or give --dp and a cluster of the matching size.", reason="degrees != devices")
        given["dp"] = num_gpus // (tp * pp * cp)
        notes.append(f"dp = {given['dp']} fills the cluster ({num_gpus} / (tp·pp·cp))")
    notes.extend(_fill_from_recipe(given, recipe))
    vpp = given.get("vpp", 1)
    if "pp_schedule" not in given and vpp > 1:
        given["pp_schedule"] = schedule_for_vpp(vpp)
    if "global_batch" not in given:
        micro = given.get("micro_batch", 1)
        per_replica = 4 * pp * vpp if pp > 1 else 1  # enough micro-batches to keep the 1F1B bubble small
        given["global_batch"] = micro * given["dp"] * per_replica
        notes.append(f"global_batch = {given['global_batch']} (not given: micro_batch × dp"
                     + (" × 4·pp·vpp micro-batches)" if pp > 1 else ")"))
    return ParallelPlan(**given), notes


def _gib(x: float) -> str:
    return f"{x / GIB:,.2f}"


def _print_estimate(est: Any, notes: list[str], tokens: float | None, interval: tuple[float, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    plan = est.plan
    console.print(f"[bold]{est.model}[/] on [bold]{est.cluster}[/], seq_len {est.seq_len}: dp {plan.dp} tp {plan.tp} "
                  f"pp {plan.pp} cp {plan.cp}, zero {plan.zero_stage}, micro-batch {plan.micro_batch}, global batch "
                  f"{plan.global_batch} ({plan.grad_accumulation} micro-batches), {plan.pp_schedule}"
                  f"{f' vpp {plan.vpp}' if plan.vpp > 1 else ''}, recompute {plan.recompute}"
                  f"{f' ({plan.recompute_layers} layers per chunk)' if plan.recompute_layers else ''}, "
                  f"{f'{plan.activation_offload} layers per chunk offloaded, ' if plan.activation_offload else ''}"
                  f"{'SP, ' if plan.sequence_parallel else ''}{plan.precision}")
    mem = Table(title="memory per device (worst pipeline stage)")
    mem.add_column("part")
    mem.add_column("GiB", justify="right")
    for name, value in est.memory.to_dict().items():
        mem.add_row(name if name != "total" else "[bold]total[/]", _gib(value))
    verdict = "[green]fits[/]" if est.fits else "[bold red]does NOT fit[/]"
    mem.caption = f"{verdict} in {est.hbm_bytes / GIB:,.1f} GiB"
    console.print(mem)
    if plan.pp > 1:
        stages = Table(title="memory by pipeline stage (GiB)")
        for col in ("stage", "states", "activations", "logits", "total"):
            stages.add_column(col, justify="right")
        for i, m in enumerate(est.memory_by_stage):
            stages.add_row(str(i), _gib(m.params + m.grads + m.optimizer), _gib(m.activations), _gib(m.logits),
                           _gib(m.total))
        console.print(stages)
    tt = Table(title="time per optimizer step (critical path)")
    tt.add_column("part")
    tt.add_column("seconds", justify="right")
    tt.add_column("share", justify="right")
    for name, value in est.time.to_dict().items():
        if name == "step":
            continue
        tt.add_row(name, f"{value:.4g}", f"{100 * value / est.step_time_s:.1f}%")
    tt.add_row("[bold]step[/]", f"{est.step_time_s:.4g}", "100%")
    tt.add_row("step p10-p90", f"{interval[0]:.4g}-{interval[1]:.4g}", "")
    console.print(tt)
    console.print(f"tokens/s {est.tokens_per_s:,.0f}   MFU {100 * est.mfu:.1f}%   HFU {100 * est.hfu:.1f}%   "
                  f"model FLOPs/step {est.model_flops_per_step:.3e}")
    if tokens:
        days = est.time_to_train_s(tokens) / 86400
        console.print(f"time to train {tokens:.3g} tokens: {days:,.2f} days")
    for note in notes + est.assumptions:
        console.print(f"[dim]· {note}[/]", soft_wrap=True)


@app.command("estimate")
def estimate_command(
    model: options.Model,
    cluster: options.Cluster,
    plan: options.PlanFile = None,
    dp: options.Dp = None,
    tp: options.Tp = None,
    pp: options.Pp = None,
    cp: options.Cp = None,
    ep: options.Ep = None,
    etp: options.Etp = None,
    zero: options.Zero = None,
    micro_batch: options.MicroBatch = None,
    global_batch: options.GlobalBatch = None,
    schedule: options.Schedule = None,
    vpp: options.Vpp = None,
    recompute: options.Recompute = None,
    sp: options.SequenceParallel = None,
    precision: options.Precision = None,
    seq_len: options.SeqLen = None,
    tokens: options.Tokens = None,
    software: options.Software = "bastion",
    framework: options.Framework = None,
    framework_version: options.FrameworkVersion = None,
    as_json: options.AsJson = False,
) -> None:
    """Predict memory per device and time per step of one parallel plan."""
    from bastion.predict import estimate
    from bastion.predict.frameworks import command_software, framework_releases
    from bastion.predict.intervals import interval_note, step_interval
    from bastion.specs import load_cluster, load_model

    _, predict_options, software_notes = command_software(software, framework, framework_version)
    model_spec = load_model(model, seq_len)
    cluster_spec = load_cluster(cluster)
    flags = {"dp": dp, "tp": tp, "pp": pp, "cp": cp, "ep": ep, "etp": etp, "zero_stage": zero,
             "micro_batch": micro_batch,
             "global_batch": global_batch, "pp_schedule": schedule, "vpp": vpp, "recompute": recompute,
             "sequence_parallel": sp, "precision": precision}
    recipe = None
    if framework is not None:
        from bastion.predict.frameworks import SoftwareFacts
        from bastion.predict.recipes import recipe_values

        recipe = recipe_values(SoftwareFacts(framework=framework, version=framework_version or ""), model_spec,
                               pp or 1)
    parallel_plan, notes = _build_plan(plan, cluster_spec.num_gpus, flags, recipe)
    est = estimate(model_spec, cluster_spec, parallel_plan, seq_len, options=predict_options)
    from bastion.runtime.preflight import runtime_status

    runtime = runtime_status(model_spec, parallel_plan)
    if not runtime["executes"]:  # predicted, but a user must not be handed it for `train` unwarned
        notes.insert(0, f"`bastion train` does not execute this plan: {runtime['refusal']} To fix: {runtime['fix']}")
    notes.extend(software_notes)
    known = framework is None or framework in framework_releases()
    p10, p90 = step_interval(est, model_spec, known)
    notes.append(interval_note(est, model_spec, known))
    if as_json:
        out = est.to_dict()
        out["predicted_p10_s"], out["predicted_p90_s"] = p10, p90
        out["assumptions"] = notes + out["assumptions"]
        out["runtime"] = runtime
        if tokens:
            out["tokens"] = tokens
            out["time_to_train_s"] = est.time_to_train_s(tokens)
        print(dumps_json(out, indent=2))
        return
    _print_estimate(est, notes, tokens, (p10, p90))


def _case_file(path: Path, packaged: dict[str, Path]) -> Path:
    """A case file by path, or one shipped with bastion by name (from any directory); a bare word that is neither
    lists the names."""
    if path.exists() or str(path) not in packaged and (path.suffix or len(path.parts) > 1):
        return path  # validate_cases says what is wrong with a path
    if str(path) in packaged:
        return packaged[str(path)]
    from bastion.errors import ConfigError, did_you_mean

    raise ConfigError(f"No case file '{path}', and no case set of that name ships with bastion."
                      f"{did_you_mean(str(path), packaged)}",
                      fix=f"give a CSV case file's path, or one of: {', '.join(packaged)}.")


@app.command("validate")
def validate_command(
    cases: list[Path] | None = typer.Argument(None, help="Case file(s) (CSV, see predict/data/CASES_SCHEMA.md), "
                                                         "or `public`: the published runs shipped with bastion "
                                                         "(the default)."),
    software: str | None = typer.Option(None, "--software", help="Predict every row with this software stack "
                                        "(`bastion software`); default: each row's `software` column, else its "
                                        "framework and release (`framework`, `framework_version`)."),
    holdout: str | None = typer.Option(None, "--holdout", help="`family`: leave-one-family-out — each "
                                       "publication family's interval calibrated on the other families, with "
                                       "and without its software facts, and which families are in-sample."),
    as_json: options.AsJson = False,
) -> None:
    """Predict the iteration time of every published run in a case file and report the errors."""
    from bastion.predict.validate import PUBLIC_CASES, ValidationReport, validate_cases

    paths = [_case_file(path, {"public": PUBLIC_CASES}) for path in cases] if cases else [PUBLIC_CASES]
    if holdout is not None:
        _holdout_command(paths, holdout, software, as_json)
        return
    reports = [validate_cases(path, software=software) for path in paths]
    report = ValidationReport(cases=[c for r in reports for c in r.cases],
                              skipped=[s for r in reports for s in r.skipped])
    if not report.cases:
        from bastion.errors import ConfigError

        names = ", ".join(str(path) for path in paths)
        reasons = "; ".join(f"{row['case_id']}: {row['reason']}" for row in report.skipped[:3])
        raise ConfigError(f"No row of {names} could be predicted ({len(report.skipped)} skipped"
                          f"{': ' + reasons if reasons else ''}{' …' if len(report.skipped) > 3 else ''}).",
                          fix="correct the rows (predict/data/CASES_SCHEMA.md lists the columns), or give "
                              "another case file.")
    if as_json:
        print(dumps_json(report.to_dict(), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"predicted vs published iteration time ({', '.join(map(str, paths))})")
    for col in ("case", "software", "published s", "predicted s", "p10-p90 s", "error"):
        table.add_column(col, justify="left" if col == "software" else "right")
    for c in report.cases:
        err = c.rel_error
        style = "green" if abs(err) <= 0.10 else "yellow" if abs(err) <= 0.25 else "red"
        table.add_row(c.case_id, c.software, f"{c.published_s:.4g}", f"{c.predicted_s:.4g}",
                      f"{c.p10_s:.3g}-{c.p90_s:.3g}", f"[{style}]{100 * err:+.1f}%[/]")
    console.print(table)
    s = report.summary()
    if s["predicted"]:
        console.print(f"[bold]{s['predicted']} predicted[/], {s['skipped']} skipped of {s['n']}: |error| median "
                      f"{100 * s['median_abs_rel_error']:.1f}%, p90 {100 * s['p90_abs_rel_error']:.1f}%, max "
                      f"{100 * s['max_abs_rel_error']:.1f}%")
    for skipped in report.skipped:
        console.print(f"[yellow]skipped {skipped['case_id']}[/]: {skipped['reason']}", soft_wrap=True)
    console.print("[dim]assumptions per case: `bastion validate --json`; intervals are calibrated on the "
                  "project's case files (in-sample for them): `--holdout family` holds each family out[/]")


def _holdout_command(paths: list[Path], holdout: str, software: str | None, as_json: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    from bastion.errors import ConfigError
    from bastion.predict.holdout import leave_one_family_out
    from bastion.predict.intervals import KNOWN, STRATA, UNKNOWN

    if holdout != "family":
        raise ConfigError(f"Unknown --holdout '{holdout}'.", fix="use --holdout family (publication families, "
                                                                 "the case file's source_group).")
    if software:
        raise ConfigError("--holdout and --software were both given.",
                          fix="drop --software: a held-out family is predicted from its own software facts.")
    report = leave_one_family_out(paths)
    if as_json:
        print(dumps_json(report.to_dict(), indent=2))
        return
    console = Console()
    table = Table(title="leave-one-family-out (interval calibrated on the other families)")
    for col in ("family", "rows", "seen", "|err| p50", "p90", "covered", "width", "no sw: p50", "covered "):
        table.add_column(col, justify="left" if col in ("family", "seen") else "right", no_wrap=True)
    pct = "{:.1%}".format
    for name, f in report.families().items():
        k, u = f[KNOWN], f[UNKNOWN]
        table.add_row(name, str(k["n"]), "yes" if f["in_sample"] else "no", pct(k["median_abs_rel_error"]),
                      pct(k["p90_abs_rel_error"]), pct(k["coverage"]), pct(k["median_interval_width"]),
                      pct(u["median_abs_rel_error"]), pct(u["coverage"]))
    console.print(table)
    summary = report.summary()
    for scope in ("all_families", "out_of_sample_families_only"):
        for stratum in STRATA:
            e = summary[scope][stratum]
            line = (f"{e['n']} rows: |error| median {pct(e['median_abs_rel_error'])}, p90 "
                    f"{pct(e['p90_abs_rel_error'])}; interval coverage {pct(e['coverage'])}, median width "
                    f"{pct(e['median_interval_width'])}") if e["n"] else "no rows"
            console.print(f"[bold]{scope.replace('_', ' ')}[/] ({stratum}): {line}")
    console.print("[dim]seen = in-sample: a stack or mapping entry was chosen after seeing the family "
                  "(predict/data/holdout.toml says why); no sw = its software facts blanked[/]")
