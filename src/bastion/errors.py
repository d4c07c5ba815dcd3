"""Errors a user can cause, each carrying what is wrong and how to fix it.

The CLI prints `problem`, `To fix: ...` and `Hint: ...` and exits with code 2; a traceback is shown only
when BASTION_DEBUG=1. Components raise the most specific subclass so that callers (the planner's census of
rejected plans, for one) can count reasons without parsing messages.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

#: the exit status of every user mistake (the CLI, a worker that refuses a request, the launchers passing it on)
USER_ERROR_EXIT = 2

class BastionError(Exception):
    """Base of every error a user can fix."""

    #: short category used when counting failures (the planner's census)
    reason: str = "invalid input"

    def __init__(self, problem: str, fix: str | None = None, hint: str | None = None,
                 reason: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix
        self.hint = hint
        if reason is not None:
            self.reason = reason

    def render(self) -> str:
        lines = [self.problem]
        if self.fix:
            lines.append(f"To fix: {self.fix}")
        if self.hint:
            lines.append(f"Hint: {self.hint}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


class ConfigError(BastionError):
    """A model, cluster, case or config file that cannot be used as given."""

    reason = "bad config"


class UnknownPresetError(ConfigError):
    reason = "unknown preset"


class PlanError(BastionError):
    """A ParallelPlan that is inconsistent with itself, the model or the cluster."""

    reason = "invalid plan"


class InfeasiblePlan(PlanError):
    """A consistent plan that cannot run, e.g. because it does not fit in device memory."""

    reason = "out of memory"


class DataError(BastionError):
    reason = "bad data"


class CheckpointError(BastionError):
    reason = "bad checkpoint"


class LaunchError(BastionError):
    reason = "bad launch request"


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' Did you mean X?' or '' — appended to unknown-name messages."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""
