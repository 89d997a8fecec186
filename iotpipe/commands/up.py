"""`iotpipe up`: reconcile every resource of the stack with the config."""

from __future__ import annotations

import typer

from iotpipe.commands.common import YesOption, get_app, show_confirm_execute
from iotpipe.engine.reconcile import plan_up
from iotpipe.stack import build_resources


def up(ctx: typer.Context, yes: YesOption = False) -> None:
    """Create or update whatever differs from the config; a second run changes nothing."""
    app = get_app(ctx)
    stack = app.stack
    result = plan_up(app.aws, build_resources(stack), stack.stack)
    seconds = show_confirm_execute(
        app, result, question=f"Apply these changes to stack {stack.stack!r}?", yes=yes
    )
    # A skipped optional resource is not a failure: say why and how to stop seeing it.
    for step in result.skipped:
        app.out.warn(f"{step.resource.label} skipped: {step.note}")
    # A change AWS allows only later is not a failure either: say when to finish it.
    for step in result.deferred:
        app.out.warn(f"{step.resource.label}: {step.note}")
    if app.out.json_mode:
        app.out.data(
            {**result.to_dict(), "applied": not result.is_empty, "seconds": round(seconds, 1)}
        )
    elif result.is_empty:
        app.out.success("stack is up to date; nothing changed")
    else:
        app.out.success(
            f"stack {stack.stack!r} is up: {len(result.changes)} change(s) in {seconds:.1f} s"
        )


def register(app: typer.Typer) -> None:
    app.command()(up)
