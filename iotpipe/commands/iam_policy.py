"""`iotpipe iam-policy`: the least-privilege policies a person or CI role needs, by job."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from iotpipe.commands.common import get_app
from iotpipe.context import StackContext
from iotpipe.errors import UsageError
from iotpipe.iam_policy import JOBS, job_policies


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

    deploy: plan, up, down and status; for the person or CI role that deploys and tears the
    stack down.

    operate: devices (register, list, show, shadow, revoke), reshard, query, status and
    simulate; for whoever runs the deployed pipeline day to day.

    read-only: plan, status, devices list and show, cost; for whoever watches and changes
    nothing.

    Each policy names this stack's own resources only (generate it again after renaming the
    stack or changing its region or account). It comes as a list of documents, each small
    enough for a customer managed policy (6,144 characters, whitespace not counted): create one
    policy per document (`aws iam create-policy --policy-document file://...`) and attach them
    all. Without --job, the documents of every job are printed, keyed by job.
    """
    app = get_app(ctx)
    config = app.config
    if account_id is not None and not re.fullmatch(r"\d{12}", account_id):
        raise UsageError(f"--account-id must be 12 digits, not {account_id!r}")
    if job is not None and job not in JOBS:
        raise UsageError(f"--job must be one of {', '.join(JOBS)}, not {job!r}")
    aws = app.aws
    # The policy covers Timestream whether or not this account may use it today.
    stack = StackContext(config, aws, account_id or aws.account_id, timeseries_usable=True)
    policies = job_policies(stack, [job] if job else None)
    app.out.data(policies[job] if job else policies)


def register(app: typer.Typer) -> None:
    app.command("iam-policy")(iam_policy)
