"""`bastion report --html` in a real browser (Debian's headless Chromium): a clean run, a run with faults and a
comparison page load without script errors, nothing overflows the window (desktop and phone widths), no chart
label sits on another or outside its chart, and hover and drag-zoom respond. Screenshots stay in the test's
output directory (tmp_path) for people to look at.

The runs are real ones (tests/unit/data/run_clean: tiny, 2 processes, a bf16 plan on CPU, async checkpoints;
run_faults: a rank killed at step 5 and a NaN at step 9, one restart and one rollback), their checkpoint shards
left out. `.ci/run` installs chromium when it is absent; without it these tests are skipped, saying why.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from browser import find_chromium, print_pdf, probe_page, screenshot

DATA = Path(__file__).parent / "data"
CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (`apt-get install -y chromium`; "
                                                         ".ci/run installs it)")


def write_report(out: Path, *runs: str) -> Path:
    """The page as a user makes it: `bastion report RUN_DIR… --html OUT`."""
    page = out / f"{'-vs-'.join(runs)}.html"
    result = subprocess.run([sys.executable, "-m", "bastion", "report", *(str(DATA / r) for r in runs),
                             "--html", str(page)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    return page


def assert_clean_page(found: dict, charts: int) -> None:
    assert found["errors"] == []
    assert found["page"]["scrollWidth"] <= found["page"]["clientWidth"], "the page scrolls sideways"
    assert found["overflowing"] == []
    assert found["overlaps"] == [], "chart labels overlap"
    assert found["outside"] == [], "chart labels outside their chart"
    assert len(found["charts"]) == charts


@pytest.mark.parametrize(("runs", "charts", "first_series"), [
    (("run_clean",), 9, "loss"),
    (("run_faults",), 9, "loss"),
    (("run_clean", "run_faults"), 7, "run_faults"),  # the comparison overlays one line per run
])
def test_report_pages_render_cleanly_at_desktop_and_phone_widths(tmp_path, runs, charts, first_series):
    page = write_report(tmp_path, *runs)
    for width in (1280, 500):
        found = probe_page(CHROMIUM, page, tmp_path, width)
        assert_clean_page(found, charts)
        # hover shows the values of every line near the cursor; a drag zooms in (finer ticks); a double-click resets
        assert found["hover"] and first_series in found["hover"]
        assert found["zoom"]["zoomed"] != found["zoom"]["before"]
        assert found["zoom"]["reset"].split() == found["zoom"]["before"].split()
        shot = screenshot(CHROMIUM, page, tmp_path / f"{page.stem}-{width}.png", width=width)
        assert shot.stat().st_size > 10_000
    print(f"screenshots: {tmp_path}")


def test_the_faulty_run_shows_its_failures_on_the_timeline_and_the_clean_run_its_precision(tmp_path):
    faults = write_report(tmp_path, "run_faults").read_text()
    for row in ("steps redone", "recovery", "checkpoint stall", "checkpoint write"):
        assert f">{row}</text>" in faults
    clean = write_report(tmp_path, "run_clean").read_text()
    assert "this run computed in fp32" in clean and "steps redone" not in clean


def test_the_report_prints(tmp_path):
    """Printed (the print stylesheet: no tooltip or hint, charts kept whole), a run's page is a PDF of a few pages."""
    pdf = print_pdf(CHROMIUM, write_report(tmp_path, "run_faults"), tmp_path / "run_faults.pdf")
    pages = len(re.findall(rb"/Type\s*/Page[^s]", pdf))
    assert pdf.startswith(b"%PDF") and 2 <= pages <= 12
