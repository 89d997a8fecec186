"""Kinesis Data Streams: the readings stream; shard-count changes step through `resharding`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from iotpipe.engine.fields import Field, Settled, State, Tagging, Write, call
from iotpipe.engine.model import Resource
from iotpipe.engine.reconcile import settle
from iotpipe.errors import AwsError
from iotpipe.permissions import Grant, lifecycle, writes
from iotpipe.resharding import ReshardPlan, plan_for_stream, reshard_steps
from iotpipe.resharding import grants as resharding_grants
from iotpipe.resources.deletion import DELETING, create_once_deleted, wait_while_deleting

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.context import StackContext

KINESIS_KMS_KEY = "alias/aws/kinesis"

# IAM's service reference gives these Kinesis actions no resource type: only "*" matches them.
_UNSCOPED = "IAM has no resource type for this Kinesis action"


def _set_retention(r: ReadingsStream, aws: Aws, want: dict[str, Any], have: State) -> None:
    # Kinesis lengthens and shortens a stream's retention by two different calls.
    longer = want["retention_hours"] > have["retention_hours"]
    operation = "increase_stream_retention_period" if longer else "decrease_stream_retention_period"
    r.call(aws, operation, StreamName=r.name, RetentionPeriodHours=want["retention_hours"])


def _encryption(desc: dict[str, Any]) -> str:
    encryption = desc.get("EncryptionType", "NONE")
    return f"KMS:{desc.get('KeyId')}" if encryption == "KMS" else encryption


class ReadingsStream(Resource):
    kind = "kinesis.stream"
    absent = ("ResourceNotFoundException",)
    # The stream exists (another run made it), or is still DELETING.
    present = ("ResourceInUseException",)
    fields = (
        Field("mode", "StreamModeDetails.StreamMode || 'PROVISIONED'", "update_stream_mode"),
        Field("retention_hours", "RetentionPeriodHours", "retention"),
        Field("encryption", _encryption, "start_stream_encryption"),
        Field("shard_count", "OpenShardCount", "reshard"),
    )
    # Each change leaves the stream UPDATING; the next is accepted once it is ACTIVE again.
    writes = (
        call(
            "kinesis",
            "update_stream_mode",
            lambda r, want, have: {
                "StreamARN": have.raw["StreamARN"],
                "StreamModeDetails": {"StreamMode": want["mode"]},
            },
            settles=True,
        ),
        Write("retention", _set_retention, settles=True),
        call(
            "kinesis",
            "start_stream_encryption",
            lambda r, want, have: {
                "StreamName": r.name,
                "EncryptionType": "KMS",
                "KeyId": KINESIS_KMS_KEY,
            },
            settles=True,
        ),
        Write("reshard", lambda r, aws, want, have: r.reshard_to(aws, want, have)),
    )
    tagging = Tagging(
        "kinesis",
        "list_tags_for_stream",
        "add_tags_to_stream",
        lambda r, raw: {"StreamName": r.name},
        write_shape="map",
    )
    settled = Settled("StreamStatus", frozenset({"ACTIVE"}), "for the stream to become ACTIVE")

    def grants(self) -> list[Grant]:
        names = self.ctx.names
        arn = names.readings_stream_arn
        return [
            *lifecycle(
                arn,
                self.ctx.stack,
                read=["kinesis:DescribeStreamSummary", "kinesis:ListTagsForStream"],
                write=[
                    "kinesis:CreateStream",
                    "kinesis:AddTagsToStream",
                    "kinesis:IncreaseStreamRetentionPeriod",
                    "kinesis:DecreaseStreamRetentionPeriod",
                ],
                delete=["kinesis:DeleteStream"],
            ),
            writes(["kinesis:UpdateStreamMode"], "*", why=_UNSCOPED),
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
        summary = self.find(aws, "describe_stream_summary", StreamName=self.name)
        return summary["StreamDescriptionSummary"] if summary else None

    def _status(self, aws: Aws) -> str | None:
        desc = self._summary(aws)
        return desc["StreamStatus"] if desc else None

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        desc = self._summary(aws)
        # A stream still DELETING is as good as gone: `create` waits it out.
        return None if desc is None or desc["StreamStatus"] == DELETING else desc

    def create(self, aws: Aws) -> None:
        want = self.desired()
        params: dict[str, Any] = {
            "StreamName": self.name,
            "StreamModeDetails": {"StreamMode": want["mode"]},
        }
        if "shard_count" in want:
            params["ShardCount"] = want["shard_count"]

        def create() -> Any:
            return self.make(aws, "create_stream", **params)

        create_once_deleted(
            aws,
            resource=self.label,
            create=create,
            status=lambda: self._status(aws),
            what="stream",
        )

    def reshard_to(self, aws: Aws, want: dict[str, Any], have: State) -> None:
        # The same planner and quota checks as `iotpipe reshard`: refused before any change.
        if have["shard_count"] != want["shard_count"]:
            plan = plan_for_stream(aws, self.name, have["shard_count"], want["shard_count"])
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
            self.call(
                aws,
                "update_shard_count",
                StreamName=self.name,
                TargetShardCount=count,
                ScalingType="UNIFORM_SCALING",
            )
            observed = settle(aws, self, None)
            if observed["shard_count"] != count:
                raise AwsError(
                    f"expected {count} open shards after UpdateShardCount, found "
                    f"{observed['shard_count']}",
                    resource=self.label,
                    hint="check the stream in the console; re-running continues from its state",
                )
            notify(count, "done")

    def delete(self, aws: Aws) -> None:
        self.remove(aws, "delete_stream", StreamName=self.name, EnforceConsumerDeletion=True)
        # AWS keeps the name until the deletion finishes: a later `up` could not create it.
        wait_while_deleting(
            aws,
            resource=self.label,
            status=lambda: self._status(aws),
            message="waiting for AWS to finish deleting the stream (usually under a minute)",
        )


def resources(ctx: StackContext) -> list[Resource]:
    return [ReadingsStream(ctx, ctx.names.readings_stream)]
