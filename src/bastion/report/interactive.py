"""The page's script, inlined by html.py (a .py, not a .js file: package data holds only toml/json/csv/md).

bastion report: hover read-outs and x zoom for the page's SVG charts (report/svg.py), inline, no network.
Drag across a chart to zoom its x range (charts sharing the x axis follow); double-click to reset.
Every element placed by a data x carries it (data-x, data-xy, data-x0/data-x1) and each <svg> its axes
(data-axes), so zooming only recomputes pixel positions; the y axes stay as drawn.
"""

SCRIPT = r"""
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var charts = Array.prototype.slice.call(document.querySelectorAll("svg.chart[data-axes]"));
  var tip = document.createElement("div");
  tip.className = "tooltip";
  tip.style.display = "none";
  document.body.appendChild(tip);

  function niceTicks(lo, hi, count) {
    var raw = (hi - lo) / Math.max(count, 1), power = Math.pow(10, Math.floor(Math.log10(raw)));
    var mults = [1, 2, 2.5, 5, 10], step = 10 * power;
    for (var i = 0; i < mults.length; i++) { if (mults[i] * power >= raw * 0.999) { step = mults[i] * power; break; } }
    var out = [];
    for (var k = Math.ceil(lo / step - 1e-9); k * step <= hi + step * 1e-9; k++) { out.push(+(k * step).toPrecision(12)); }
    return {ticks: out, step: step};
  }
  function label(value, step) {
    var decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
    if (Math.abs(step / Math.pow(10, -decimals) % 1) > 1e-6) { decimals += 1; }
    return value.toLocaleString("en-US", {minimumFractionDigits: decimals, maximumFractionDigits: decimals});
  }
  // as many ticks as fit their labels side by side (svg.py _x_ticks: the same character width estimate)
  function fittingTicks(domain, width) {
    var counts = [8, 6, 5, 4, 3, 2], found = null;
    for (var i = 0; i < counts.length; i++) {
      found = niceTicks(domain[0], domain[1], counts[i]);
      var widest = Math.max.apply(null, found.ticks.map(function (t) { return label(t, found.step).length * 6.4; }));
      if (found.ticks.length < 2 || widest + 8 <= width / (found.ticks.length - 1)) { return found; }
    }
    return found;
  }
  function fmt(value) {
    var a = Math.abs(value);
    return (a !== 0 && (a >= 1e6 || a < 1e-3)) ? value.toExponential(3) : String(+value.toPrecision(5));
  }

  function setup(svg) {
    var axes = JSON.parse(svg.getAttribute("data-axes"));
    var plot = axes.plot, home = axes.x.slice();
    var ticks = svg.querySelector("g.xticks");
    svg.bastion = {axes: axes, domain: home.slice(), home: home, homeTicks: ticks ? ticks.innerHTML : ""};
    var guide = document.createElementNS(NS, "line");
    guide.setAttribute("class", "guide");
    guide.setAttribute("y1", plot[2]);
    guide.setAttribute("y2", plot[3]);
    guide.setAttribute("stroke", "#888888");
    guide.setAttribute("visibility", "hidden");
    svg.appendChild(guide);
    var band = document.createElementNS(NS, "rect");
    band.setAttribute("class", "zoom-band");
    band.setAttribute("y", plot[2]);
    band.setAttribute("height", plot[3] - plot[2]);
    band.setAttribute("fill", "rgba(31,119,180,0.15)");
    band.setAttribute("visibility", "hidden");
    svg.appendChild(band);
    var dragFrom = null;

    function toSvgX(event) {
      var box = svg.getBoundingClientRect();
      var viewWidth = svg.viewBox.baseVal.width;
      return (event.clientX - box.left) * viewWidth / box.width;
    }
    function toData(px) {
      var d = svg.bastion.domain;
      return d[0] + (px - plot[0]) / (plot[1] - plot[0]) * (d[1] - d[0]);
    }
    function inside(px) { return px >= plot[0] && px <= plot[1]; }

    svg.addEventListener("mousemove", function (event) {
      var px = toSvgX(event);
      if (dragFrom !== null) {
        var a = Math.max(plot[0], Math.min(dragFrom, px)), b = Math.min(plot[1], Math.max(dragFrom, px));
        band.setAttribute("x", a);
        band.setAttribute("width", Math.max(b - a, 0));
        band.setAttribute("visibility", "visible");
      }
      if (!inside(px)) { hide(); return; }
      guide.setAttribute("x1", px);
      guide.setAttribute("x2", px);
      guide.setAttribute("visibility", "visible");
      var x = toData(px), lines = [axes.x_label + " " + fmt(x)], nearest = null;
      svg.querySelectorAll("polyline[data-xy]").forEach(function (line) {
        var best = null;
        (line.getAttribute("data-xy") || "").split(" ").forEach(function (pair) {
          if (!pair) { return; }
          var xy = pair.split(",").map(Number);
          if (best === null || Math.abs(xy[0] - x) < Math.abs(best[0] - x)) { best = xy; }
        });
        if (best === null) { return; }
        if (nearest === null) { nearest = best[0]; }
        lines.push(line.getAttribute("data-series") + ": " + fmt(best[1]) + (best[0] === nearest ? "" : " at " + fmt(best[0])));
      });
      if (nearest !== null) { lines[0] = axes.x_label + " " + fmt(nearest); }
      tip.textContent = "";
      lines.forEach(function (text) { var row = document.createElement("div"); row.textContent = text; tip.appendChild(row); });
      tip.style.display = "block";
      var left = Math.min(event.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
      var top = Math.min(event.clientY + 14, window.innerHeight - tip.offsetHeight - 8);
      tip.style.left = Math.max(0, left) + "px";
      tip.style.top = Math.max(0, top) + "px";
    });
    function hide() { guide.setAttribute("visibility", "hidden"); tip.style.display = "none"; }
    svg.addEventListener("mouseleave", function () { hide(); dragFrom = null; band.setAttribute("visibility", "hidden"); });
    svg.addEventListener("mousedown", function (event) {
      var px = toSvgX(event);
      if (inside(px)) { dragFrom = px; event.preventDefault(); }
    });
    svg.addEventListener("mouseup", function (event) {
      if (dragFrom === null) { return; }
      var a = toData(Math.max(plot[0], Math.min(dragFrom, toSvgX(event))));
      var b = toData(Math.min(plot[1], Math.max(dragFrom, toSvgX(event))));
      dragFrom = null;
      band.setAttribute("visibility", "hidden");
      if (b - a > (svg.bastion.domain[1] - svg.bastion.domain[0]) / 200) { zoomShared(svg, [a, b]); }
    });
    svg.addEventListener("dblclick", function () { zoomShared(svg, null); });
  }

  function zoomShared(origin, domain) {
    var key = origin.bastion.axes.x_label;
    charts.forEach(function (svg) {
      if (svg.bastion.axes.x_label === key) { redraw(svg, domain || svg.bastion.home); }
    });
  }

  function redraw(svg, domain) {
    var state = svg.bastion, plot = state.axes.plot;
    var ticks = fittingTicks(domain, plot[1] - plot[0]);
    state.domain = domain;
    function px(x) { return plot[0] + (x - domain[0]) / (domain[1] - domain[0]) * (plot[1] - plot[0]); }
    function visible(x) { return x >= domain[0] && x <= domain[1]; }
    var y0 = state.axes.y ? state.axes.y : null;
    function py(y) { return plot[3] - (y - y0[0]) / (y0[1] - y0[0]) * (plot[3] - plot[2]); }
    svg.querySelectorAll("polyline[data-xy]").forEach(function (line) {
      var pts = (line.getAttribute("data-xy") || "").split(" ").filter(Boolean).map(function (pair) {
        var xy = pair.split(",").map(Number);
        return px(xy[0]).toFixed(1) + "," + py(xy[1]).toFixed(1);
      });
      line.setAttribute("points", pts.join(" "));
    });
    svg.querySelectorAll("[data-x]").forEach(function (el) {
      var x = Number(el.getAttribute("data-x")), p = px(x);
      el.setAttribute("visibility", visible(x) ? "visible" : "hidden");
      if (el.tagName === "line") { el.setAttribute("x1", p); el.setAttribute("x2", p); }
      else if (el.tagName === "circle") { el.setAttribute("cx", p); }
      else if (el.tagName === "path") { el.setAttribute("transform", el.getAttribute("transform").replace(/translate\([^ ]+ /, "translate(" + p.toFixed(2) + " ")); }
      else if (el.tagName === "text") { el.setAttribute("x", Math.min(p + 3, plot[1] - el.getComputedTextLength())); }
    });
    svg.querySelectorAll("rect[data-x0]").forEach(function (el) {
      var a = px(Number(el.getAttribute("data-x0"))), b = px(Number(el.getAttribute("data-x1")));
      el.setAttribute("x", a.toFixed(2));
      el.setAttribute("width", Math.max(b - a, 0.8).toFixed(2));
    });
    var group = svg.querySelector("g.xticks");
    if (group && domain === state.home) {
      group.innerHTML = state.homeTicks;
    } else if (group) {
      var labelY = plot[3] + 14;
      while (group.firstChild) { group.removeChild(group.firstChild); }
      ticks.ticks.forEach(function (t) {
        if (!visible(t)) { return; }
        var text = document.createElementNS(NS, "text");
        text.setAttribute("x", px(t).toFixed(1));
        text.setAttribute("y", labelY);
        text.setAttribute("text-anchor", "middle");
        text.textContent = label(t, ticks.step);
        group.appendChild(text);
      });
    }
  }

  charts.forEach(setup);
})();
"""
