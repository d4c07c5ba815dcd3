"""`bastion simulate --sweep NAME=V1,V2,...`: the same jobs under each value of one parameter, per policy.

Parameters:
  cluster_size    GPUs in the cluster: every pool scaled by the same factor to whole nodes (at least one), so a
                  heterogeneous cluster keeps its mix; tenants keep their quotas
  fair_half_life  hours after which `fair` and `multifactor` count past usage half (SimConfig)
  launch_latency_s  seconds from a job's start to its first step (the inventory's)
The table has one row per value and policy with the scheduling figures; `sweep_chart` draws mean wait against
the value, one line per policy (report/svg.py's line chart); `sweep_page` puts the charts (mean and p90 wait,
utilisation) and the table in the report's HTML page (`--html PAGE`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from bastion.errors import ConfigError, did_you_mean
from bastion.numbers import MAX_LAUNCH_LATENCY_S
from bastion.sim.engine import SimConfig, SimResult
from bastion.sim.inputs import Inventory, make_pool


def _cluster_size(inventory: Inventory, config: SimConfig, gpus: float) -> tuple[Inventory, SimConfig]:
    factor = gpus / inventory.gpus
    pools = tuple(make_pool(p.name, p.accelerator, max(1, round(p.nodes * factor)), p.software)
                  for p in inventory.pools)
    return replace(inventory, pools=pools), config


def _half_life(inventory: Inventory, config: SimConfig, hours: float) -> tuple[Inventory, SimConfig]:
    return inventory, replace(config, fair_half_life_hours=hours)


def _launch(inventory: Inventory, config: SimConfig, seconds: float) -> tuple[Inventory, SimConfig]:
    return replace(inventory, launch_hours=seconds / 3600.0), config


#: parameter -> (apply a value, the bound on values, whether values must exceed it (else may equal it),
#: whether they must be whole numbers)
PARAMETERS: dict[str, tuple[Callable[[Inventory, SimConfig, float], tuple[Inventory, SimConfig]], float, bool,
                            bool]] = {
    "cluster_size": (_cluster_size, 0.0, True, True),
    "fair_half_life": (_half_life, 0.0, True, False),
    "launch_latency_s": (_launch, 0.0, False, False),
}
#: parameter -> the largest value it may take (the inventory field's own limit)
HIGHEST = {"launch_latency_s": MAX_LAUNCH_LATENCY_S}


@dataclass(frozen=True)
class Sweep:
    parameter: str
    values: tuple[float, ...]

    def apply(self, inventory: Inventory, config: SimConfig, value: float) -> tuple[Inventory, SimConfig]:
        return PARAMETERS[self.parameter][0](inventory, config, value)


def parse_sweep(text: str) -> Sweep:
    """`NAME=V1,V2,...` as a Sweep; a user mistake is a ConfigError."""
    example = "e.g. --sweep cluster_size=64,128,256"
    name, sep, values = text.partition("=")
    name = name.strip()
    if not sep or not values.strip():
        raise ConfigError(f"--sweep '{text}' is not NAME=V1,V2,...", fix=example)
    if name not in PARAMETERS:
        raise ConfigError(f"Unknown --sweep parameter '{name}'.{did_you_mean(name, PARAMETERS)}",
                          fix=f"use one of: {', '.join(PARAMETERS)}; {example}.")
    _, low, strictly, whole = PARAMETERS[name]
    parsed = []
    for item in values.split(","):
        try:
            value = float(item)
        except ValueError:
            raise ConfigError(f"--sweep {name}: '{item.strip()}' is not a number.", fix=example) from None
        if math.isnan(value) or value < low or (strictly and value == low):
            raise ConfigError(f"--sweep {name}: {item.strip()} must be {'>' if strictly else '>='} {low:g}.",
                              fix=example)
        if value > HIGHEST.get(name, math.inf):
            raise ConfigError(f"--sweep {name}: {item.strip()} must be <= {HIGHEST[name]:g}: that is beyond "
                              f"anything bastion simulates.", fix=example)
        if whole and not value.is_integer():
            raise ConfigError(f"--sweep {name}: {item.strip()} must be a whole number.", fix=example)
        parsed.append(value)
    return Sweep(name, tuple(dict.fromkeys(parsed)))


#: the figures of a sweep row (ClusterResult fields)
SWEEP_FIGURES = ("window_utilisation", "mean_wait_h", "p50_wait_h", "p90_wait_h", "mean_jct_h",
                 "mean_bounded_slowdown", "jain_fairness", "goodput", "interrupted_lost_gpu_hours")


def sweep_row(value: float, result: SimResult, gpus: int) -> dict[str, float | str]:
    """One table row: the value, the policy, the cluster's GPUs, jobs run and not runnable, the figures."""
    return {"value": value, "policy": result.policy, "gpus": gpus, "jobs": result.cluster.jobs,
            "unschedulable": result.cluster.unschedulable,
            **{name: getattr(result.cluster, name) for name in SWEEP_FIGURES}}


#: the page's charts: (figure, its axis label), one line per policy against the swept value
PAGE_CHARTS = (("mean_wait_h", "mean wait, h"), ("p90_wait_h", "p90 wait, h"),
               ("window_utilisation", "utilisation held in the window"))


def sweep_chart(parameter: str, rows: list[dict], figure: str = "mean_wait_h", label: str = "mean wait, h") -> str:
    """An SVG line chart of `figure` (mean wait) against the swept value, one line per policy."""
    from bastion.report.svg import Series, line_chart

    policies = list(dict.fromkeys(row["policy"] for row in rows))
    series = [Series(p, [(row["value"], row[figure]) for row in rows if row["policy"] == p])
              for p in policies]
    return line_chart(series, title=f"{label.split(',')[0]} by {parameter}", x_label=parameter, y_label=label)


def sweep_page(title: str, parameter: str, rows: list[dict]) -> str:
    """`--sweep ... --html PAGE`: the report's self-contained page (report/html.py: its style, chart script and
    tables) with the sweep's charts and its table."""
    from xml.sax.saxutils import escape

    from bastion.report.html import _page, _table

    # words that wrap, and few columns: the table fits a phone's width (a cluster size rounded to whole nodes
    # shows the GPUs it came to)
    header = [parameter.replace("_", " "), "policy", "util held", "wait mean h", "wait p90 h", "JCT h", "Jain"]
    table = [[f"{row['value']:g}" + (f" ({row['gpus']})" if parameter == "cluster_size" and row["gpus"] != row["value"]
                                     else ""), row["policy"], f"{row['window_utilisation']:.1%}",
              f"{row['mean_wait_h']:,.2f}", f"{row['p90_wait_h']:,.2f}", f"{row['mean_jct_h']:,.2f}",
              f"{row['jain_fairness']:.3f}"] for row in rows]
    unrun = [f"{row['policy']} at {row['value']:g}: {row['unschedulable']}" for row in rows if row["unschedulable"]]
    body = [f"<h1>{escape(title)}</h1>", "<h2>Figures by " + escape(parameter) + "</h2>",
            "<div class=\"charts\">", *(sweep_chart(parameter, rows, figure, label) for figure, label in PAGE_CHARTS),
            "</div>", "<h2>Every run</h2>", _table(header, table)]
    if unrun:
        body.append(f"<p class=\"note\">jobs no pool could run: {escape('; '.join(unrun))}</p>")
    return _page(title, body)
