"""SVG charts for the HTML report: no plotting library, one string of XML each; interactive.py adds hover and zoom.

    svg = line_chart([Series("loss", [(1, 5.5), (2, 5.4)])], title="loss", x_label="step", y_label="loss",
                     levels=[Level(0.08, "predicted")], markers=[Marker(3, "restart")])
    svg = gantt_chart([Span("steps", 0.0, 0.3, "step 1")], rows=["steps"], title="timeline", x_label="s")

Data coordinates map linearly into the plot area of a viewBox (y grows downwards in SVG, so it is flipped); the
axes end on "nice" values (1, 2 or 5 × a power of ten) and their tick labels share one number of decimals.
Labels never sit on the data or on each other: the title, the legend (series as solid lines, levels as dashed
ones) and the marker labels each have rows of their own above the plot area, laid out by estimated text width,
and the x axis has as many ticks as fit their labels. Each series is one <polyline data-series="NAME">, one point
per finite data point; non-finite y values are left out (a NaN has no place on an axis). Levels are horizontal
dashed lines (a predicted value), markers vertical ones (a restart); both widen the axis ranges so they are
always inside the plot. Every element placed by a data x carries it (`data-x`, `data-xy`, `data-x0`/`data-x1`)
and the <svg> its axes (`data-axes`), so the page's script can redraw a zoomed x range without the server.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from xml.sax.saxutils import escape, quoteattr

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
FONT_PX = 11.0
#: average advance of one character of an 11 px sans-serif font: a little generous, so estimates never overlap
CHAR_PX = 6.4
ROW_PX = 15.0


@dataclass(frozen=True)
class Series:
    """One line: (x, y) points in data units, drawn in the order given."""

    name: str
    points: Sequence[tuple[float, float]]
    color: str | None = None
    #: a lighter line (the raw values under a smoothed one)
    faint: bool = False


@dataclass(frozen=True)
class Level:
    """A horizontal reference line at y (e.g. the predicted step time)."""

    y: float
    label: str
    color: str = "#555555"


@dataclass(frozen=True)
class Marker:
    """A vertical line at x (e.g. the step a restart resumed from)."""

    x: float
    label: str
    color: str = "#d62728"


@dataclass(frozen=True)
class Span:
    """A bar of the Gantt chart: `row` from x0 to x1 (at least a hairline wide), or an instant (a diamond at x0)."""

    row: str
    x0: float
    x1: float
    label: str
    color: str = "#1f77b4"
    instant: bool = False


@dataclass(frozen=True)
class Frame:
    """The viewBox and the plot area inside it (the margins hold the title, legend, axes' labels and ticks)."""

    width: float = 600.0
    height: float = 250.0
    left: float = 64.0
    right: float = 16.0
    top: float = 28.0
    bottom: float = 40.0

    @property
    def plot_x(self) -> tuple[float, float]:
        return self.left, self.width - self.right

    @property
    def plot_y(self) -> tuple[float, float]:
        """(top, bottom) pixel rows of the plot area; data y maps bottom-up."""
        return self.top, self.height - self.bottom


@dataclass(frozen=True)
class Axis:
    """A data range [low, high] mapped onto a pixel range [start, end] (end < start flips it)."""

    low: float
    high: float
    start: float
    end: float
    ticks: list[float] = field(default_factory=list)

    def __call__(self, value: float) -> float:
        return self.start + (value - self.low) / (self.high - self.low) * (self.end - self.start)


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if isinstance(v, int | float) and math.isfinite(v)]


def _range(values: list[float]) -> tuple[float, float]:
    """[low, high] around the values, widened when they are all equal (or absent) so the scale is defined."""
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    if high == low:
        pad = abs(low) * 0.05 or 0.5
        return low - pad, high + pad
    return low, high


