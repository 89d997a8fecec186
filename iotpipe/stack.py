"""The stack: the resources it is made of, built from its context (iotpipe.context)."""

from __future__ import annotations

from pathlib import Path

from iotpipe.context import StackContext
from iotpipe.engine.model import Resource
from iotpipe.permissions import Grant, reads

# The clients an observation of the whole stack uses, in the order it first needs them.
PIPELINE_SERVICES = (
    "sts",
    "s3",
    "kinesis",
    "dynamodb",
    "kms",
    "sns",
    "sqs",
    "iot",
    "iam",
    "logs",
    "lambda",
    "glue",
    "firehose",
    "athena",
    "cloudwatch",
)


def build_resources(ctx: StackContext, *, prewarm: bool = True) -> list[Resource]:
    """Every resource of the pipeline, in declaration order (the engine orders by dependency).

    What their desired state needs from AWS is probed first, once (StackContext.probe).
    """
    from iotpipe.resources import (
        athena,
        cloudwatch,
        dynamodb,
        firehose,
        glue,
        iot,
        kinesis,
        lambda_,
        s3,
        sns,
        sqs,
        timestream,
    )

    modules = [s3, kinesis, dynamodb, sns, sqs, iot, lambda_]
    modules += [timestream, glue, firehose, athena, cloudwatch]
    if prewarm:
        # The account id comes first (names need it); the clients get built meanwhile.
        timeseries = ["timestream-write"] if ctx.config.timeseries.enabled else []
        ctx.aws.prewarm(*PIPELINE_SERVICES, *timeseries)
    ctx.probe()
    return [resource for module in modules for resource in module.resources(ctx)]


def build_teardown_resources(
    ctx: StackContext, credentials: Path | None = None, *, prewarm: bool = True
) -> list[Resource]:
    """Everything the stack may own, including optional parts the config has since switched off,
    and its registered devices (whose credential folders are under `credentials`)."""
    from iotpipe.resources import iot

    everything = ctx.config.model_copy(
        update={"timeseries": ctx.config.timeseries.model_copy(update={"enabled": True})}
    )
    # `down` reads no desired state, so whether Timestream is usable need not be asked here: its
    # resources are looked for either way (an unusable account simply has none).
    usable = True if ctx.timeseries_usable is None else ctx.timeseries_usable
    whole = StackContext(everything, ctx.aws, ctx.account, usable)
    return [*build_resources(whole, prewarm=prewarm), iot.device_fleet(whole, credentials)]


def account_grants() -> list[Grant]:
    """Every command asks STS for the account id, which every ARN and the bucket name contain."""
    why = "IAM has no resource type for sts:GetCallerIdentity"
    return [reads(["sts:GetCallerIdentity"], "*", why=why)]
