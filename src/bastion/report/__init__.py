"""Accounting for a finished (or running) run, torch-free: `bastion report RUN_DIR`.

run_files.py reads the run directory; analysis.py computes the figures (predicted vs measured, where the wall time
went, loss), wallclock.py the Gantt timeline's spans and panel.py what ran (and in which precision); comparison.py
and text.py print them; svg.py (charts), interactive.py (hover and zoom) and html.py write the self-contained HTML
page, one run's or several runs' compared.
"""

from bastion.report.analysis import build_report
from bastion.report.comparison import comparison_rows, print_comparison
from bastion.report.run_files import RunDirError, RunFiles, load_run

__all__ = ["RunDirError", "RunFiles", "build_report", "comparison_rows", "load_run", "print_comparison"]
