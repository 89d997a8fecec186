"""`iotpipe down`: delete what the stack owns, keeping data unless asked."""

from __future__ import annotations

from typing import Annotated

import typer

from iotpipe.commands.common import YesOption, get_app, show_confirm_execute
from iotpipe.engine.reconcile import plan_down
from iotpipe.stack import build_teardown_resources


def down(
    ctx: typer.Context,
    yes: YesOption = False,
    delete_data: Annotated[
        bool,
        typer.Option("--delete-data", help="Also delete the data stores (archive bucket, tables)."),
    ] = False,
) -> None:
    """Delete every resource the stack owns, in reverse dependency order."""
    app = get_app(ctx)
    stack = app.stack
    resources = build_teardown_resources(stack)
    result = plan_down(app.aws, resources, stack.stack, delete_data=delete_data)
    question = f"Delete these resources of stack {stack.stack!r}?"
    if delete_data:
        question = f"Delete these resources of stack {stack.stack!r}, DATA INCLUDED?"
    seconds = show_confirm_execute(
        app, result, question=question, yes=yes, reverse=True, title="Teardown"
    )
    if app.out.json_mode:
        app.out.data({**result.to_dict(), "seconds": round(seconds, 1)})
    elif result.is_empty:
        app.out.success("nothing of the stack is left to delete")
    else:
        app.out.success(f"deleted {len(result.changes)} resource(s) in {seconds:.1f} s")


def register(app: typer.Typer) -> None:
    app.command()(down)
