"""`bastion report --html OUT.html`: one self-contained page (inline CSS, SVG and a small script; nothing fetched).

One run: the run panel (what ran), predicted vs measured, a chart for every series the run logs (loss raw and
smoothed, step time, tokens/s and MFU against the prediction, memory against the prediction, gradient norm,
learning rate), the wall-clock timeline (report/wallclock.py) and the failure accounting. Several runs: one
comparison page (figures side by side, series overlaid). The charts read without the script (and print); the
script (report/interactive.py) adds hover read-outs and zoom.

A chart is a function (report, records, summary) -> SVG string or None (nothing to draw): STEP_CHARTS lists them
in page order, so a new figure is one function and one entry. The page is well-formed XML as well as HTML, so
tests (and other tools) can read it with xml.etree.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from bastion.report.analysis import kept_steps
from bastion.report.comparison import FORMATS, fmt_pct, fmt_seconds
from bastion.report.interactive import SCRIPT
from bastion.report.run_files import finite
from bastion.report.svg import PALETTE, Level, Marker, Series, Span, bar_chart, gantt_chart, line_chart
from bastion.report.text import loss_line, report_comparison_rows, time_rows
from bastion.report.wallclock import ROWS

_STYLE = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 75em; padding: 0 1em; color: #222;
       overflow-wrap: break-word; }
h1, pre, table.panel td:last-child, table.events td:last-child { overflow-wrap: anywhere; }
h1 { font-size: 1.5em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0 1em; max-width: 100%; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; vertical-align: top; }
th:first-child, td:first-child { text-align: left; }
table.panel td, table.side td, table.events td:last-child { text-align: left; }
.note { color: #555; font-size: 0.9em; }
.warn { background: #fff4e0; border-left: 4px solid #ff7f0e; padding: 0.4em 0.8em; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 30em), 1fr)); gap: 1em; }
svg.chart { display: block; width: 100%; height: auto; user-select: none; }
svg.chart text { fill: #222; }
svg.chart text.marker-label { fill: currentColor; }
pre { white-space: pre-wrap; font-size: 0.85em; background: #f7f7f7; padding: 0.6em; }
.tooltip { position: fixed; pointer-events: none; background: rgba(255,255,255,0.95); border: 1px solid #999;
           padding: 0.3em 0.5em; font-size: 12px; max-width: 24em; z-index: 10; }
@media print { .tooltip, .hint { display: none !important; } body { max-width: none; margin: 0; }
               svg.chart, table { break-inside: avoid; } details { display: block; } }
"""

#: colours of the timeline rows (report/wallclock.py ROWS)
ROW_COLORS = {"steps kept": "#1f77b4", "steps redone": "#ff7f0e", "recovery": "#d62728",
              "checkpoint stall": "#9467bd", "checkpoint write": "#c5b0d5", "events": "#444444"}
EVENT_COLORS = {"fault": "#d62728", "hang": "#d62728", "preempted": "#8c564b", "restart": "#9467bd",
                "resume": "#9467bd", "rollback": "#ff7f0e", "checkpoint_corrupt": "#8c564b"}
HINT = "<p class=\"note hint\">Hover a chart for its values; drag across it to zoom (charts with the same axis " \
       "follow), double-click to reset.</p>"


def _table(header: list[str] | None, rows: list[list[str]], css: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header or [])
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    cls = f' class="{css}"' if css else ""
    thead = f"<thead><tr>{head}</tr></thead>" if header else ""
    return f"<table{cls}>{thead}<tbody>{body}</tbody></table>"


def failure_markers(report: dict[str, Any]) -> list[Marker]:
    """A vertical line at the last completed step before each restart, resume and rollback (for a run seeded
    with --resume-from, which has no step of its own before it: at the step it resumed from)."""
    out = []
    for entry in report["timeline"]:
        if entry["event"] in ("restart", "resume", "rollback"):
            label = f"{entry['event']} → step {entry.get('resumed_from_step', '?')}"
            out.append(Marker(entry["after_step"] or entry.get("resumed_from_step") or 0, label,
                              EVENT_COLORS.get(entry["event"], "#d62728")))
    return out


