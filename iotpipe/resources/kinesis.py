"""Kinesis Data Streams: the readings stream; shard-count changes step through `resharding`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from iotpipe.engine.model import Change, Resource
from iotpipe.errors import AwsError
from iotpipe.permissions import Grant, owned, reads, writes
from iotpipe.resharding import ReshardPlan, plan_for_stream, reshard_steps
from iotpipe.resharding import grants as resharding_grants
from iotpipe.resources.deletion import DELETING, create_once_deleted, wait_while_deleting

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.context import StackContext

KINESIS_KMS_KEY = "alias/aws/kinesis"

# IAM's service reference gives these Kinesis actions no resource type: only "*" matches them.
_UNSCOPED = "IAM has no resource type for this Kinesis action"


class ReadingsStream(Resource):
    kind = "kinesis.stream"

    def grants(self) -> list[Grant]:
        names = self.ctx.names
        arn = names.readings_stream_arn
        return [
            reads(["kinesis:DescribeStreamSummary", "kinesis:ListTagsForStream"], arn),
            writes(
                [
                    "kinesis:CreateStream",
                    "kinesis:AddTagsToStream",
                    "kinesis:IncreaseStreamRetentionPeriod",
                    "kinesis:DecreaseStreamRetentionPeriod",
                ],
                arn,
            ),
            writes(["kinesis:UpdateStreamMode"], "*", why=_UNSCOPED),
            writes(["kinesis:DeleteStream"], arn, condition=owned(self.ctx.stack)),
            # The stream is encrypted with the AWS managed key alias/aws/kinesis, whose key id
            # is not known in advance.
            writes(
                ["kinesis:StartStreamEncryption"],
                [arn, names.arn("kms", "key/*")],
                why="the AWS managed key aws/kinesis has an id of AWS's choosing",
            ),
            *self.reshard_grants(),
        ]

    def reshard_grants(self) -> list[Grant]:
        """What a shard-count change takes (`up`, and `iotpipe reshard`)."""
        names = self.ctx.names
        arn = names.readings_stream_arn
        return [writes(["kinesis:UpdateShardCount"], "*", why=_UNSCOPED), *resharding_grants(arn)]

    def desired(self) -> dict[str, Any]:
        config = self.ctx.config
        on_demand = config.stream.mode == "on_demand"
        spec: dict[str, Any] = {
            "tags": self.ctx.tags,
            "mode": "ON_DEMAND" if on_demand else "PROVISIONED",
            "retention_hours": config.stream.retention_hours,
            "encryption": f"KMS:{KINESIS_KMS_KEY}",
        }
        if not on_demand:
            spec["shard_count"] = config.sizing.shards
        return spec

    def notes(self, observed: dict[str, Any]) -> list[str]:
        want = self.desired().get("shard_count")
        have = observed.get("shard_count")
        if want is None or have is None or want == have:
            return []
        path = " -> ".join(str(n) for n in [have, *reshard_steps(have, want)])
        return [f"reshards in UpdateShardCount steps AWS accepts: {path}"]

    def _summary(self, aws: Aws) -> dict[str, Any] | None:
        summary = aws.call(
            "kinesis",
            "describe_stream_summary",
            resource=self.label,
            missing=("ResourceNotFoundException",),
            StreamName=self.name,
        )
        return summary["StreamDescriptionSummary"] if summary else None

    def _status(self, aws: Aws) -> str | None:
        desc = self._summary(aws)
        return desc["StreamStatus"] if desc else None

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        desc = self._summary(aws)
        # A stream still DELETING is as good as gone: `create` waits it out.
        if desc is None or desc["StreamStatus"] == DELETING:
            return None
        tags = aws.call(
            "kinesis", "list_tags_for_stream", resource=self.label, StreamName=self.name
        )
        encryption = desc.get("EncryptionType", "NONE")
        return {
            "tags": {t["Key"]: t["Value"] for t in tags.get("Tags", [])},
            "mode": desc.get("StreamModeDetails", {}).get("StreamMode", "PROVISIONED"),
            "retention_hours": desc["RetentionPeriodHours"],
            "encryption": f"KMS:{desc.get('KeyId')}" if encryption == "KMS" else encryption,
            "shard_count": desc["OpenShardCount"],
            "status": desc["StreamStatus"],
            "arn": desc["StreamARN"],
        }

    def create(self, aws: Aws) -> None:
        want = self.desired()
        params: dict[str, Any] = {
            "StreamName": self.name,
            "StreamModeDetails": {"StreamMode": want["mode"]},
        }
        if "shard_count" in want:
            params["ShardCount"] = want["shard_count"]

        def create() -> Any:
            # ResourceInUseException: the stream exists (another run made it), or is DELETING.
            return aws.call(
                "kinesis",
                "create_stream",
                resource=self.label,
                missing=("ResourceInUseException",),
                **params,
            )

        create_once_deleted(
            aws,
            resource=self.label,
            create=create,
            status=lambda: self._status(aws),
            what="stream",
        )
        self.wait_active(aws)

    def wait_active(self, aws: Aws) -> dict[str, Any]:
        def active() -> dict[str, Any] | None:
            observed = self.observe(aws)
            return observed if observed and observed["status"] == "ACTIVE" else None

        return aws.wait_for(active, resource=self.label, what="for the stream to become ACTIVE")

    def update(self, aws: Aws, changes: list[Change]) -> None:
        want = self.desired()
        fields = {c.field: c for c in changes}
        observed = self.wait_active(aws)
        if "tags" in fields:
            aws.call(
                "kinesis",
                "add_tags_to_stream",
                resource=self.label,
                StreamName=self.name,
                Tags=want["tags"],
            )
        if "mode" in fields:
            aws.call(
                "kinesis",
                "update_stream_mode",
                resource=self.label,
                StreamARN=observed["arn"],
                StreamModeDetails={"StreamMode": want["mode"]},
            )
            observed = self.wait_active(aws)
        if "retention_hours" in fields:
            have, new = observed["retention_hours"], want["retention_hours"]
            operation = (
                "increase_stream_retention_period"
                if new > have
                else "decrease_stream_retention_period"
            )
            aws.call(
                "kinesis",
                operation,
                resource=self.label,
                StreamName=self.name,
                RetentionPeriodHours=new,
            )
            observed = self.wait_active(aws)
        if "encryption" in fields:
            aws.call(
                "kinesis",
                "start_stream_encryption",
                resource=self.label,
                StreamName=self.name,
                EncryptionType="KMS",
                KeyId=KINESIS_KMS_KEY,
            )
            observed = self.wait_active(aws)
        if "shard_count" in want and observed["shard_count"] != want["shard_count"]:
            # The same planner and quota checks as `iotpipe reshard`: refused before any change.
            plan = plan_for_stream(aws, self.name, observed["shard_count"], want["shard_count"])
            self.apply_reshard(aws, plan)

    def apply_reshard(
        self, aws: Aws, plan: ReshardPlan, on_step: Callable[[int, str], None] | None = None
    ) -> None:
        """Run the plan's UpdateShardCount steps, waiting for ACTIVE after each one.

        `on_step(count, event)` reports each step's "start" and "done". Nothing else changes.
        """
        notify = on_step or (lambda *_: None)
        for count in plan.steps:
            notify(count, "start")
            aws.call(
                "kinesis",
                "update_shard_count",
                resource=self.label,
                StreamName=self.name,
                TargetShardCount=count,
                ScalingType="UNIFORM_SCALING",
            )
            observed = self.wait_active(aws)
            if observed["shard_count"] != count:
                raise AwsError(
                    f"expected {count} open shards after UpdateShardCount, found "
                    f"{observed['shard_count']}",
                    resource=self.label,
                    hint="check the stream in the console; re-running continues from its state",
                )
            notify(count, "done")

    def delete(self, aws: Aws) -> None:
        aws.call(
            "kinesis",
            "delete_stream",
            resource=self.label,
            missing=("ResourceNotFoundException",),
            StreamName=self.name,
            EnforceConsumerDeletion=True,
        )
        # AWS keeps the name until the deletion finishes: a later `up` could not create it.
        wait_while_deleting(
            aws,
            resource=self.label,
            status=lambda: self._status(aws),
            message="waiting for AWS to finish deleting the stream (usually under a minute)",
        )


def resources(ctx: StackContext) -> list[Resource]:
    return [ReadingsStream(ctx, ctx.names.readings_stream)]
