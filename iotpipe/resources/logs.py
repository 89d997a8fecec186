"""CloudWatch Logs: log groups created ahead of their service, so retention is ours to set, and
the log streams a service writes to but does not create."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from iotpipe.engine.fields import Field, Tagging, call
from iotpipe.engine.model import Resource
from iotpipe.permissions import Grant, lifecycle, reads, writes

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.context import StackContext
    from iotpipe.naming import Names

# CloudWatch Logs authorizes some log-group actions on the group's ARN and others on it followed
# by ":*" (its log streams); both forms are granted for the stack's own groups only.
LOG_STREAMS_WHY = (
    'the group\'s log streams (":*"), which some CloudWatch Logs actions are authorized on'
)


def group_arns(names: Names, group: str) -> list[str]:
    arn = names.arn("logs", f"log-group:{group}")
    return [arn, f"{arn}:*"]


# A log group's tags: read and written by its name.
GROUP_TAGGING = Tagging(
    "logs",
    "list_tags_log_group",
    "tag_log_group",
    lambda r, raw: {"logGroupName": r.name},
    shape="map",
    found="tags",
    param="tags",
)


class LogGroup(Resource):
    kind = "logs.group"
    absent = ("ResourceNotFoundException",)
    present = ("ResourceAlreadyExistsException",)
    fields = (Field("retention_days", "retentionInDays", "put_retention_policy"),)
    writes = (
        call(
            "logs",
            "put_retention_policy",
            lambda r, want, have: {
                "logGroupName": r.name,
                "retentionInDays": want["retention_days"],
            },
        ),
    )
    tagging = GROUP_TAGGING

    def __init__(self, ctx: StackContext, name: str, *, retention_days: int) -> None:
        super().__init__(ctx, name)
        self.retention_days = retention_days

    def grants(self) -> list[Grant]:
        return [
            reads(
                ["logs:DescribeLogGroups"],
                "*",
                why="IAM has no resource type for logs:DescribeLogGroups",
            ),
            # CreateLogGroup with tags takes logs:TagLogGroup (or logs:TagResource) too
            # (CloudWatch Logs API reference, CreateLogGroup).
            *lifecycle(
                group_arns(self.ctx.names, self.name),
                self.ctx.stack,
                read=["logs:ListTagsLogGroup"],
                write=["logs:CreateLogGroup", "logs:PutRetentionPolicy", "logs:TagLogGroup"],
                delete=["logs:DeleteLogGroup"],
                why=LOG_STREAMS_WHY,
            ),
        ]

    def desired(self) -> dict[str, Any]:
        # Without a retention the logs are kept (and billed) forever.
        return {"tags": self.ctx.tags, "retention_days": self.retention_days}

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        groups = aws.paginate(
            "logs",
            "describe_log_groups",
            resource=self.label,
            key="logGroups",
            logGroupNamePrefix=self.name,
        )
        return next((g for g in groups if g["logGroupName"] == self.name), None)

    def create(self, aws: Aws) -> None:
        self.make(aws, "create_log_group", logGroupName=self.name, tags=self.ctx.tags)

    def delete(self, aws: Aws) -> None:
        self.remove(aws, "delete_log_group", logGroupName=self.name)


class LogStream(Resource):
    """A log stream a service writes to but does not create itself (Firehose's delivery errors)."""

    kind = "logs.stream"
    absent = ("ResourceNotFoundException",)
    present = ("ResourceAlreadyExistsException",)
    # A stream cannot be tagged: it belongs to whoever owns its group.
    tagging = replace(GROUP_TAGGING, write=None, target=lambda r, raw: {"logGroupName": r.group})

    joiner = ":"

    def __init__(self, ctx: StackContext, name: str, group: LogGroup) -> None:
        super().__init__(ctx, name, within=group)
        self.group = group.name

    def grants(self) -> list[Grant]:
        groups = group_arns(self.ctx.names, self.group)
        return [
            reads(
                ["logs:DescribeLogStreams", "logs:ListTagsLogGroup"], groups, why=LOG_STREAMS_WHY
            ),
            writes(["logs:CreateLogStream", "logs:DeleteLogStream"], groups, why=LOG_STREAMS_WHY),
        ]

    def desired(self) -> dict[str, Any]:
        return {}

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        found = self.find(
            aws, "describe_log_streams", logGroupName=self.group, logStreamNamePrefix=self.name
        )
        streams = (found or {}).get("logStreams", [])
        return next((st for st in streams if st["logStreamName"] == self.name), None)

    def create(self, aws: Aws) -> None:
        self.make(aws, "create_log_stream", logGroupName=self.group, logStreamName=self.name)

    def delete(self, aws: Aws) -> None:
        self.remove(aws, "delete_log_stream", logGroupName=self.group, logStreamName=self.name)
