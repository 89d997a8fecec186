"""`iotpipe status`: each resource in sync, drifted or missing."""

from __future__ import annotations

import typer

from iotpipe.commands.common import get_app
from iotpipe.engine.reconcile import status as observe_status
from iotpipe.stack import build_resources


def status(ctx: typer.Context) -> None:
    """Show each resource as in sync, drifted or missing; exit 1 when any is not in sync."""
    app = get_app(ctx)
    stack = app.stack
    lines = observe_status(app.aws, build_resources(stack))
    healthy = all(line.state == "in sync" for line in lines)
    if app.out.json_mode:
        app.out.data({"healthy": healthy, "resources": [line.to_dict() for line in lines]})
    else:
        app.out.status_lines(lines)
        if healthy:
            app.out.success("every resource is in sync")
        else:
            app.out.warn("some resources are missing or drifted: `iotpipe plan` shows the fix")
    if not healthy:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(status)
