"""The `bastion` command line: one typer app.

Each command family lives in its own module under `bastion/commands/` and registers itself on `app`. Heavy
imports (torch, matplotlib) happen only inside the command functions that need them, so `bastion --help` is
instant. Errors a user can fix print as a short paragraph and exit 2; BASTION_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import os
import sys

import typer

from bastion.errors import BastionError

app = typer.Typer(
    name="bastion",
    help="Plan, run, recover and account hybrid-parallel LLM training on your own GPUs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: typer's rich help pulls in rich.markdown/markdown-it (~0.15 s), and `--help` must be instant.
    rich_markup_mode=None,
)

# Registration order is the order in `--help`.
from bastion.commands import (  # noqa: E402,F401,I001
    catalog, predict_cmds, plan_cmds, train_cmds, launch_cmds, report_cmds, cost_cmds, sim_cmds, demo_cmds,
    calibrate_cmds,
)


def report_error(exc: BastionError) -> None:
    from rich.console import Console
    from rich.markup import escape

    # the texts are plain: a "[network] table" or "--gpus [64]" must print as written, not as rich markup
    console = Console(stderr=True, highlight=False)
    console.print(f"[bold red]error:[/] {escape(exc.problem)}", soft_wrap=True)
    if exc.fix:
        console.print(f"[bold]To fix:[/] {escape(exc.fix)}", soft_wrap=True)
    if exc.hint:
        console.print(f"[bold]Hint:[/] {escape(exc.hint)}", soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    debug = os.environ.get("BASTION_DEBUG") == "1"
    try:
        app(args=argv, standalone_mode=True)
    except BastionError as exc:
        if debug:
            raise
        report_error(exc)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
