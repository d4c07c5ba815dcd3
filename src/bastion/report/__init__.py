"""Accounting for a finished (or running) run, torch-free: `bastion report RUN_DIR`.

run_files.py reads the run directory; analysis.py computes the figures (predicted vs measured, where the wall time
went, loss); comparison.py and text.py print them; svg.py and html.py write the self-contained HTML page.
"""

from bastion.report.analysis import build_report
from bastion.report.comparison import comparison_rows, print_comparison
from bastion.report.run_files import RunDirError, RunFiles, load_run

__all__ = ["RunDirError", "RunFiles", "build_report", "comparison_rows", "load_run", "print_comparison"]
