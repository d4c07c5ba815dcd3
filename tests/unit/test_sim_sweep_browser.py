"""`bastion simulate --sweep ... --html` in a real browser (Debian's headless Chromium, as the report's pages are
checked in test_report_browser.py): the page loads without script errors, nothing overflows, no chart label
sits on another or outside its chart, at desktop and phone widths. Skipped, saying why, without chromium."""

from __future__ import annotations

import pytest
from browser import find_chromium, probe_page

import bastion.commands.sim_cmds  # noqa: F401  (registers `simulate` until cli.py imports it)
from bastion.cli import main

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (`apt-get install -y chromium`; "
                                                         ".ci/run installs it)")


def test_the_sweep_page_renders_cleanly(tmp_path) -> None:
    cluster = tmp_path / "one-node.toml"
    cluster.write_text('name = "one-node"\n[[pool]]\nname = "h100"\naccelerator = "h100-sxm"\nnodes = 1\n'
                       '[[tenant]]\nname = "team"\nquota_gpus = 8\n')
    trace = tmp_path / "three.csv"
    trace.write_text("submit_time,duration_s,gpus,queue,user,time_limit_s,final_state,accelerator\n"
                     "0,3600,8,team,u,,,\n0,7200,4,team,u,,,\n600,3600,8,team,u,,,\n")
    page = tmp_path / "sweep.html"
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--cluster", str(cluster), "--trace", str(trace), "-p", "fifo", "-p", "sjf", "-p", "gavel",
              "--sweep", "cluster_size=8,16,32", "--html", str(page)])
    assert exc.value.code == 0
    for width in (1280, 500):
        found = probe_page(CHROMIUM, page, tmp_path, width)
        assert found["errors"] == []
        assert found["page"]["scrollWidth"] <= found["page"]["clientWidth"], "the page scrolls sideways"
        assert found["overflowing"] == [] and found["overlaps"] == [] and found["outside"] == []
        assert len(found["charts"]) == 3
        assert found["hover"] and "fifo" in found["hover"]