def smoothed(points: list[tuple[float, float]], window: int) -> list[tuple[float, float]]:
    """Trailing mean over the last `window` finite values (the first ones average what there is)."""
    out, recent = [], []
    for x, y in points:
        if finite(y) is None:
            continue
        recent = [*recent[-(window - 1):], y] if window > 1 else [y]
        out.append((x, sum(recent) / len(recent)))
    return out


def smoothing_window(count: int) -> int:
    """About a twentieth of the run, at least 2 and at most 50 steps."""
    return max(2, min(50, count // 20))


def _step_series(records: list[dict[str, Any]], key: str, scale: float = 1.0) -> list[tuple[float, float]]:
    return [(r["step"], r[key] * scale) for r in kept_steps(records) if finite(r.get(key)) is not None]


def _precision_label(report: dict[str, Any]) -> str:
    prec = report["panel"]["precision"]
    return "" if prec["run"] == prec["plan"] else f" ({prec['plan']} plan; this run computed in {prec['run']})"


def _memory_unit(values: list[float]) -> tuple[float, str]:
    return (2**30, "GiB") if max(values, default=0) >= 2**30 else (2**20, "MiB")


# ---- one chart each: (report, records, summary) -> SVG or None ------------------------------------------------
def loss_chart(report: dict[str, Any], records: list[dict[str, Any]], summary: dict[str, Any] | None) -> str:
    raw = _step_series(records, "loss")
    window = smoothing_window(len(raw))
    series = [Series("loss", raw, color="#1f77b4", faint=True),
              Series(f"loss, mean of {window} steps", smoothed(raw, window), color="#1f77b4")]
    if report["loss"].get("eval"):  # --eval-every: the held-out split's loss
        series.append(Series("held-out loss", [(e["step"], e["eval_loss"]) for e in report["loss"]["eval"]],
                             color="#d62728"))
    return line_chart(series, title="loss by step", x_label="step", y_label="loss", markers=failure_markers(report))


def step_time_chart(report: dict[str, Any], records: list[dict[str, Any]], summary: dict[str, Any] | None) -> str:
    predicted, measured = report["predicted"].get("step_time_s"), report["measured"].get("step_time_s")
    levels = [Level(predicted, f"predicted {predicted:.3g} s")] if predicted else []
    if measured:
        levels.append(Level(measured, f"measured median {measured:.3g} s", color="#2ca02c"))
    return line_chart([Series("step time (s)", _step_series(records, "step_time_s"))], title="step time by step",
                      x_label="step", y_label="seconds", levels=levels, markers=failure_markers(report))


def throughput_chart(report: dict[str, Any], records: list[dict[str, Any]], summary: dict[str, Any] | None) -> str:
    predicted = report["predicted"].get("tokens_per_s")
    levels = [Level(predicted, f"predicted {predicted:,.0f} tokens/s")] if predicted else []
    return line_chart([Series("tokens/s", _step_series(records, "tokens_per_s"), color="#2ca02c")],
                      title="throughput by step", x_label="step", y_label="tokens/s", levels=levels,
                      markers=failure_markers(report))


def mfu_chart(report: dict[str, Any], records: list[dict[str, Any]], summary: dict[str, Any] | None) -> str | None:
    points = _step_series(records, "mfu", 100.0)
    if not points:
        return None
    predicted = report["predicted"].get("mfu")
    levels = [Level(predicted * 100, f"predicted {predicted:.2%}")] if predicted else []
    return line_chart([Series("MFU (%)", points, color="#9467bd")], title="MFU by step", x_label="step",
                      y_label="% of peak", levels=levels, markers=failure_markers(report))


def memory_chart(report: dict[str, Any], records: list[dict[str, Any]], summary: dict[str, Any] | None) -> str:
    measured = _step_series(records, "mem_gib", 2**30)
    total = (report["predicted"].get("memory_bytes") or {}).get("total")
    scale, unit = _memory_unit([y for _, y in measured] + ([total] if total else []))
    kind = report["measured"].get("peak_mem_kind") or "rank 0"
    levels = [Level(total / scale, f"predicted per device{_precision_label(report)}")] if total else []
    return line_chart([Series(f"rank 0 ({kind})", [(x, y / scale) for x, y in measured], color="#8c564b")],
                      title="memory by step", x_label="step", y_label=unit, levels=levels)


def memory_by_rank_chart(report: dict[str, Any], records: list[dict[str, Any]],
                         summary: dict[str, Any] | None) -> str | None:
    measured = (summary or {}).get("measured") or {}
    ranks = [r for r in measured.get("model_state_bytes_by_rank") or [] if r]
    if not ranks:
        return None
    activations = measured.get("activation_bytes_by_rank") or []
    parts = ("params", "grads", "optimizer")
    totals = [sum(r.get(k, 0) for k in parts) for r in ranks]
    acts = [finite(activations[i]) if i < len(activations) else None for i in range(len(ranks))]
    predicted = report["predicted"].get("memory_bytes") or {}
    predicted_state = sum(predicted.get(k, 0) for k in parts) or None
    scale, unit = _memory_unit(totals + [a or 0 for a in acts] + [predicted_state or 0])
    series = [Series("model state (params + grads + optimizer)", [(i, t / scale) for i, t in enumerate(totals)],
                     color="#1f77b4")]
    if any(acts):
        series.append(Series("activations (1 micro-batch)", [(i, a / scale) for i, a in enumerate(acts) if a],
                             color="#ff7f0e"))
    levels = [Level(predicted_state / scale, f"predicted model state{_precision_label(report)}")] \
        if predicted_state else []
    return bar_chart([f"rank {r.get('rank', i)}" for i, r in enumerate(ranks)], series,
                     title="memory per rank vs predicted", x_label="rank", y_label=unit, levels=levels)


def grad_norm_chart(report: dict[str, Any], records: list[dict[str, Any]],
                    summary: dict[str, Any] | None) -> str | None:
    points = _step_series(records, "grad_norm")
    if not points:
        return None
    return line_chart([Series("gradient norm (before clipping)", points, color="#d62728")],
                      title="gradient norm by step", x_label="step", y_label="norm", markers=failure_markers(report))


def lr_chart(report: dict[str, Any], records: list[dict[str, Any]], summary: dict[str, Any] | None) -> str | None:
    points = _step_series(records, "lr")
    if not points:
        return None
    return line_chart([Series("learning rate", points, color="#17becf")], title="learning rate by step",
                      x_label="step", y_label="lr")


Chart = Callable[[dict[str, Any], list[dict[str, Any]], dict[str, Any] | None], str | None]
#: the per-step charts of a run, in page order
STEP_CHARTS: tuple[Chart, ...] = (loss_chart, step_time_chart, throughput_chart, mfu_chart, memory_chart,
                                  memory_by_rank_chart, grad_norm_chart, lr_chart)


def timeline_chart(report: dict[str, Any], title: str = "wall-clock timeline", width: float = 1100.0) -> str:
    """The Gantt rows of report/wallclock.py; wide (its text stays the size of the other charts' full width)."""
    spans = []
    for s in report["wallclock"]:
        color = ROW_COLORS[s["row"]]
        if s["row"] == "events":
            color = EVENT_COLORS.get(s["label"].split(" ", 1)[0], color)
        spans.append(Span(s["row"], s["start_s"], s["end_s"], s["label"], color, instant=s["row"] == "events"))
    rows = [row for row in ROWS if any(s.row == row for s in spans)] or ["steps kept"]
    return gantt_chart(spans, rows=rows, title=title, x_label="seconds since the run started", width=width)


# ---- the pages ------------------------------------------------------------------------------------------------
def _page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>"
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n" + "\n".join(body)
            + f"\n<script>//<![CDATA[\n{SCRIPT}\n//]]></script>\n</body></html>\n")


def _panel(report: dict[str, Any]) -> list[str]:
    panel = report["panel"]
    config = json.dumps(panel["config"], indent=2, default=str)
    return ["<h2>The run</h2>", _table(None, [list(r) for r in panel["rows"]], css="panel"),
            f"<details><summary>configuration ({escape(panel['config_source'])})</summary>"
            f"<pre>{escape(config)}</pre></details>"]


def _precision_warning(report: dict[str, Any]) -> str:
    prec = report["panel"]["precision"]
    if prec["run"] == prec["plan"]:
        return ""
    return (f"<p class=\"warn\">Precision: the plan asks for {escape(prec['plan'])}, this run computed in "
            f"{escape(prec['run'])} ({escape(str(prec['note']))}). Memory is predicted for the plan's "
            f"{escape(prec['plan'])}, so the memory rows compare {escape(prec['run'])} tensors with "
            f"{escape(prec['plan'])} predictions: a measured / predicted ratio near the ratio of their sizes (2 for "
            f"fp32 against bf16) on parameters, gradients or activations is the precision, not a prediction "
            f"error.</p>")


def render_html(report: dict[str, Any], summary: dict[str, Any] | None, records: list[dict[str, Any]]) -> str:
    """The report page. `records` are the current run's metrics records (for the charts)."""
    comparison = [[r["figure"], FORMATS[r["unit"]](r["predicted"]), FORMATS[r["unit"]](r["measured"]),
                   "—" if r["ratio"] is None else f"{r['ratio']:.2f}"]
                  for r in report_comparison_rows(report, summary)]
    sources = report["sources"]
    timeline = [[f"{e['t_s']:.2f}", e["event"], str(e["after_step"]),
                 ", ".join(f"{k}={v}" for k, v in e.items() if k not in ("t_s", "event", "after_step"))]
                for e in report["timeline"]]
    charts = [svg for chart in STEP_CHARTS if (svg := chart(report, records, summary))]
    title = f"bastion report: {report['run_dir']}"
    body = [
        f"<h1>{escape(title)}</h1>",
        f"<p>{escape(str(report['model']))} on {escape(str(report['world_size']))} device(s) — "
        f"{escape(report['state'])}</p>",
        *_panel(report),
        "<h2>1. Predicted vs measured (per device)</h2>",
        _precision_warning(report),
        _table(["figure", "predicted", "measured", "measured / predicted"], comparison),
        f"<p class=\"note\">predicted: {escape(sources['predicted'])}<br/>measured: {escape(sources['measured'])}</p>",
        HINT,
        "<div class=\"charts\">", *charts, "</div>",
        "<h2>2. Where the wall time went, and what failures cost</h2>",
        timeline_chart(report),
        _table(["figure", "value", "share"], [list(r) for r in time_rows(report)]),
        f"<p class=\"note\">accounting: {escape(sources['failures'])}; recomputed: {escape(sources['recomputed'])}"
        f"<br/>predicted goodput: {escape(str(report['failures']['predicted_goodput'].get('note')))}</p>",
        "<h3>Events</h3>",
        _table(["seconds since start", "event", "after step", "details"], timeline, css="events") if timeline
        else "<p>No restarts, rollbacks or faults.</p>",
        "<h2>3. Loss</h2>",
        f"<p>{escape(loss_line(report['loss']))}</p>",
    ]
    logs = report.get("logs") or {}
    links = ([f"<a href=\"{escape(logs['tensorboard'])}\">TensorBoard event files</a>"] if logs.get("tensorboard")
             else []) + [f"<a href=\"{escape(path)}\">{escape(path)}</a>" for path in logs.get("profile", [])]
    if links:
        body.append(f"<p>Logs: {', '.join(links)}</p>")
    return _page(title, body)


def run_names(reports: list[dict[str, Any]]) -> list[str]:
    """Each run's directory name, or its whole path where two runs share a name."""
    names = [Path(r["run_dir"]).name for r in reports]
    return [n if names.count(n) == 1 else r["run_dir"] for n, r in zip(names, reports, strict=True)]


def comparison_figures(reports: list[dict[str, Any]]) -> list[list[str]]:
    """Rows (figure, run 1, run 2, …) of the comparison table."""
    def row(name: str, value: Callable[[dict[str, Any]], str]) -> list[str]:
        return [name, *(value(r) for r in reports)]

    def fig(section: str, key: str) -> Callable[[dict[str, Any]], Any]:
        return lambda r: (r[section] or {}).get(key)

    return [
        row("model", lambda r: str(r["model"])),
        *[row(name, lambda r, n=name: dict(r["panel"]["rows"])[n]) for name in ("plan", "precision", "cluster")],
        row("state", lambda r: r["state"]),
        row("step time measured (predicted)", lambda r: f"{fmt_seconds(fig('measured', 'step_time_s')(r))} "
                                                        f"({fmt_seconds(fig('predicted', 'step_time_s')(r))})"),
        row("tokens/s measured (predicted)", lambda r: f"{FORMATS['tokens/s'](fig('measured', 'tokens_per_s')(r))} "
                                                       f"({FORMATS['tokens/s'](fig('predicted', 'tokens_per_s')(r))})"),
        row("MFU measured (predicted)", lambda r: f"{fmt_pct(fig('measured', 'mfu')(r))} "
                                                  f"({fmt_pct(fig('predicted', 'mfu')(r))})"),
        row("peak memory measured (predicted)",
            lambda r: f"{FORMATS['bytes'](fig('measured', 'peak_mem_bytes')(r))} "
                      f"({FORMATS['bytes']((r['predicted'].get('memory_bytes') or {}).get('total'))})"),
        row("goodput measured (predicted)", lambda r: f"{fmt_pct(r['failures'].get('goodput'))} "
                                                      f"({fmt_pct(r['failures']['predicted_goodput'].get('goodput'))})"),
        row("restarts / rollbacks / steps redone", lambda r: f"{r['failures'].get('restarts', 0)} / "
                                                             f"{r['failures'].get('rollbacks', 0)} / "
                                                             f"{r['failures']['recomputed']['count']}"),
        row("final loss", lambda r: "—" if r["loss"]["last"] is None else f"{r['loss']['last']:.4f} "
                                                                           f"(step {r['loss']['last_step']})"),
    ]


def render_comparison(runs: list[tuple[dict[str, Any], dict[str, Any] | None, list[dict[str, Any]]]]) -> str:
    """One page for several runs: (report, summary.json, current records) each; series overlaid by step, the
    timelines side by side."""
    reports = [r for r, _, _ in runs]
    names = run_names(reports)
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(runs))]

    def overlay(key: str, title: str, y_label: str, scale: float = 1.0, smooth: bool = False) -> str:
        series = []
        for name, color, (_, _, records) in zip(names, colors, runs, strict=True):
            points = _step_series(records, key, scale)
            series.append(Series(name, smoothed(points, smoothing_window(len(points))) if smooth else points, color))
        return line_chart(series, title=title, x_label="step", y_label=y_label)

    charts = [overlay("loss", "loss by step (smoothed)", "loss", smooth=True),
              overlay("step_time_s", "step time by step", "seconds"),
              overlay("tokens_per_s", "throughput by step", "tokens/s"),
              overlay("mem_gib", "memory by step (rank 0)", "GiB"),
              overlay("grad_norm", "gradient norm by step", "norm")]
    timelines = [timeline_chart(report, title=f"timeline: {name}", width=720.0) for report, name in zip(reports, names,
                                                                                             strict=True)]
    notes = [f"<li>{escape(name)}: {escape(report['run_dir'])}</li>" for name, report in zip(names, reports,
                                                                                             strict=True)]
    warnings = [w.replace("Precision:", f"Precision of {escape(name)}:", 1)
                for w, name in zip((_precision_warning(r) for r in reports), names, strict=True) if w]
    title = f"bastion report: {len(runs)} runs compared"
    body = [f"<h1>{escape(title)}</h1>", f"<ul>{''.join(notes)}</ul>",
            _table(["figure", *names], comparison_figures(reports), css="side"), *dict.fromkeys(warnings), HINT,
            "<div class=\"charts\">", *charts, "</div>",
            "<h2>Where the wall time went</h2>", "<div class=\"charts\">", *timelines, "</div>"]
    return _page(title, body)
