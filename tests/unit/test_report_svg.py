"""The SVG line chart and the HTML page of `bastion report --html`: well-formed XML, points where they belong."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest

from bastion.report import build_report, load_run
from bastion.report.html import render_html
from bastion.report.svg import Frame, Level, Marker, Series, line_chart, nice_ticks, text_width, tick_labels
from bastion.rundir.records import current_run

SVG = "{http://www.w3.org/2000/svg}"


def points(polyline: ET.Element) -> list[tuple[float, float]]:
    return [tuple(map(float, pair.split(","))) for pair in polyline.get("points").split()]


def plot_area(svg: ET.Element) -> tuple[float, float, float, float]:
    """(left, right, top, bottom) of the chart's plot rectangle (the header above it grows with the legend)."""
    rect = next(r for r in svg.iter(f"{SVG}rect") if r.get("class") == "plot")
    left, top = float(rect.get("x")), float(rect.get("y"))
    return left, left + float(rect.get("width")), top, top + float(rect.get("height"))


def test_points_map_linearly_into_the_plot_area():
    frame = Frame(width=400, height=200, left=40, right=10, top=20, bottom=30)
    svg = ET.fromstring(line_chart([Series("s", [(0, 0), (5, 2), (10, 4)])], title="t", x_label="x", y_label="y",
                                   frame=frame))
    left, right, top, bottom = plot_area(svg)
    # the title and legend rows push the plot down; its size stays the frame's
    assert (left, right, bottom - top) == (40, 390, 150) and top > 20
    assert svg.get("viewBox") == f"0 0 400 {200 + top - 20:g}"
    (line,) = svg.iter(f"{SVG}polyline")
    # x 0..10 -> 40..390; y 0..4 -> bottom..top (flipped: larger values higher up); 0..10 and 0..4 are nice ends
    assert points(line) == [(40.0, bottom), (215.0, (top + bottom) / 2), (390.0, top)]


def test_levels_and_markers_widen_the_ranges_and_stay_inside():
    chart = line_chart([Series("time", [(1, 0.2), (2, 0.3)])], title="t", x_label="x", y_label="y",
                       levels=[Level(0.1, "predicted")], markers=[Marker(4, "restart")])
    svg = ET.fromstring(chart)
    lines = {el.get("class"): el for el in svg.iter(f"{SVG}line") if el.get("class")}
    left, right, top, bottom = plot_area(svg)
    assert float(lines["level"].get("y1")) == pytest.approx(bottom)  # 0.1 is now the lowest value (a nice end)
    assert float(lines["marker"].get("x1")) == pytest.approx(right)  # 4 is now the largest x
    for x, y in points(next(svg.iter(f"{SVG}polyline"))):
        assert left <= x <= right and top <= y <= bottom


