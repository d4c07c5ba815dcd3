"""`bastion report RUN_DIR`: predicted vs measured, what failures cost, and the loss of a run (reads files only)."""

from __future__ import annotations

from pathlib import Path

import typer

from bastion.cli import app


@app.command("report")
def report_command(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN_DIR...", help="Run directories written by `bastion train --run-dir`; "
                                          "several are compared on one page."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole report as one JSON object (a list of "
                                                       "them for several runs)."),
    html: Path | None = typer.Option(None, "--html", help="Also write a self-contained HTML page (run panel, "
                                                          "charts with hover and zoom, timeline; no network) to "
                                                          "this file."),
    warmup_steps: int = typer.Option(1, "--warmup-steps", min=0, help="Step records at the start of the run "
                                     "left out of the measured step time (the first step after each restart "
                                     "is always left out)."),
    cluster: str | None = typer.Option(None, "--cluster", help="Predict from plan.json + model.json on this "
                                       "cluster (default: the prediction summary.json recorded, if any)."),
) -> None:
    """Predicted vs measured step time, throughput, MFU and memory; wall time, restarts, recomputed steps,
    checkpoint stalls and goodput against the reliability model; loss and NaN rollbacks."""
    import json

    from bastion.report import build_report, load_run

    if html is not None and html.is_dir():
        from bastion.errors import ConfigError

        raise ConfigError(f"--html {html} is a directory.", fix=f"name the page to write: --html {html / 'report.html'}")
    runs = [load_run(run_dir) for run_dir in run_dirs]
    reports = [build_report(run, warmup_steps=warmup_steps, cluster=cluster) for run in runs]
    if html is not None:
        from bastion.report.html import render_comparison, render_html
        from bastion.rundir.records import current_run

        pages = [(report, run.summary, current_run(run.records)) for report, run in zip(reports, runs, strict=True)]
        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(render_html(*pages[0]) if len(pages) == 1 else render_comparison(pages))
    if as_json:
        typer.echo(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2, default=str))
        return
    from bastion.report.text import print_report

    for report, run in zip(reports, runs, strict=True):
        print_report(report, run.summary)
    if html is not None:
        typer.echo(f"wrote {html}")