def nice_step(span: float, count: int) -> float:
    """The 1, 2 or 5 × 10^k closest above span / count: a step people read at a glance."""
    raw = span / max(count, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * power >= raw * 0.999)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Ticks on multiples of a nice step, the first at or below `low` and the last at or above `high`."""
    step = nice_step(high - low, count)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [_clean(i * step) for i in range(first, last + 1)]


def _clean(value: float) -> float:
    """1e-17 → 0 and 0.30000000000000004 → 0.3 (tick values computed as i × step)."""
    return 0.0 if abs(value) < 1e-12 else float(f"{value:.12g}")


def tick_labels(ticks: Sequence[float]) -> list[str]:
    """One number of decimals for all ticks (enough to tell neighbours apart), thousands separated; large or tiny
    magnitudes in engineering notation."""
    if not ticks:
        return []
    step = min((abs(b - a) for a, b in zip(ticks, ticks[1:], strict=False) if b != a), default=abs(ticks[0]) or 1)
    biggest = max(abs(t) for t in ticks)
    if biggest >= 1e7 or (biggest and biggest < 1e-3):
        return [f"{t:.3g}" for t in ticks]
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step else 0
    decimals += 1 if step and round(step / 10 ** -decimals, 6) % 1 else 0  # 2.5 × 10^k needs one more
    return [f"{t:,.{decimals}f}" for t in ticks]


def text_width(text: str) -> float:
    return len(text) * CHAR_PX


def _rows(widths: Sequence[float], available: float, gap: float = 14.0) -> list[int]:
    """Greedy line breaking: the row index of each item of `widths` so no row is wider than `available`."""
    rows, used, row = [], 0.0, 0
    for width in widths:
        if used and used + gap + width > available:
            row, used = row + 1, 0.0
        rows.append(row)
        used += (gap if used else 0.0) + width
    return rows


def _x_ticks(low: float, high: float, plot_width: float) -> list[float]:
    """As many nice ticks as fit their labels side by side (a label is never wider than its share)."""
    for count in (8, 6, 5, 4, 3, 2, 1):
        ticks = nice_ticks(low, high, count)
        widest = max(text_width(label) for label in tick_labels(ticks))
        if len(ticks) < 2 or widest + 8 <= plot_width / (len(ticks) - 1):
            return ticks
    return nice_ticks(low, high, 1)


def _clip_id(*content: object) -> str:
    """A clip-path id unique to a chart's content (ids share one namespace per page), the same on every run."""
    return f"clip-{zlib.crc32(repr(content).encode()):08x}"


def _num(value: float) -> str:
    return f"{value:.4g}"


def _header(frame: Frame, legend: list[tuple[str, str, str]], marker_rows: int) -> tuple[Frame, list[str]]:
    """Lay out the rows above the plot: the title; the legend entries (name, color, dash attribute), wrapped to
    the plot's width; `marker_rows` rows for the marker labels. Returns the frame grown to fit them and the
    legend's SVG."""
    left, right = frame.plot_x
    entry_widths = [22 + text_width(name) for name, _, _ in legend]
    legend_rows = _rows(entry_widths, right - left)
    parts, used, row = [], 0.0, 0
    for (name, color, dash), width, entry_row in zip(legend, entry_widths, legend_rows, strict=True):
        if entry_row != row:
            row, used = entry_row, 0.0
        x, y = left + used, 16 + ROW_PX * (entry_row + 1)
        parts.append(f'<g class="legend-entry"><line x1="{x:.1f}" y1="{y - 4:.1f}" x2="{x + 16:.1f}" '
                     f'y2="{y - 4:.1f}" stroke="{color}" stroke-width="2"{dash}/><text x="{x + 20:.1f}" '
                     f'y="{y:.1f}">{escape(name)}</text></g>')
        used += width + 14.0
    header_rows = 1 + (max(legend_rows) + 1 if legend_rows else 0) + marker_rows
    top = max(frame.top, 16.0 + ROW_PX * header_rows + 4.0)
    return replace(frame, top=top, height=frame.height + (top - frame.top)), parts


def _place_marker_labels(xs: list[float], labels: Sequence[str], right: float) -> list[int]:
    """The row of each marker label: the first row where it does not overlap a label placed before it."""
    taken: list[list[tuple[float, float]]] = []
    out = []
    for x, label in zip(xs, labels, strict=True):
        width = text_width(label)
        start = min(x + 3, right - width)
        span = (start - 4, start + width + 4)
        for row, spans in enumerate(taken):
            if all(span[1] <= a or span[0] >= b for a, b in spans):
                spans.append(span)
                out.append(row)
                break
        else:
            taken.append([span])
            out.append(len(taken) - 1)
    return out


