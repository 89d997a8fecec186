"""The stack: the config, the AWS account it lives in, and the resources it is made of."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from iotpipe.aws import Aws
from iotpipe.config import Config
from iotpipe.engine.model import STACK_TAG, Resource
from iotpipe.naming import Names
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


@dataclass
class StackContext:
    config: Config
    aws: Aws
    # The account the stack's ARNs name; asked of STS when not given.
    account: str | None = None
    # Whether the account may use Timestream; probed when not given.
    timeseries_usable: bool | None = None

    @property
    def stack(self) -> str:
        return self.config.stack.name

    @cached_property
    def names(self) -> Names:
        return Names(
            stack=self.stack,
            app=self.config.stack.app,
            region=self.aws.region,
            account=self.account or self.aws.account_id,
            partition=self.aws.partition,
        )

    @cached_property
    def timeseries_active(self) -> bool:
        """Configured and available: the processor writes time series only then."""
        from iotpipe.resources import timestream

        if not self.config.timeseries.enabled:
            return False
        if self.timeseries_usable is None:
            self.timeseries_usable = timestream.available(self.aws)
        return self.timeseries_usable

    @property
    def tags(self) -> dict[str, str]:
        return {STACK_TAG: self.stack}

    @property
    def tag_list(self) -> list[dict[str, str]]:
        """The tags in the Key/Value list form most AWS APIs take."""
        return [{"Key": k, "Value": v} for k, v in self.tags.items()]


def build_resources(ctx: StackContext, *, prewarm: bool = True) -> list[Resource]:
    """Every resource of the pipeline, in declaration order (the engine orders by dependency)."""
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
    whole = StackContext(everything, ctx.aws, ctx.account, ctx.timeseries_usable)
    return [*build_resources(whole, prewarm=prewarm), iot.device_fleet(whole, credentials)]


def account_grants() -> list[Grant]:
    """Every command asks STS for the account id, which every ARN and the bucket name contain."""
    why = "IAM has no resource type for sts:GetCallerIdentity"
    return [reads(["sts:GetCallerIdentity"], "*", why=why)]
