"""`iotpipe down`: delete what the stack owns, keeping data unless asked."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from iotpipe.commands.common import YesOption, get_app, show_confirm_execute
from iotpipe.engine.model import Action
from iotpipe.engine.reconcile import plan_down
from iotpipe.stack import build_teardown_resources


def down(
    ctx: typer.Context,
    yes: YesOption = False,
    delete_data: Annotated[
        bool,
        typer.Option(
            "--delete-data",
            help="Also delete the data stores (archive bucket, tables) and revoke and delete "
            "the stack's devices.",
        ),
    ] = False,
    devices_dir: Annotated[
        Path,
        typer.Option(
            help="Where `devices register` wrote credentials: a deleted device's folder is removed."
        ),
    ] = Path("devices"),
) -> None:
    """Delete every resource the stack owns, in reverse dependency order.

    Registered devices are kept, with the thing type and policy they need, unless --delete-data.
    """
    app = get_app(ctx)
    stack = app.stack
    resources = build_teardown_resources(stack, devices_dir)
    result = plan_down(app.aws, resources, stack.stack, delete_data=delete_data)
    question = f"Delete these resources of stack {stack.stack!r}?"
    if delete_data:
        question = f"Delete these resources of stack {stack.stack!r}, DATA INCLUDED?"
    seconds = show_confirm_execute(
        app, result, question=question, yes=yes, reverse=True, title="Teardown"
    )
    # Kept resources (devices, data) and steps AWS allows only later are said plainly.
    for step in result.steps:
        if step.action is Action.KEEP and step.resource.kind == "iot.devices":
            app.out.warn(f"{step.resource.label}: {step.note}")
    for step in [*result.skipped, *result.deferred]:
        app.out.warn(f"{step.resource.label}: {step.note}")
    if app.out.json_mode:
        app.out.data({**result.to_dict(), "seconds": round(seconds, 1)})
    elif result.is_empty:
        app.out.success("nothing of the stack is left to delete")
    else:
        app.out.success(f"deleted {len(result.changes)} resource(s) in {seconds:.1f} s")


def register(app: typer.Typer) -> None:
    app.command()(down)
