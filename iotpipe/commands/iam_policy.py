"""`iotpipe iam-policy`: the least-privilege policy needed to run up / down / plan / status."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from iotpipe.commands.common import get_app
from iotpipe.errors import UsageError
from iotpipe.iam_policy import operator_policy
from iotpipe.naming import Names


def iam_policy(
    ctx: typer.Context,
    account_id: Annotated[
        str | None,
        typer.Option(help="AWS account id (12 digits); default: asked of STS for the credentials."),
    ] = None,
) -> None:
    """Print the IAM policy (JSON) a person or CI role needs to run up/down/plan/status."""
    app = get_app(ctx)
    config = app.config
    if account_id is not None and not re.fullmatch(r"\d{12}", account_id):
        raise UsageError(f"--account-id must be 12 digits, not {account_id!r}")
    aws = app.aws
    names = Names(
        stack=config.stack.name,
        app=config.stack.app,
        region=aws.region,
        account=account_id or aws.account_id,
        partition=aws.partition,
    )
    app.out.data(operator_policy(names))


def register(app: typer.Typer) -> None:
    app.command("iam-policy")(iam_policy)