def _open(frame: Frame, title: str, kind: str, axes: dict[str, object] | None) -> list[str]:
    """The <svg> start tag and title; `axes` (a zoomable chart's x range and plot area) go to data-axes."""
    data = f" data-axes={quoteattr(json.dumps(axes))}" if axes else ""
    return [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {kind}" '
            f'viewBox="0 0 {_num(frame.width)} {_num(frame.height)}" width="{_num(frame.width)}" '
            f'height="{_num(frame.height)}" role="img" aria-label={quoteattr(title)} font-family="sans-serif" '
            f'font-size="{_num(FONT_PX)}"{data}>',
            f'<title>{escape(title)}</title>',
            f'<text class="chart-title" x="{frame.left:.1f}" y="16" font-size="13" font-weight="bold">'
            f'{escape(title)}</text>']


def _x_axis_parts(x_axis: Axis, bottom: float, x_label: str, frame: Frame) -> list[str]:
    left, right = frame.plot_x
    parts = ['<g class="xticks">']
    for tick, label in zip(x_axis.ticks, tick_labels(x_axis.ticks), strict=True):
        x = x_axis(tick)
        parts.append(f'<text x="{x:.1f}" y="{bottom + 14:.1f}" text-anchor="middle">{escape(label)}</text>')
    parts.append("</g>")
    parts.append(f'<text x="{(left + right) / 2:.1f}" y="{frame.height - 6:.1f}" '
                 f'text-anchor="middle">{escape(x_label)}</text>')
    return parts


def _plot_box(frame: Frame, clip: str | None, pad: float = 0.0) -> list[str]:
    """The plot area's white box, and the clip path (`pad` px taller each way) that keeps zoomed data inside it."""
    left, right = frame.plot_x
    top, bottom = frame.plot_y
    parts = [f'<clipPath id="{clip}"><rect x="{left:.1f}" y="{top - pad:.1f}" width="{right - left:.1f}" '
             f'height="{bottom - top + 2 * pad:.1f}"/></clipPath>'] if clip else []
    parts.append(f'<rect class="plot" x="{left:.1f}" y="{top:.1f}" width="{right - left:.1f}" '
                 f'height="{bottom - top:.1f}" fill="#ffffff" stroke="#999999"/>')
    return parts


def _y_axis_parts(y_axis: Axis, frame: Frame, y_label: str) -> list[str]:
    """Grid lines and tick labels of the y axis, and its label turned upright beside the widest tick label."""
    left, right = frame.plot_x
    top, bottom = frame.plot_y
    labels = tick_labels(y_axis.ticks)
    parts = []
    for tick, label in zip(y_axis.ticks, labels, strict=True):
        y = y_axis(tick)
        parts.append(f'<line x1="{left:.1f}" y1="{y:.1f}" x2="{right:.1f}" y2="{y:.1f}" stroke="#eeeeee"/>')
        parts.append(f'<text x="{left - 4:.1f}" y="{y + 4:.1f}" text-anchor="end">{escape(label)}</text>')
    label_x = max(12.0, left - max(text_width(label) for label in labels) - 10)
    parts.append(f'<text x="{label_x:.1f}" y="{(top + bottom) / 2:.1f}" text-anchor="middle" '
                 f'transform="rotate(-90 {label_x:.1f} {(top + bottom) / 2:.1f})">{escape(y_label)}</text>')
    return parts


