"""Render a page in Debian's headless Chromium and read back what a person would notice: errors, overflow, labels
on top of each other, and whether hover and zoom respond. No DevTools client: a probe script is put first in the
page's <head>; it records script errors and console.error calls, and after the page's own script ran it measures
the layout and plays a hover, a drag-zoom and a double-click on the first chart, then writes what it found as
JSON into the DOM, which `chromium --dump-dom` prints.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

#: the flags this machine's notes give for headless Chromium in a container (no sandbox, no GPU, no network)
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")

PROBE = r"""
<script>
window.__probe = {errors: []};
window.addEventListener("error", function (e) { window.__probe.errors.push("error: " + e.message); });
(function () {
  var original = console.error;
  console.error = function () {
    window.__probe.errors.push("console.error: " + Array.prototype.join.call(arguments, " "));
    return original.apply(console, arguments);
  };
})();
window.addEventListener("load", function () { setTimeout(function () {
  var p = window.__probe, width = document.documentElement.clientWidth;
  p.page = {scrollWidth: document.documentElement.scrollWidth, clientWidth: width};
  p.overflowing = [];
  document.querySelectorAll("body *").forEach(function (el) {
    if (el.closest("svg") && el.tagName.toLowerCase() !== "svg") { return; }
    var r = el.getBoundingClientRect();
    if (r.width && (r.right > width + 1 || r.left < -1)) { p.overflowing.push(el.tagName + " right " + r.right); }
    var style = getComputedStyle(el);
    if (style.display !== "inline" && el.clientWidth && el.scrollWidth > el.clientWidth + 1
        && style.overflowX !== "hidden") { p.overflowing.push(el.tagName + " scrolls " + el.scrollWidth); }
  });
  p.charts = [];
  p.overlaps = [];
  p.outside = [];
  document.querySelectorAll("svg.chart").forEach(function (svg, n) {
    var box = svg.getBoundingClientRect();
    var texts = Array.prototype.filter.call(svg.querySelectorAll("text"), function (t) {
      return t.getAttribute("visibility") !== "hidden" && t.textContent.trim();
    }).map(function (t) { return {text: t.textContent, r: t.getBoundingClientRect()}; });
    texts.forEach(function (a) {
      if (a.r.left < box.left - 1 || a.r.right > box.right + 1 || a.r.top < box.top - 1 || a.r.bottom > box.bottom + 1) {
        p.outside.push("chart " + n + ": " + a.text);
      }
    });
    for (var i = 0; i < texts.length; i++) { for (var j = i + 1; j < texts.length; j++) {
      var a = texts[i].r, b = texts[j].r;
      if (a.left < b.right - 0.5 && b.left < a.right - 0.5 && a.top < b.bottom - 0.5 && b.top < a.bottom - 0.5) {
        p.overlaps.push("chart " + n + ": '" + texts[i].text + "' / '" + texts[j].text + "'");
      }
    } }
    p.charts.push(svg.querySelector("title").textContent);
  });
  var chart = document.querySelector("svg.line-chart");
  if (chart) {
    var axes = JSON.parse(chart.getAttribute("data-axes")), r = chart.getBoundingClientRect();
    var scale = r.width / chart.viewBox.baseVal.width;
    function at(x) { return r.left + x * scale; }
    var y = r.top + (axes.plot[2] + axes.plot[3]) / 2 * scale;
    function fire(type, x) {
      chart.dispatchEvent(new MouseEvent(type, {clientX: x, clientY: y, bubbles: true}));
    }
    var ticks = function () {
      return Array.prototype.map.call(chart.querySelectorAll("g.xticks text"), function (t) { return t.textContent; }).join(" ");
    };
    var before = ticks(), mid = at((axes.plot[0] + axes.plot[1]) / 2);
    fire("mousemove", mid);
    var tip = document.querySelector(".tooltip");
    p.hover = tip.style.display !== "none" ? tip.textContent : null;
    fire("mousedown", at(axes.plot[0] + 5));
    fire("mousemove", mid);
    fire("mouseup", mid);
    var zoomed = ticks();
    fire("dblclick", mid);
    p.zoom = {before: before, zoomed: zoomed, reset: ticks()};
    fire("mouseleave", mid);
  }
  var out = document.createElement("pre");
  out.id = "__probe";
  out.textContent = JSON.stringify(p);
  document.body.appendChild(out);
}, 50); });
</script>
"""


def find_chromium() -> str | None:
    return next((path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None)


def probe_page(chromium: str, page: Path, work: Path, width: int = 1280) -> dict[str, Any]:
    """Load a copy of `page` with the probe at `width` CSS pixels; the probe's findings as a dict."""
    probed = work / f"{page.stem}.probed-{width}.html"
    probed.write_text(page.read_text().replace("<head>", "<head>" + PROBE, 1))
    result = subprocess.run([chromium, *FLAGS, f"--user-data-dir={work / f'profile-{page.stem}-{width}'}",
                             f"--window-size={width},1000", "--virtual-time-budget=5000", "--dump-dom",
                             probed.as_uri()], capture_output=True, text=True, timeout=120)
    match = re.search(r'<pre id="__probe">(.*?)</pre>', result.stdout, re.S)
    assert match, f"no probe output (rc {result.returncode}): {result.stderr[-2000:]}"
    import html

    return json.loads(html.unescape(match.group(1)))


def screenshot(chromium: str, page: Path, out: Path, width: int = 1280, height: int = 3600) -> Path:
    """A PNG of `page` (the whole report at that window size), kept for people to look at."""
    subprocess.run([chromium, *FLAGS, f"--user-data-dir={out.parent / f'profile-shot-{out.stem}'}",
                    f"--window-size={width},{height}", f"--screenshot={out}", page.as_uri()],
                   capture_output=True, text=True, timeout=120, check=True)
    return out


def print_pdf(chromium: str, page: Path, out: Path) -> bytes:
    """The page as Chromium prints it (A4/Letter, print CSS), the PDF's bytes."""
    subprocess.run([chromium, *FLAGS, f"--user-data-dir={out.parent / f'profile-pdf-{out.stem}'}",
                    "--no-pdf-header-footer", f"--print-to-pdf={out}", page.as_uri()],
                   capture_output=True, text=True, timeout=120, check=True)
    return out.read_bytes()
