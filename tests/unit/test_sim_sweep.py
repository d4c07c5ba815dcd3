"""`bastion simulate --sweep`: one row per value and policy, figures computed by hand on a tiny trace, the chart,
and guidance for a bad sweep."""

from __future__ import annotations

import json

import pytest

import bastion.commands.sim_cmds  # noqa: F401  (registers `simulate` until cli.py imports it)
from bastion.cli import main
from bastion.sim.inputs import load_inventory
from bastion.sim.sweep import parse_sweep


@pytest.fixture
def tiny(tmp_path):
    cluster = tmp_path / "one-node.toml"
    cluster.write_text('name = "one-node"\n[[pool]]\nname = "h100"\naccelerator = "h100-sxm"\nnodes = 1\n'
                       '[[tenant]]\nname = "team"\nquota_gpus = 8\n')
    trace = tmp_path / "two.csv"  # two one-hour jobs of a whole node each, at once
    trace.write_text("submit_time,duration_s,gpus,queue,user,time_limit_s,final_state,accelerator\n"
                     "0,3600,8,team,u,,,\n0,3600,8,team,u,,,\n")
    return ["simulate", "--cluster", str(cluster), "--trace", str(trace)]


def simulate_cli(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0


def test_a_cluster_size_sweep_reruns_each_policy_on_the_scaled_cluster(tiny, capsys) -> None:
    simulate_cli([*tiny, "-p", "fifo", "-p", "sjf", "--sweep", "cluster_size=8,16", "--json"])
    sweep = json.loads(capsys.readouterr().out)["sweep"]
    assert sweep["parameter"] == "cluster_size" and sweep["values"] == [8, 16]
    rows = {(row["value"], row["policy"]): row for row in sweep["rows"]}
    assert set(rows) == {(8, "fifo"), (8, "sjf"), (16, "fifo"), (16, "sjf")}
    # one node: the second job waits the first's hour; two nodes: neither waits
    assert [rows[8, "fifo"]["gpus"], rows[8, "fifo"]["mean_wait_h"]] == [8, 0.5]
    assert [rows[16, "fifo"]["gpus"], rows[16, "fifo"]["mean_wait_h"]] == [16, 0.0]
    assert sweep["chart_svg"].startswith("<svg") and "mean wait by cluster_size" in sweep["chart_svg"]


def test_the_sweep_table_has_a_row_per_value_and_policy(tiny, capsys) -> None:
    simulate_cli([*tiny, "--sweep", "launch_latency_s=0,1800"])
    out = capsys.readouterr().out
    lines = [line.split() for line in out.splitlines() if line.strip().startswith(("0 ", "1800 "))]
    # backfill: waits 0 and 1 h, then 0 and 1.5 h with a half-hour launch before each run
    assert [(line[0], line[1], line[4]) for line in lines] == [("0", "backfill", "0.50"), ("1800", "backfill", "0.75")]


def test_parse_sweep_scales_pools_alike() -> None:
    from pathlib import Path

    from bastion.sim import SimConfig

    inv = load_inventory(Path(__file__).resolve().parents[2] / "examples" / "sim" / "trace-cluster.toml")
    scaled, _ = parse_sweep("cluster_size=80").apply(inv, SimConfig(), 80)
    assert [p.nodes for p in scaled.pools] == [6, 4] and scaled.gpus == 80  # 96 + 64 GPUs halved


@pytest.mark.parametrize("text, message", [("cluster_size", "is not NAME=V1,V2"),
                                           ("clustre_size=8", "Did you mean 'cluster_size'"),
                                           ("cluster_size=8,x", "'x' is not a number"),
                                           ("cluster_size=0", "must be > 0"),
                                           ("cluster_size=8.5", "whole number"),
                                           ("launch_latency_s=-1", "must be >= 0"),
                                           # the inventory field's limit (with node failures, 1e30 s ran without end)
                                           ("launch_latency_s=1e30", "must be <= 604800")])
def test_a_bad_sweep_is_a_guidance_error(tiny, capsys, text, message) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*tiny, "--sweep", text])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and "Traceback" not in err


def test_the_sweep_page_holds_the_charts_with_the_sweeps_values(tiny, tmp_path, capsys) -> None:
    import xml.etree.ElementTree as ET

    page = tmp_path / "out" / "sweep.html"
    simulate_cli([*tiny, "-p", "fifo", "-p", "sjf", "--sweep", "cluster_size=8,16", "--html", str(page)])
    assert str(page) in capsys.readouterr().out
    root = ET.fromstring(page.read_text().removeprefix("<!DOCTYPE html>\n"))  # well-formed, as the report's
    svgs = root.findall(".//{http://www.w3.org/2000/svg}svg") or root.findall(".//svg")
    assert len(svgs) == 3
    titles = [" ".join(svg.itertext()) for svg in svgs]
    assert "mean wait by cluster_size" in titles[0] and "fifo" in titles[0] and "sjf" in titles[0]
    cells = [[td.text for td in tr] for tr in root.iter("tr")]
    # one row per value and policy, with the mean waits worked out by hand (0.5 h on one node, none on two; both
    # submitted at once, so the window is the makespan, every GPU held throughout)
    assert [row[:4] for row in cells[1:]] == [
        ["8", "fifo", "100.0%", "0.50"], ["8", "sjf", "100.0%", "0.50"],
        ["16", "fifo", "100.0%", "0.00"], ["16", "sjf", "100.0%", "0.00"]]


def test_html_without_a_sweep_is_a_guidance_error(tiny, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*tiny, "--html", str(tmp_path / "x.html")])
    assert exc.value.code == 2 and "needs --sweep" in capsys.readouterr().err