def line_chart(series: Sequence[Series], *, title: str, x_label: str, y_label: str,
               levels: Sequence[Level] = (), markers: Sequence[Marker] = (), frame: Frame | None = None) -> str:
    """An <svg> element (with its namespace, so it can stand alone or sit inside HTML) drawing `series`."""
    frame = frame or Frame()
    legend = [(s.name, s.color or PALETTE[i % len(PALETTE)], ' stroke-opacity="0.35"' if s.faint else "")
              for i, s in enumerate(series)]
    legend += [(lv.label, lv.color, ' stroke-dasharray="6 4"') for lv in levels if _finite([lv.y])]
    shown_markers = [m for m in markers if _finite([m.x])]
    xs = _finite([x for s in series for x, _ in s.points] + [m.x for m in shown_markers])
    ys = _finite([y for s in series for _, y in s.points] + [lv.y for lv in levels])
    left, right = frame.plot_x
    x_ticks = _x_ticks(*_range(xs), right - left)
    x_axis = Axis(x_ticks[0], x_ticks[-1], left, right, ticks=x_ticks)
    marker_px = [x_axis(m.x) for m in shown_markers]
    marker_rows = _place_marker_labels(marker_px, [m.label for m in shown_markers], right)
    frame, legend_parts = _header(frame, legend, max(marker_rows) + 1 if marker_rows else 0)
    top, bottom = frame.plot_y
    y_ticks = nice_ticks(*_range(ys), max(2, min(6, int((bottom - top) / 36))))
    y_axis = Axis(y_ticks[0], y_ticks[-1], bottom, top, ticks=y_ticks)
    axes = {"x": [x_axis.low, x_axis.high], "y": [y_axis.low, y_axis.high], "plot": [left, right, top, bottom],
            "x_label": x_label, "y_label": y_label}
    clip = _clip_id(title, x_label, xs)
    parts = [*_open(frame, title, "line-chart", axes), *legend_parts, *_plot_box(frame, clip, pad=2.0),
             *_y_axis_parts(y_axis, frame, y_label), *_x_axis_parts(x_axis, bottom, x_label, frame)]
    parts.append(f'<g clip-path="url(#{clip})">')
    for level in levels:
        if not _finite([level.y]):
            continue
        y = y_axis(level.y)
        parts.append(f'<line class="level" x1="{left:.1f}" y1="{y:.1f}" x2="{right:.1f}" y2="{y:.1f}" '
                     f'stroke="{level.color}" stroke-dasharray="6 4"><title>{escape(level.label)}</title></line>')
    for index, one in enumerate(series):
        color = one.color or PALETTE[index % len(PALETTE)]
        data = [(x, y) for x, y in one.points if _finite([x, y]) == [x, y]]
        coords = " ".join(f"{x_axis(x):.1f},{y_axis(y):.1f}" for x, y in data)
        xy = " ".join(f"{_num(x)},{y:.6g}" for x, y in data)
        opacity = ' stroke-opacity="0.35"' if one.faint else ""
        parts.append(f'<polyline data-series={quoteattr(one.name)} data-xy="{xy}" points="{coords}" fill="none" '
                     f'stroke="{color}" stroke-width="1.5"{opacity}/>')
        if len(data) == 1:  # a single point draws no line: show it as a dot
            x, y = data[0]
            parts.append(f'<circle data-x="{_num(x)}" cx="{x_axis(x):.1f}" cy="{y_axis(y):.1f}" r="2.5" '
                         f'fill="{color}"/>')
    parts.append("</g>")
    for marker, x, row in zip(shown_markers, marker_px, marker_rows, strict=True):
        label_y = top - 6 - ROW_PX * row
        parts.append(f'<line class="marker" data-x="{_num(marker.x)}" x1="{x:.1f}" y1="{label_y + 2:.1f}" '
                     f'x2="{x:.1f}" y2="{bottom:.1f}" stroke="{marker.color}" stroke-dasharray="3 3">'
                     f'<title>{escape(marker.label)}</title></line>')
        start = min(x + 3, right - text_width(marker.label))
        parts.append(f'<text class="marker-label" data-x="{_num(marker.x)}" x="{start:.1f}" y="{label_y:.1f}" '
                     f'fill="{marker.color}">{escape(marker.label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def gantt_chart(spans: Sequence[Span], *, rows: Sequence[str], title: str, x_label: str,
                legend: Sequence[tuple[str, str]] = (), width: float = 720.0) -> str:
    """Rows of bars on one x axis (wall-clock seconds): each Span a <rect> (or a diamond for an instant) with its
    label as a tooltip. Row names sit in the left margin, sized to the longest."""
    left = 12.0 + max((text_width(r) for r in rows), default=40.0)
    bar_px = 18.0
    frame = Frame(width=width, height=40.0 + bar_px * len(rows) + 28.0, left=left, top=28.0, bottom=40.0)
    frame, legend_parts = _header(frame, [(n, c, "") for n, c in legend], 0)
    left, right = frame.plot_x
    top, bottom = frame.plot_y
    xs = _finite([x for s in spans for x in (s.x0, s.x1)])
    x_ticks = _x_ticks(*_range(xs), right - left)
    x_axis = Axis(x_ticks[0], x_ticks[-1], left, right, ticks=x_ticks)
    axes = {"x": [x_axis.low, x_axis.high], "plot": [left, right, top, bottom], "x_label": x_label}
    clip = _clip_id(title, x_label, xs)
    parts = [*_open(frame, title, "gantt-chart", axes), *legend_parts, *_plot_box(frame, clip)]
    row_y = {name: top + 4 + bar_px * i for i, name in enumerate(rows)}
    for name, y in row_y.items():
        parts.append(f'<text x="{left - 6:.1f}" y="{y + bar_px / 2 + 3:.1f}" text-anchor="end">{escape(name)}</text>')
        parts.append(f'<line x1="{left:.1f}" y1="{y + bar_px - 2:.1f}" x2="{right:.1f}" y2="{y + bar_px - 2:.1f}" '
                     f'stroke="#f0f0f0"/>')
    parts += _x_axis_parts(x_axis, bottom, x_label, frame)
    parts.append(f'<g clip-path="url(#{clip})">')
    for span in spans:
        if span.row not in row_y or _finite([span.x0, span.x1]) != [span.x0, span.x1]:
            continue
        y = row_y[span.row]
        tip = f"<title>{escape(span.label)}</title>"
        if not span.instant:
            x0, x1 = x_axis(span.x0), x_axis(span.x1)
            parts.append(f'<rect class="span" data-x0="{_num(span.x0)}" data-x1="{_num(span.x1)}" x="{x0:.2f}" '
                         f'y="{y:.1f}" width="{max(x1 - x0, 0.8):.2f}" height="{bar_px - 6:.1f}" '
                         f'fill="{span.color}">{tip}</rect>')
        else:
            x, mid = x_axis(span.x0), y + (bar_px - 6) / 2
            parts.append(f'<path class="instant" data-x="{_num(span.x0)}" transform="translate({x:.2f} {mid:.1f})" '
                         f'd="M0 -6 L5 0 L0 6 L-5 0 Z" fill="{span.color}">{tip}</path>')
    parts.append("</g>")
    parts.append("</svg>")
    return "\n".join(parts)


