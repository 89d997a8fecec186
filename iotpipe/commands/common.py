"""Helpers shared by the commands: the app object, and show-confirm-execute for a plan."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from iotpipe.app import App
from iotpipe.engine.model import Plan
from iotpipe.engine.reconcile import execute
from iotpipe.errors import UsageError

YesOption = Annotated[
    bool,
    typer.Option("--yes", "-y", help="Do not ask for confirmation (needed without a terminal)."),
]


# Commands that print no table: `--output csv` is refused before they do anything.
NO_TABLE_COMMANDS = frozenset({"init", "iam-policy", "simulate", "devices shadow", "local serve"})


def get_app(ctx: typer.Context) -> App:
    app = ctx.find_root().obj
    command = ctx.command_path.partition(" ")[2]
    if app.out.csv_mode and command in NO_TABLE_COMMANDS:
        raise UsageError(
            f"`iotpipe {command}` prints no table: --output csv does not apply to it",
            hint="use --output table or --output json",
        )
    return app


def show_confirm_execute(
    app: App, plan: Plan, *, question: str, yes: bool, reverse: bool = False, title: str = "Plan"
) -> float:
    """Print the plan, ask, then execute it with a progress bar; returns the seconds it took."""
    out = app.out
    if not out.json_mode:
        # What will change; the resources already in shape are counted, listed with -v.
        out.plan(plan, title=title, unchanged=False)
    if plan.is_empty:
        return 0.0
    out.confirm(question, yes=yes)
    started = time.monotonic()
    with out.progress("applying", total=len(plan.changes)) as progress:
        execute(app.aws, plan, on_progress=progress.step_event, reverse=reverse)
    return time.monotonic() - started
