"""SNS: the encrypted alerts topic that CloudWatch alarms notify."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from iotpipe.engine.model import Change, Resource

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.stack import StackContext

SNS_KMS_KEY = "alias/aws/sns"


class AlertsTopic(Resource):
    kind = "sns.topic"

    @property
    def arn(self) -> str:
        return self.ctx.names.alerts_topic_arn

    def desired(self) -> dict[str, Any]:
        return {"tags": self.ctx.tags, "kms_key": SNS_KMS_KEY}

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        attributes = aws.call(
            "sns",
            "get_topic_attributes",
            resource=self.label,
            missing=("NotFound", "NotFoundException"),
            TopicArn=self.arn,
        )
        if attributes is None:
            return None
        tags = aws.call("sns", "list_tags_for_resource", resource=self.label, ResourceArn=self.arn)
        return {
            "tags": {t["Key"]: t["Value"] for t in tags.get("Tags", [])},
            "kms_key": attributes["Attributes"].get("KmsMasterKeyId"),
        }

    def create(self, aws: Aws) -> None:
        # CreateTopic is idempotent for the same name and attributes.
        aws.call(
            "sns",
            "create_topic",
            resource=self.label,
            Name=self.name,
            Attributes={"KmsMasterKeyId": SNS_KMS_KEY},
            Tags=[{"Key": k, "Value": v} for k, v in self.ctx.tags.items()],
        )

    def update(self, aws: Aws, changes: list[Change]) -> None:
        for change in changes:
            if change.field == "tags":
                aws.call(
                    "sns",
                    "tag_resource",
                    resource=self.label,
                    ResourceArn=self.arn,
                    Tags=[{"Key": k, "Value": v} for k, v in self.ctx.tags.items()],
                )
            elif change.field == "kms_key":
                aws.call(
                    "sns",
                    "set_topic_attributes",
                    resource=self.label,
                    TopicArn=self.arn,
                    AttributeName="KmsMasterKeyId",
                    AttributeValue=SNS_KMS_KEY,
                )

    def delete(self, aws: Aws) -> None:
        aws.call("sns", "delete_topic", resource=self.label, TopicArn=self.arn)


def resources(ctx: StackContext) -> list[Resource]:
    return [AlertsTopic(ctx, ctx.names.alerts_topic)]
