"""Predicted vs measured, per device: the rows, and the table `bastion demo` and `bastion report` print."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bastion.report.run_files import finite


def fmt_seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f} s"


def fmt_rate(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def fmt_pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def fmt_bytes(value: float | None) -> str:
    return "—" if value is None else f"{value / 2**20:,.1f} MiB"


#: how each row's unit is printed
FORMATS: dict[str, Callable[[float | None], str]] = {"s": fmt_seconds, "tokens/s": fmt_rate, "fraction": fmt_pct,
                                                     "bytes": fmt_bytes}


def comparison_rows(predicted: dict[str, Any], measured: dict[str, Any]) -> list[dict[str, Any]]:
    """[{figure, predicted, measured, ratio, unit}]: step time, tokens/s, MFU, model state of the fullest rank,
    activations and the memory per device. Missing figures are None (a row is kept so tables line up)."""
    rows: list[dict[str, Any]] = []

    def row(name: str, p: Any, m: Any, unit: str) -> None:
        p, m = finite(p), finite(m)
        rows.append({"figure": name, "predicted": p, "measured": m, "ratio": m / p if p and m else None,
                     "unit": unit})

    row("step time", predicted.get("step_time_s"), measured.get("step_time_s"), "s")
    row("tokens/s", predicted.get("tokens_per_s"), measured.get("tokens_per_s"), "tokens/s")
    row("MFU", predicted.get("mfu"), measured.get("mfu"), "fraction")
    memory = predicted.get("memory_bytes") or {}
    ranks = [r for r in measured.get("model_state_bytes_by_rank") or [] if r]
    if ranks:
        worst = max(ranks, key=lambda r: sum(r.get(k, 0) for k in ("params", "grads", "optimizer")))
        for key in ("params", "grads", "optimizer"):
            row(f"{key} (fullest rank)", memory.get(key), worst.get(key), "bytes")
    activations = [a for a in measured.get("activation_bytes_by_rank") or [] if a]
    if activations:
        row("activations (pred: in flight; meas: 1 micro-batch, pp=1)", memory.get("activations"),
            max(activations), "bytes")
    row("peak memory per device", memory.get("total"), measured.get("peak_mem_bytes"), "bytes")
    return rows


def comparison_table(rows: list[dict[str, Any]], title: str = "predicted vs measured (per device)") -> Any:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("figure")
    table.add_column("predicted", justify="right")
    table.add_column("measured", justify="right")
    table.add_column("measured / predicted", justify="right")
    for r in rows:
        fmt = FORMATS[r["unit"]]
        table.add_row(r["figure"], fmt(r["predicted"]), fmt(r["measured"]),
                      "—" if r["ratio"] is None else f"{r['ratio']:.2f}")
    return table


def provenance_lines(predicted: dict[str, Any]) -> list[str]:
    """Where a prediction's figures came from: its step-time interval and the rates (a machine profile, or the
    catalog's datasheet) it was computed with."""
    lines = []
    if predicted.get("step_time_p90_s"):
        lines.append(f"predicted step p10-p90: {fmt_seconds(predicted.get('step_time_p10_s'))} to "
                     f"{fmt_seconds(predicted['step_time_p90_s'])} ({predicted.get('interval', '')})")
    if predicted.get("rates"):
        lines.append(f"rates: {predicted['rates']}")
    return lines


def print_comparison(summary: dict[str, Any], console: Any = None) -> None:
    """The end of `bastion demo`: summary.json's predicted vs measured figures, final loss and hash."""
    from rich.console import Console

    console = console or Console()
    predicted, measured = summary["predicted"], summary["measured"]
    console.print(comparison_table(comparison_rows(predicted, measured)))
    if predicted.get("note"):
        console.print(f"[yellow]prediction:[/] {predicted['note']}")
    for line in provenance_lines(predicted):
        console.print(line)
    console.print(f"final loss {summary['final_loss']:.4f} after {summary['steps']} steps; "
                  f"params_sha256 {str(summary['params_sha256'])[:16]}…")
    console.print("[dim]CPU notes: memory on CPU is the process RSS (includes torch itself); the predictor's "
                  "total counts only tensors.[/]")
