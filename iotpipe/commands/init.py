"""`iotpipe init`: write a starter config."""

from __future__ import annotations

from typing import Annotated

import typer

from iotpipe.commands.common import get_app
from iotpipe.config import example_config_text
from iotpipe.errors import UsageError


def init(
    ctx: typer.Context,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a starter iotpipe.toml (every setting, with its default and why)."""
    app = get_app(ctx)
    path = app.config_path
    if path.exists() and not force:
        raise UsageError(f"{path} already exists", hint="pass --force to overwrite it")
    path.write_text(example_config_text(), encoding="utf-8")
    if app.out.json_mode:
        app.out.data({"written": str(path)})
    else:
        app.out.success(f"wrote {path}; edit [stack] name, then run `iotpipe plan`")


def register(app: typer.Typer) -> None:
    app.command()(init)
