"""`bastion report --html OUT.html`: one self-contained page (inline CSS and SVG; no scripts, nothing fetched).

The page is well-formed XML as well as HTML, so tests (and other tools) can read it with xml.etree.
"""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import escape

from bastion.report.analysis import kept_steps
from bastion.report.comparison import FORMATS
from bastion.report.svg import Level, Marker, Series, line_chart
from bastion.report.text import loss_line, report_comparison_rows, time_rows

_STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 60em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.note { color: #666; font-size: 0.9em; }
svg { display: block; margin: 1em 0; max-width: 100%; height: auto; }
"""


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def failure_markers(report: dict[str, Any]) -> list[Marker]:
    """A vertical line at the last completed step before each restart, resume and rollback (for a run seeded
    with --resume-from, which has no step of its own before it: at the step it resumed from)."""
    out = []
    for entry in report["timeline"]:
        if entry["event"] in ("restart", "resume", "rollback"):
            label = f"{entry['event']} → step {entry.get('resumed_from_step', '?')}"
            out.append(Marker(entry["after_step"] or entry.get("resumed_from_step") or 0, label))
    return out


def charts(report: dict[str, Any], records: list[dict[str, Any]]) -> list[str]:
    """Loss by step and step time by step (the kept record of every step), failures marked."""
    kept = kept_steps(records)
    markers = failure_markers(report)
    series = [Series("loss", [(r["step"], r["loss"]) for r in kept])]
    if report["loss"].get("eval"):
        series.append(Series("held-out loss", [(e["step"], e["eval_loss"]) for e in report["loss"]["eval"]]))
    loss = line_chart(series, title="loss by step", x_label="step", y_label="loss", markers=markers)
    predicted = report["predicted"].get("step_time_s")
    levels = [Level(predicted, f"predicted {predicted:.3g} s")] if predicted else []
    measured = report["measured"].get("step_time_s")
    if measured:
        levels.append(Level(measured, f"measured median {measured:.3g} s", color="#2ca02c"))
    times = line_chart([Series("step time (s)", [(r["step"], r["step_time_s"]) for r in kept])],
                       title="step time by step", x_label="step", y_label="seconds", levels=levels, markers=markers)
    return [loss, times]


def render_html(report: dict[str, Any], summary: dict[str, Any] | None, records: list[dict[str, Any]]) -> str:
    """The report page. `records` are the current run's metrics records (for the charts)."""
    comparison = [[r["figure"], FORMATS[r["unit"]](r["predicted"]), FORMATS[r["unit"]](r["measured"]),
                   "—" if r["ratio"] is None else f"{r['ratio']:.2f}"]
                  for r in report_comparison_rows(report, summary)]
    sources = report["sources"]
    timeline = [[f"{e['t_s']:.2f}", e["event"], str(e["after_step"]),
                 ", ".join(f"{k}={v}" for k, v in e.items() if k not in ("t_s", "event", "after_step"))]
                for e in report["timeline"]]
    loss_chart, time_chart = charts(report, records)
    title = f"bastion report: {report['run_dir']}"
    body = [
        f"<h1>{escape(title)}</h1>",
        f"<p>{escape(str(report['model']))} on {escape(str(report['world_size']))} device(s) — "
        f"{escape(report['state'])}</p>",
        "<h2>1. Predicted vs measured (per device)</h2>",
        _table(["figure", "predicted", "measured", "measured / predicted"], comparison),
        f"<p class=\"note\">predicted: {escape(sources['predicted'])}<br/>measured: {escape(sources['measured'])}</p>",
        time_chart,
        "<h2>2. Where the wall time went, and what failures cost</h2>",
        _table(["figure", "value", "share"], [list(r) for r in time_rows(report)]),
        f"<p class=\"note\">accounting: {escape(sources['failures'])}; recomputed: {escape(sources['recomputed'])}"
        f"<br/>predicted goodput: {escape(str(report['failures']['predicted_goodput'].get('note')))}</p>",
        "<h3>Timeline</h3>",
        _table(["seconds since start", "event", "after step", "details"], timeline) if timeline
        else "<p>No restarts, rollbacks or faults.</p>",
        "<h2>3. Loss</h2>",
        f"<p>{escape(loss_line(report['loss']))}</p>",
        loss_chart,
    ]
    logs = report.get("logs") or {}
    links = ([f"<a href=\"{escape(logs['tensorboard'])}\">TensorBoard event files</a>"] if logs.get("tensorboard")
             else []) + [f"<a href=\"{escape(path)}\">{escape(path)}</a>" for path in logs.get("profile", [])]
    if links:
        body.append(f"<p>Logs: {', '.join(links)}</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>"
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n" + "\n".join(body)
            + "\n</body></html>\n")
