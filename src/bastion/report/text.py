"""`bastion report` on a terminal: three rich tables (predicted vs measured, where the time went, loss) + timeline."""

from __future__ import annotations

from typing import Any

from bastion.report.comparison import comparison_rows, comparison_table, fmt_pct, provenance_lines


def report_comparison_rows(report: dict[str, Any], summary: dict[str, Any] | None) -> list[dict[str, Any]]:
    """summary.json's measured figures (model state, activations) with the report's steady-step figures on top."""
    measured = {**((summary or {}).get("measured") or {}), **report["measured"]}
    return comparison_rows(report["predicted"], measured)


def time_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(what, value, share of wall time) rows of the failure-cost table."""
    failures = report["failures"]
    parts = failures.get("time_breakdown_s") or {}
    wall = parts.get("wall_s") or 0.0

    def share(value: float | None) -> str:
        return f"{value / wall:.1%}" if wall and value is not None else ""

    rows = [("wall time", f"{wall:.2f} s", "100%")]
    for key, name in (("productive_s", "productive steps (kept in the model)"),
                      ("lost_s", "recomputed steps (work lost to restarts/rollbacks)"),
                      ("recovery_s", "recovery (restart, reload, until the next step starts)"),
                      ("checkpoint_stall_s", "checkpoint saves, blocking part"),
                      ("other_s", "other (start-up, logging, finishing)")):
        value = parts.get(key)
        rows.append((name, "—" if value is None else f"{value:.2f} s", share(value)))
    recomputed = failures["recomputed"]
    causes = ", ".join(f"{n} after {c}s" for c, n in recomputed["by_cause"].items() if n)
    rows += [
        ("restarts / rollbacks / faults injected",
         f"{failures.get('restarts', 0)} / {failures.get('rollbacks', 0)} / {failures.get('faults_injected', 0)}", ""),
        ("steps recomputed", f"{recomputed['count']}" + (f" ({causes})" if causes else ""), ""),
        ("checkpoint saves begun / committed (steps kept on disk)",
         f"{failures['checkpoint_saves']} / {_count(failures.get('checkpoints_committed'))} "
         f"({', '.join(map(str, failures['checkpoints_on_disk'])) or 'none'})", ""),
        ("stragglers (rank at step: × its baseline)", ", ".join(
            f"rank {s['rank']} at step {s['step']}: ×{s['factor']:.1f}" for s in failures.get("stragglers", []))
         or "none", ""),
        ("plan changes (world before → after, from the checkpoint of step)", ", ".join(
            f"{c['from_world']} → {c['to_world']} at step {c['step']}" for c in failures.get("plan_changes", []))
         or "none", ""),
        ("goodput measured (productive / wall)", fmt_pct(failures.get("goodput")), ""),
        ("goodput predicted (reliability model)", fmt_pct(failures["predicted_goodput"].get("goodput")), ""),
    ]
    return rows


def _count(value: int | None) -> str:
    return "not logged" if value is None else f"{value}"


def loss_line(loss: dict[str, Any]) -> str:
    def value(v: float | None) -> str:
        return "—" if v is None else f"{v:.4f}"

    line = (f"loss: first {value(loss['first'])} (step {loss['first_step']}), last {value(loss['last'])} "
            f"(step {loss['last_step']}), min {value(loss['min'])} (step {loss['min_step']})")
    if loss["non_finite_steps"]:
        line += f"; non-finite at steps {loss['non_finite_steps']}"
    for fault in loss["nan_faults"]:
        line += f"; NaN injected at step {fault['step']} (rank {fault['rank']})"
    for rb in loss["rollbacks"]:
        line += (f"; rollback at step {rb['step']} ({rb['reason']}) to step {rb['resumed_from_step']}, "
                 f"skipping samples {rb['skipped_sample_ids']}")
    if loss.get("eval"):
        last = loss["eval"][-1]
        line += (f"; held-out loss {value(last['eval_loss'])} (perplexity {last['perplexity']:.4g}) at step "
                 f"{last['step']}")
    return line


def logs_line(logs: dict[str, Any] | None) -> str | None:
    """Where --tensorboard and --profile wrote (None when neither was asked for)."""
    if not logs or not (logs.get("tensorboard") or logs.get("profile")):
        return None
    parts = [f"TensorBoard: tensorboard --logdir {logs['tensorboard']}"] if logs.get("tensorboard") else []
    if logs.get("profile"):
        parts.append(f"profiler traces (chrome://tracing, ui.perfetto.dev): {', '.join(logs['profile'])}")
    return "; ".join(parts)


def _timeline_line(entry: dict[str, Any]) -> str:
    extra = {k: v for k, v in entry.items() if k not in ("t_s", "event", "after_step")}
    details = ", ".join(f"{k}={v}" for k, v in extra.items())
    return f"  {entry['t_s']:>9.2f} s  after step {entry['after_step']:<5} {entry['event']:<19} {details}"


def print_report(report: dict[str, Any], summary: dict[str, Any] | None, console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console(highlight=False)
    console.print(f"[bold]{report['run_dir']}[/]: {report['model']} on {report['world_size']} device(s) — "
                  f"{report['state']}")
    if report["unreadable_lines"]:
        console.print(f"[yellow]{report['unreadable_lines']} line(s) of metrics.jsonl did not parse "
                      f"(cut short by a kill) and were skipped[/]")
    console.print(comparison_table(report_comparison_rows(report, summary), "1. predicted vs measured (per device)"))
    precision = (report.get("panel") or {}).get("precision") or {}
    if precision and precision["run"] != precision["plan"]:
        console.print(f"[yellow]precision:[/] the plan asks for {precision['plan']}, this run computed in "
                      f"{precision['run']} ({precision['note']}): memory is predicted for {precision['plan']}; a "
                      f"measured / predicted ratio near the ratio of their sizes on params, grads or activations "
                      f"is the precision, not a prediction error.", soft_wrap=True)
    sources = report["sources"]
    console.print(f"[dim]predicted: {sources['predicted']}\nmeasured: {sources['measured']}[/]")
    for line in provenance_lines(report["predicted"]):
        console.print(line, soft_wrap=True)
    if report["predicted"].get("note"):
        console.print(f"[yellow]prediction:[/] {report['predicted']['note']}")
    table = Table(title="2. where the wall time went, and what failures cost")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("share", justify="right")
    for row in time_rows(report):
        table.add_row(*row)
    console.print(table)
    console.print(f"[dim]accounting: {sources['failures']}; recomputed: {sources['recomputed']}\n"
                  f"predicted goodput: {report['failures']['predicted_goodput'].get('note')}[/]")
    if report["timeline"]:
        console.print("[bold]timeline[/] (seconds since the run started)")
        for entry in report["timeline"]:
            console.print(_timeline_line(entry), soft_wrap=True)
    console.print(f"[bold]3.[/] {loss_line(report['loss'])}", soft_wrap=True)
    if logs_line(report.get("logs")):
        console.print(f"logs: {logs_line(report.get('logs'))}", soft_wrap=True)