def bar_chart(categories: Sequence[str], series: Sequence[Series], *, title: str, x_label: str, y_label: str,
              levels: Sequence[Level] = (), frame: Frame | None = None) -> str:
    """Grouped bars: one group per category, one bar per series (a Series' points are (category index, value));
    each bar's value is its tooltip. Levels as in line_chart."""
    frame = frame or Frame()
    legend = [(s.name, s.color or PALETTE[i % len(PALETTE)], "") for i, s in enumerate(series)]
    legend += [(lv.label, lv.color, ' stroke-dasharray="6 4"') for lv in levels if _finite([lv.y])]
    frame, legend_parts = _header(frame, legend, 0)
    left, right = frame.plot_x
    top, bottom = frame.plot_y
    values = _finite([y for s in series for _, y in s.points] + [lv.y for lv in levels])
    y_ticks = nice_ticks(*_range([0.0, *values]), max(2, min(6, int((bottom - top) / 36))))
    y_axis = Axis(y_ticks[0], y_ticks[-1], bottom, top, ticks=y_ticks)
    parts = [*_open(frame, title, "bar-chart", None), *legend_parts, *_plot_box(frame, None),
             *_y_axis_parts(y_axis, frame, y_label)]
    group_px = (right - left) / max(len(categories), 1)
    bar_px = min(40.0, group_px * 0.8 / max(len(series), 1))
    show_every = max(1, math.ceil(max((text_width(c) for c in categories), default=0) / max(group_px - 6, 1)))
    for index, category in enumerate(categories):
        middle = left + group_px * (index + 0.5)
        if index % show_every == 0:
            parts.append(f'<text x="{middle:.1f}" y="{bottom + 14:.1f}" text-anchor="middle">{escape(category)}</text>')
        for number, one in enumerate(series):
            value = next((y for i, y in one.points if i == index), None)
            if value is None or not _finite([value]):
                continue
            x = middle - bar_px * len(series) / 2 + bar_px * number
            y = y_axis(value)
            color = one.color or PALETTE[number % len(PALETTE)]
            parts.append(f'<rect class="bar" data-series={quoteattr(one.name)} x="{x:.1f}" y="{y:.1f}" '
                         f'width="{bar_px - 2:.1f}" height="{bottom - y:.1f}" fill="{color}">'
                         f'<title>{escape(f"{category}, {one.name}: {value:.4g}")}</title></rect>')
    for level in levels:
        if _finite([level.y]):
            y = y_axis(level.y)
            parts.append(f'<line class="level" x1="{left:.1f}" y1="{y:.1f}" x2="{right:.1f}" y2="{y:.1f}" '
                         f'stroke="{level.color}" stroke-dasharray="6 4"><title>{escape(level.label)}</title></line>')
    parts.append(f'<text x="{(left + right) / 2:.1f}" y="{frame.height - 6:.1f}" '
                 f'text-anchor="middle">{escape(x_label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
