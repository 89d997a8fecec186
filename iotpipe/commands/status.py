"""`iotpipe status`: each resource in sync, drifted or missing, and the pipeline's health."""

from __future__ import annotations

import typer

from iotpipe.commands.common import get_app
from iotpipe.engine.reconcile import status as observe_status
from iotpipe.health import Health
from iotpipe.stack import build_resources

# An optional resource AWS does not offer to this account is reported, not counted against health.
_FINE_STATES = frozenset({"in sync", "unavailable"})


def status(ctx: typer.Context) -> None:
    """Resources (in sync, drifted, missing) and health; exit 1 when anything is unhealthy."""
    app = get_app(ctx)
    stack = app.stack
    lines = observe_status(app.aws, build_resources(stack))
    checks = Health(app.aws, stack).run()
    in_sync = all(line.state in _FINE_STATES for line in lines)
    healthy = in_sync and all(check.healthy for check in checks)
    out = app.out
    if out.json_mode:
        out.data(
            {
                "healthy": healthy,
                "resources": [line.to_dict() for line in lines],
                "health": [check.to_dict() for check in checks],
            }
        )
    else:
        out.status_lines(lines)
        out.table(
            ["check", "state", "detail"],
            [(check.name, check.state, check.detail) for check in checks],
            title="Health",
            aside=True,
        )
        if not in_sync:
            out.warn("some resources are missing or drifted: `iotpipe plan` shows the fix")
        unhealthy = [check.name for check in checks if not check.healthy]
        if unhealthy:
            out.warn(f"unhealthy: {', '.join(unhealthy)}")
        if healthy:
            out.success("healthy: every resource in sync, every check passes")
    if not healthy:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(status)
