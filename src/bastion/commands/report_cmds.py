"""`bastion report RUN_DIR`: predicted vs measured, what failures cost, and the loss of a run (reads files only)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bastion.cli import app
from bastion.commands import options
from bastion.commands.options import number_option


@app.command("report")
def report_command(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN_DIR...", help="Run directories written by `bastion "
                                          "train --run-dir`; several are compared on one page."),
    as_json: options.AsJson = False,  # several runs: a list of reports
    html: Path | None = typer.Option(None, "--html", help="Also write a self-contained HTML page (run panel, "
                                                          "charts with hover and zoom, timeline; no network) to "
                                                          "this file."),
    warmup_steps: Annotated[int, number_option("--warmup-steps", help="Step records at the start of the run "
                                               "left out of the measured step time (the first step after each "
                                               "restart is always left out).", integer=True, low=0,
                                               high=10**9)] = 1,
    cluster: str | None = typer.Option(None, "--cluster", help="Predict from plan.json + model.json on this "
                                       "cluster (default: the prediction summary.json recorded, if any)."),
) -> None:
    """Predicted vs measured step time, throughput, MFU and memory; wall time, restarts, recomputed steps,
    checkpoint stalls and goodput against the reliability model; loss and NaN rollbacks."""
    from bastion.outputs import dumps_json
    from bastion.report import build_report, load_run

    if html is not None and html.is_dir():
        from bastion.errors import ConfigError

        raise ConfigError(f"--html {html} is a directory.", fix=f"name the page to write: --html {html / 'report.html'}")
    if html is not None:
        from bastion.outputs import check_output_file
        from bastion.rundir.occupant import RUN_ENTRIES

        check_output_file(html, "the HTML report", fix=f"name a page to write in a directory you can write to, "
                                                       f"e.g. --html {Path('report.html')}",
                          keep=[run_dir / name for run_dir in run_dirs for name in RUN_ENTRIES])
    if cluster is not None:
        from bastion.specs.hardware import load_cluster

        load_cluster(cluster)  # a name that is no cluster is a guidance error, not a report without a prediction
    runs = [load_run(run_dir) for run_dir in run_dirs]
    reports = [build_report(run, warmup_steps=warmup_steps, cluster=cluster) for run in runs]
    if html is not None:
        from bastion.outputs import write_error
        from bastion.report.html import render_comparison, render_html
        from bastion.rundir.records import current_run

        pages = [(report, run.summary, current_run(run.records)) for report, run in zip(reports, runs, strict=True)]
        page = render_html(*pages[0]) if len(pages) == 1 else render_comparison(pages)
        try:
            html.parent.mkdir(parents=True, exist_ok=True)
            html.write_text(page)
        except OSError as exc:
            raise write_error(exc, html, "the HTML report", "give --html a path you can write to.") from exc
    if as_json:
        typer.echo(dumps_json(reports[0] if len(reports) == 1 else reports, indent=2, default=str))
        return
    from bastion.report.text import print_report

    for report, run in zip(reports, runs, strict=True):
        print_report(report, run.summary)
    if html is not None:
        typer.echo(f"wrote {html}")
