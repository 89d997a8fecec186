"""`iotpipe iam-policy`: the least-privilege policies a person or CI role needs, by job."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from iotpipe.commands.common import get_app
from iotpipe.errors import UsageError
from iotpipe.iam_policy import JOBS, job_policies
from iotpipe.naming import Names


def iam_policy(
    ctx: typer.Context,
    account_id: Annotated[
        str | None,
        typer.Option(help="AWS account id (12 digits); default: asked of STS for the credentials."),
    ] = None,
    job: Annotated[
        str | None,
        typer.Option(help=f"Only this job's documents: {', '.join(JOBS)}."),
    ] = None,
) -> None:
    """Print the least-privilege IAM policies for this stack, by job, as JSON.

    deploy: plan, up, down and status; give it to the person or CI role that deploys and tears
    the stack down.

    Each job's policy comes as a list of documents, each small enough for a customer managed
    policy (6,144 characters, whitespace not counted): create one policy per document
    (`aws iam create-policy --policy-document file://...`) and attach them all.
    """
    app = get_app(ctx)
    config = app.config
    if account_id is not None and not re.fullmatch(r"\d{12}", account_id):
        raise UsageError(f"--account-id must be 12 digits, not {account_id!r}")
    if job is not None and job not in JOBS:
        raise UsageError(f"--job must be one of {', '.join(JOBS)}, not {job!r}")
    aws = app.aws
    names = Names(
        stack=config.stack.name,
        app=config.stack.app,
        region=aws.region,
        account=account_id or aws.account_id,
        partition=aws.partition,
    )
    policies = job_policies(names, [job] if job else None)
    app.out.data(policies[job] if job else policies)


def register(app: typer.Typer) -> None:
    app.command("iam-policy")(iam_policy)
