"""A small SVG line chart for the HTML report: no JavaScript, no plotting library, one string of XML.

    svg = line_chart([Series("loss", [(1, 5.5), (2, 5.4)])], title="loss", x_label="step", y_label="loss",
                     levels=[Level(0.08, "predicted")], markers=[Marker(3, "restart")])

Data coordinates map linearly into the plot area of a fixed viewBox (y grows downwards in SVG, so it is flipped).
Each series is one <polyline data-series="NAME">, one point per finite data point; non-finite y values are left
out (a NaN has no place on an axis). Levels are horizontal dashed lines (a predicted value), markers vertical
ones (a restart); both widen the axis ranges so they are always inside the plot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")


@dataclass(frozen=True)
class Series:
    """One line: (x, y) points in data units, drawn in the order given."""

    name: str
    points: Sequence[tuple[float, float]]
    color: str | None = None


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
class Frame:
    """The viewBox and the plot area inside it (the margins hold the title, the axes' labels and ticks)."""

    width: float = 640.0
    height: float = 260.0
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


def _finite(values: list[float]) -> list[float]:
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


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    return [low + (high - low) * i / (count - 1) for i in range(count)]


def _num(value: float) -> str:
    return f"{value:.4g}"


def line_chart(series: Sequence[Series], *, title: str, x_label: str, y_label: str,
               levels: Sequence[Level] = (), markers: Sequence[Marker] = (), frame: Frame | None = None) -> str:
    """An <svg> element (with its namespace, so it can stand alone or sit inside HTML) drawing `series`."""
    frame = frame or Frame()
    xs = _finite([x for s in series for x, _ in s.points] + [m.x for m in markers])
    ys = _finite([y for s in series for _, y in s.points] + [lv.y for lv in levels])
    x_low, x_high = _range(xs)
    y_low, y_high = _range(ys)
    x_axis = Axis(x_low, x_high, *frame.plot_x, ticks=_ticks(x_low, x_high))
    top, bottom = frame.plot_y
    y_axis = Axis(y_low, y_high, bottom, top, ticks=_ticks(y_low, y_high))
    left, right = frame.plot_x
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_num(frame.width)} {_num(frame.height)}" '
             f'width="{_num(frame.width)}" height="{_num(frame.height)}" role="img" '
             f'aria-label={quoteattr(title)} font-family="sans-serif" font-size="11">',
             f'<title>{escape(title)}</title>',
             f'<text x="{_num(frame.width / 2)}" y="16" text-anchor="middle" font-size="13">{escape(title)}</text>',
             f'<rect x="{left:.1f}" y="{top:.1f}" width="{right - left:.1f}" height="{bottom - top:.1f}" '
             f'fill="none" stroke="#999999"/>']
    for tick in y_axis.ticks:
        y = y_axis(tick)
        parts.append(f'<line x1="{left:.1f}" y1="{y:.1f}" x2="{right:.1f}" y2="{y:.1f}" stroke="#eeeeee"/>')
        parts.append(f'<text x="{left - 4:.1f}" y="{y + 4:.1f}" text-anchor="end">{escape(_num(tick))}</text>')
    for tick in x_axis.ticks:
        x = x_axis(tick)
        parts.append(f'<text x="{x:.1f}" y="{bottom + 14:.1f}" text-anchor="middle">{escape(_num(tick))}</text>')
    parts.append(f'<text x="{(left + right) / 2:.1f}" y="{frame.height - 6:.1f}" '
                 f'text-anchor="middle">{escape(x_label)}</text>')
    parts.append(f'<text x="12" y="{(top + bottom) / 2:.1f}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {(top + bottom) / 2:.1f})">{escape(y_label)}</text>')
    for level in levels:
        if not _finite([level.y]):
            continue
        y = y_axis(level.y)
        parts.append(f'<line class="level" x1="{left:.1f}" y1="{y:.1f}" x2="{right:.1f}" y2="{y:.1f}" '
                     f'stroke="{level.color}" stroke-dasharray="6 4"/>')
        parts.append(f'<text x="{right - 4:.1f}" y="{y - 4:.1f}" text-anchor="end" '
                     f'fill="{level.color}">{escape(level.label)}</text>')
    for marker in markers:
        if not _finite([marker.x]):
            continue
        x = x_axis(marker.x)
        parts.append(f'<line class="marker" x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{bottom:.1f}" '
                     f'stroke="{marker.color}" stroke-dasharray="3 3"><title>{escape(marker.label)}</title></line>')
        parts.append(f'<text x="{x + 3:.1f}" y="{top + 11:.1f}" fill="{marker.color}">{escape(marker.label)}</text>')
    for index, one in enumerate(series):
        color = one.color or PALETTE[index % len(PALETTE)]
        points = [(x_axis(x), y_axis(y)) for x, y in one.points if _finite([x, y]) == [x, y]]
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        parts.append(f'<polyline data-series={quoteattr(one.name)} points="{coords}" fill="none" '
                     f'stroke="{color}" stroke-width="1.5"/>')
        if len(points) == 1:  # a single point draws no line: show it as a dot
            parts.append(f'<circle cx="{points[0][0]:.1f}" cy="{points[0][1]:.1f}" r="2.5" fill="{color}"/>')
        legend_y = top + 12 + 13 * index
        parts.append(f'<text x="{left + 6:.1f}" y="{legend_y:.1f}" fill="{color}">{escape(one.name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
