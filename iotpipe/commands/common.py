"""Helpers shared by the commands: the app object, and show-confirm-execute for a plan."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer

from iotpipe.engine.model import Plan
from iotpipe.engine.reconcile import execute

if TYPE_CHECKING:
    from iotpipe.cli import App

YesOption = Annotated[
    bool,
    typer.Option("--yes", "-y", help="Do not ask for confirmation (needed without a terminal)."),
]


def get_app(ctx: typer.Context) -> App:
    return ctx.find_root().obj


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
