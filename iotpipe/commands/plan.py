"""`iotpipe plan`: what `up` would change; makes no change."""

from __future__ import annotations

import typer

from iotpipe.commands.common import get_app
from iotpipe.engine.reconcile import plan_up
from iotpipe.stack import build_resources


def plan(ctx: typer.Context) -> None:
    """Show what `up` would create, update (field: old -> new), replace or leave alone."""
    app = get_app(ctx)
    stack = app.stack
    result = plan_up(app.aws, build_resources(stack), stack.stack)
    if app.out.json_mode:
        app.out.data(result.to_dict())
    else:
        app.out.plan(result)


def register(app: typer.Typer) -> None:
    app.command()(plan)
