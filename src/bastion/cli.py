"""The `bastion` command line: one typer app.

Each command family lives in its own module under `bastion/commands/` and registers itself on `app`. Heavy
imports (torch, matplotlib) happen only inside the command functions that need them, so `bastion --help` is
instant. Errors a user can fix print as a short paragraph and exit 2; BASTION_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import typer
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
from typer.exceptions import Abort

from bastion.errors import USER_ERROR_EXIT, BastionError

app = typer.Typer(
    name="bastion",
    help="Plan, run, recover and account hybrid-parallel LLM training on your own GPUs.",
    no_args_is_help=True,
    # typer's --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    add_completion=True,
    # -h as well as --help, on every command (click passes help_option_names on to sub-commands)
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    # Plain click help: typer's rich help pulls in rich.markdown/markdown-it (~0.15 s), and `--help` must be instant.
    rich_markup_mode=None,
)

def _print_version(value: bool) -> None:
    if value:
        from bastion import __version__

        typer.echo(f"bastion {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print bastion's version and exit.")) -> None:
    """Plan, run, recover and account hybrid-parallel LLM training on your own GPUs."""


# Registration order is the order in `--help`.
from bastion.commands import (  # noqa: E402,F401,I001
    catalog, predict_cmds, plan_cmds, train_cmds, launch_cmds, report_cmds, cost_cmds, sim_cmds, demo_cmds,
    export_cmds, calibrate_cmds,
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


#: the line width rich assumes when stdout is a pipe or a file (it cannot ask a terminal): wide enough that no
#: line is broken in the middle of a value; tables are as wide as their contents, not this
PIPED_COLUMNS = 4096


@contextlib.contextmanager
def _whole_lines_when_piped() -> Iterator[None]:
    """Output read by a program or kept in a file keeps its lines whole: rich wraps at 80 columns when stdout is
    not a terminal, unless COLUMNS says otherwise (a COLUMNS the user set is kept). For the command's duration
    (processes it starts inherit it), so a caller running `main` in-process gets its environment back."""
    if "COLUMNS" in os.environ or sys.stdout.isatty():
        yield
        return
    os.environ["COLUMNS"] = str(PIPED_COLUMNS)
    try:
        yield
    finally:
        os.environ.pop("COLUMNS", None)


def main(argv: list[str] | None = None) -> None:
    with _whole_lines_when_piped():
        _main(argv)


def usage_error(exc: UsageError) -> BastionError:
    """A command line click cannot parse (an unknown option or command, a missing one, a value of the wrong type)
    as a guidance error: what is wrong, and where the options and their values are listed."""
    problem = exc.format_message().strip()
    path = exc.ctx.command_path if exc.ctx is not None else app.info.name
    group = exc.ctx is not None and hasattr(exc.ctx.command, "commands")
    return BastionError(problem if problem.endswith((".", "?")) else f"{problem}.",
                        fix=f"see `{path} -h` for {'its commands' if group else 'its options and the values they take'}.")


def _main(argv: list[str] | None) -> None:
    debug = os.environ.get("BASTION_DEBUG") == "1"
    try:
        # not standalone: a usage error reaches this function, to be told like every other mistake
        code = app(args=argv, standalone_mode=False)
    except NoArgsIsHelpError as exc:  # `bastion` or a command group alone: its help, as click prints it
        exc.show()
        sys.exit(exc.exit_code)
    except UsageError as exc:
        report_error(usage_error(exc))
        sys.exit(USER_ERROR_EXIT)
    except ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Abort:
        typer.echo("Aborted!", err=True)
        sys.exit(1)
    except BastionError as exc:
        if debug:
            raise
        report_error(exc)
        sys.exit(USER_ERROR_EXIT)
    except KeyboardInterrupt:
        sys.exit(130)
    except OSError as exc:
        # a path the operating system refuses (a name too long, no permission, a full disk) wherever bastion met
        # it: the user's to fix, like a BastionError
        if debug:
            raise
        name = str(exc.filename or "")
        shown = name if len(name) <= 120 else f"{name[:60]}…({len(name)} characters)"
        report_error(BastionError(f"{exc.strerror or exc}{': ' + shown if shown else ''}.",
                                  fix="check the path (its length, that it exists, its permissions) and the free "
                                      "space, or give another path."))
        sys.exit(USER_ERROR_EXIT)
    # every command returns None; typer.Exit(code) comes back as its code
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
