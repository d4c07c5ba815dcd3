"""The SVG line chart and the HTML page of `bastion report --html`: well-formed XML, points where they belong."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest

from bastion.report import build_report, load_run
from bastion.report.html import render_html
from bastion.report.svg import Frame, Level, Marker, Series, line_chart
from bastion.rundir.records import current_run

SVG = "{http://www.w3.org/2000/svg}"


def points(polyline: ET.Element) -> list[tuple[float, float]]:
    return [tuple(map(float, pair.split(","))) for pair in polyline.get("points").split()]


def test_points_map_linearly_into_the_plot_area():
    frame = Frame(width=400, height=200, left=40, right=10, top=20, bottom=30)
    svg = ET.fromstring(line_chart([Series("s", [(0, 0), (5, 2), (10, 4)])], title="t", x_label="x", y_label="y",
                                   frame=frame))
    assert svg.get("viewBox") == "0 0 400 200"
    (line,) = svg.iter(f"{SVG}polyline")
    # x 0..10 -> 40..390; y 0..4 -> 170..20 (flipped: larger values higher up)
    assert points(line) == [(40.0, 170.0), (215.0, 95.0), (390.0, 20.0)]


def test_levels_and_markers_widen_the_ranges_and_stay_inside():
    frame = Frame()
    chart = line_chart([Series("time", [(1, 0.2), (2, 0.3)])], title="t", x_label="x", y_label="y",
                       levels=[Level(0.1, "predicted")], markers=[Marker(4, "restart")], frame=frame)
    svg = ET.fromstring(chart)
    lines = {el.get("class"): el for el in svg.iter(f"{SVG}line") if el.get("class")}
    left, right = frame.plot_x
    top, bottom = frame.plot_y
    assert float(lines["level"].get("y1")) == pytest.approx(bottom)  # 0.1 is now the lowest value
    assert float(lines["marker"].get("x1")) == pytest.approx(right)  # 4 is now the largest x
    for x, y in points(next(svg.iter(f"{SVG}polyline"))):
        assert left <= x <= right and top <= y <= bottom


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
    assert "<script" not in page and "http" not in page.replace("http://www.w3.org/2000/svg", "")
    svgs = list(root.iter(f"{SVG}svg"))
    assert [s.find(f"{SVG}title").text for s in svgs] == ["step time by step", "loss by step"]
    for svg in svgs:
        (line,) = svg.iter(f"{SVG}polyline")
        assert len(points(line)) == 5  # the kept record of steps 1..5 (recomputed records are not kept)
        # one marker for the restart and one for the rollback
        assert [m.find(f"{SVG}title").text for m in svg.iter(f"{SVG}line") if m.get("class") == "marker"] \
            == ["restart → step 2", "rollback → step 2"]
    loss_points = points(next(svgs[1].iter(f"{SVG}polyline")))
    top, bottom = Frame().plot_y
    assert loss_points[0][1] == pytest.approx(top)  # step 1's loss, 5.5, is the highest
    assert min(loss_points, key=lambda p: -p[1])[0] == loss_points[3][0]  # the lowest point is step 4 (5.1)
    tables = list(root.iter("table"))
    assert len(tables) == 3  # predicted vs measured, time, timeline
    assert "recomputed" in ET.tostring(tables[1], encoding="unicode")