@pytest.mark.parametrize(("low", "high", "count", "ticks"), [
    (0.013, 0.97, 5, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
    (1, 12, 8, [0, 2, 4, 6, 8, 10, 12]),
    (4.83, 5.58, 5, [4.8, 5.0, 5.2, 5.4, 5.6]),
    (0, 1200, 5, [0, 250, 500, 750, 1000, 1250]),
])
def test_ticks_are_nice_numbers_that_cover_the_data(low, high, count, ticks):
    assert nice_ticks(low, high, count) == ticks


def test_tick_labels_share_their_decimals():
    assert tick_labels([4.8, 5.0, 5.2]) == ["4.8", "5.0", "5.2"]
    assert tick_labels([0, 2.5, 5.0]) == ["0.0", "2.5", "5.0"]
    assert tick_labels([0, 5000, 10000]) == ["0", "5,000", "10,000"]


def text_boxes(svg: ET.Element, css: str) -> list[tuple[float, float, float]]:
    """(x start, x end, baseline y) of the text elements of a class, by the chart's own width estimate."""
    return [(float(t.get("x")), float(t.get("x")) + text_width(t.text), float(t.get("y")))
            for t in svg.iter(f"{SVG}text") if t.get("class") == css]


def test_marker_labels_close_together_take_separate_rows_above_the_plot():
    svg = ET.fromstring(line_chart([Series("loss", [(1, 1.0), (100, 2.0)])], title="t", x_label="x", y_label="y",
                                   markers=[Marker(40, "restart → step 38"), Marker(41, "rollback → step 40")]))
    (a_x0, a_x1, a_y), (b_x0, b_x1, b_y) = text_boxes(svg, "marker-label")
    assert a_x0 < b_x1 and b_x0 < a_x1  # they would collide on one row ...
    assert a_y != b_y  # ... so they do not share one
    top = plot_area(svg)[2]
    assert max(a_y, b_y) < top  # and none is drawn over the data


def test_a_long_legend_wraps_inside_the_plot_width():
    names = [f"a series with a long name {i}" for i in range(6)]
    svg = ET.fromstring(line_chart([Series(n, [(0, i), (1, i)]) for i, n in enumerate(names)], title="t",
                                   x_label="x", y_label="y"))
    left, right, top, _ = plot_area(svg)
    entries = [next(g.iter(f"{SVG}text")) for g in svg.iter(f"{SVG}g") if g.get("class") == "legend-entry"]
    assert len({e.get("y") for e in entries}) > 1
    for entry in entries:
        assert float(entry.get("x")) + text_width(entry.text) <= right and float(entry.get("y")) < top


def test_non_finite_points_are_left_out_and_flat_or_single_series_do_not_divide_by_zero():
    svg = ET.fromstring(line_chart([Series("a", [(1, 1.0), (2, math.nan), (3, math.inf), (4, 1.0)]),
                                    Series("b", [(2, 1.0)])], title="t", x_label="x", y_label="y"))
    a, b = list(svg.iter(f"{SVG}polyline"))
    assert (a.get("data-series"), len(points(a))) == ("a", 2)
    assert len(points(b)) == 1 and len(list(svg.iter(f"{SVG}circle"))) == 1
    assert all(math.isfinite(v) for p in points(a) + points(b) for v in p)


def test_text_is_escaped():
    svg = ET.fromstring(line_chart([Series('a<"b">&', [(0, 0), (1, 1)])], title="<script>", x_label="&",
                                   y_label="y"))
    assert svg.find(f"{SVG}title").text == "<script>"
    assert next(svg.iter(f"{SVG}polyline")).get("data-series") == 'a<"b">&'


def test_html_page_is_self_contained_with_one_chart_per_figure(failing_run):  # noqa: F811
    run = load_run(failing_run)
    report = build_report(run)
    page = render_html(report, run.summary, current_run(run.records))
    root = ET.fromstring(page.removeprefix("<!DOCTYPE html>\n"))
    # one inline script, nothing fetched: no src/href, no URL but the SVG namespace
    assert page.count("<script") == 1 and " src=" not in page and "href" not in page
    assert "http" not in page.replace("http://www.w3.org/2000/svg", "")
    svgs = list(root.iter(f"{SVG}svg"))
    assert [s.find(f"{SVG}title").text for s in svgs] == [
        "loss by step", "step time by step", "throughput by step", "MFU by step", "memory by step",
        "gradient norm by step", "learning rate by step", "wall-clock timeline"]
    loss, step_time = svgs[0], svgs[1]
    (line,) = step_time.iter(f"{SVG}polyline")
    assert len(points(line)) == 5  # the kept record of steps 1..5 (recomputed records are not kept)
    raw, mean = loss.iter(f"{SVG}polyline")
    assert (raw.get("data-series"), len(points(raw)), len(points(mean))) == ("loss", 5, 5)
    for svg in svgs[:2]:
        # one marker for the restart and one for the rollback
        assert [m.find(f"{SVG}title").text for m in svg.iter(f"{SVG}line") if m.get("class") == "marker"] \
            == ["restart → step 2", "rollback → step 2"]
    _, _, top, _ = plot_area(loss)
    loss_points = points(raw)
    assert loss_points[0][1] == pytest.approx(top, abs=20)  # step 1's loss, 5.5, is the highest ...
    assert min(loss_points, key=lambda p: -p[1])[0] == loss_points[3][0]  # ... the lowest point is step 4 (5.1)
    tables = list(root.iter("table"))
    assert len(tables) == 4  # the run, predicted vs measured, time, events
    assert "recomputed" in ET.tostring(tables[2], encoding="unicode")
