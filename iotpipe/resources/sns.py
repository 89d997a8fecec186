"""SNS: the encrypted alerts topic that CloudWatch alarms notify.

The topic is encrypted with the stack's customer managed key (iotpipe/resources/kms.py), named by
its alias: CloudWatch cannot publish to a topic under the AWS managed key `alias/aws/sns`, whose
policy cannot grant it the key. A topic deployed on that key is moved to the stack's key by `up`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from iotpipe.engine.model import STACK_TAG, Change, Resource
from iotpipe.permissions import Grant, owned, reads, writes
from iotpipe.resources import kms

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.context import StackContext


class AlertsTopic(Resource):
    kind = "sns.topic"

    def __init__(self, ctx: StackContext, name: str, key: kms.AlertsKey) -> None:
        super().__init__(ctx, name, depends_on=(key.key,))
        self.kms_key = key.alias

    @property
    def arn(self) -> str:
        return self.ctx.names.alerts_topic_arn

    def grants(self) -> list[Grant]:
        arn = self.ctx.names.alerts_topic_arn
        return [
            reads(["sns:GetTopicAttributes", "sns:ListTagsForResource"], arn),
            writes(["sns:CreateTopic", "sns:SetTopicAttributes", "sns:TagResource"], arn),
            writes(["sns:DeleteTopic"], arn, condition=owned(self.ctx.stack)),
        ]

    def desired(self) -> dict[str, Any]:
        return {"tags": self.ctx.tags, "kms_key": self.kms_key}

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
            Attributes={"KmsMasterKeyId": self.kms_key},
            Tags=self.ctx.tag_list,
        )

    def update(self, aws: Aws, changes: list[Change]) -> None:
        for change in changes:
            if change.field == "tags":
                aws.call(
                    "sns",
                    "tag_resource",
                    resource=self.label,
                    ResourceArn=self.arn,
                    Tags=self.ctx.tag_list,
                )
            elif change.field == "kms_key":
                aws.call(
                    "sns",
                    "set_topic_attributes",
                    resource=self.label,
                    TopicArn=self.arn,
                    AttributeName="KmsMasterKeyId",
                    AttributeValue=self.kms_key,
                )

    def delete(self, aws: Aws) -> None:
        aws.call("sns", "delete_topic", resource=self.label, TopicArn=self.arn)


# What SNS lists instead of an ARN for a subscription the recipient has not confirmed yet.
PENDING = "PendingConfirmation"


class EmailSubscriptions(Resource):
    """The alert e-mail addresses subscribed to the topic, added and removed as the config says.

    A new address stays pending until its owner clicks the link in AWS's e-mail. A pending
    subscription has no ARN, so it cannot be unsubscribed through the API; AWS deletes it after
    48 hours unless confirmed. Removing a pending address is therefore reported, not attempted.
    """

    kind = "sns.subscriptions"

    def __init__(self, ctx: StackContext, topic: AlertsTopic) -> None:
        super().__init__(ctx, topic.name, depends_on=(topic.key,))
        self.topic_arn = topic.arn

    def grants(self) -> list[Grant]:
        arn = self.ctx.names.alerts_topic_arn
        return [
            reads(
                [
                    "sns:GetTopicAttributes",
                    "sns:ListSubscriptionsByTopic",
                    "sns:ListTagsForResource",
                ],
                arn,
            ),
            writes(["sns:Subscribe"], arn),
            writes(["sns:Unsubscribe"], "*", why="IAM has no resource type for sns:Unsubscribe"),
        ]

    def desired(self) -> dict[str, Any]:
        return {"emails": sorted(set(self.ctx.config.alerts.emails))}

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        label = self.label
        topic = aws.call(
            "sns",
            "get_topic_attributes",
            resource=label,
            missing=("NotFound", "NotFoundException"),
            TopicArn=self.topic_arn,
        )
        if topic is None:
            return None
        # Subscriptions cannot be tagged: they belong to whoever owns the topic.
        tags, subscriptions = aws.gather(
            lambda: aws.call(
                "sns", "list_tags_for_resource", resource=label, ResourceArn=self.topic_arn
            ),
            lambda: list(
                aws.paginate(
                    "sns",
                    "list_subscriptions_by_topic",
                    resource=label,
                    key="Subscriptions",
                    TopicArn=self.topic_arn,
                )
            ),
        )
        confirmed: dict[str, str] = {}
        pending: set[str] = set()
        for sub in subscriptions:
            if sub.get("Protocol") != "email":
                continue
            if sub["SubscriptionArn"] == PENDING:
                pending.add(sub["Endpoint"])
            elif sub["SubscriptionArn"].startswith("arn:"):
                confirmed[sub["Endpoint"]] = sub["SubscriptionArn"]
        wanted = set(self.desired()["emails"])
        return {
            "tags": {t["Key"]: t["Value"] for t in tags.get("Tags", [])},
            # A pending address no longer wanted cannot be removed: leave it out of the diff.
            "emails": sorted(set(confirmed) | (pending & wanted)),
            "pending": sorted(pending),
            "arns": confirmed,
        }

    def notes(self, observed: dict[str, Any]) -> list[str]:
        wanted = set(self.desired()["emails"])
        pending = set(observed.get("pending", []))
        notes = []
        if pending & wanted:
            notes.append(
                "pending confirmation (the recipient must click the link in AWS's e-mail): "
                + ", ".join(sorted(pending & wanted))
            )
        if pending - wanted:
            notes.append(
                "cannot unsubscribe while pending confirmation, AWS deletes it after 48 hours: "
                + ", ".join(sorted(pending - wanted))
            )
        return notes

    def owner(self, observed: dict[str, Any]) -> str | None:
        return (observed.get("tags") or {}).get(STACK_TAG)

    def create(self, aws: Aws) -> None:
        self._subscribe(aws, self.desired()["emails"])

    def update(self, aws: Aws, changes: list[Change]) -> None:
        observed = self.observe(aws) or {}
        have = set(observed.get("emails", []))
        want = set(self.desired()["emails"])
        self._subscribe(aws, sorted(want - have))
        arns = observed.get("arns", {})
        for email in sorted(have - want):
            aws.call(
                "sns",
                "unsubscribe",
                resource=f"{self.label} ({email})",
                missing=("NotFound", "NotFoundException"),
                SubscriptionArn=arns[email],
            )

    def _subscribe(self, aws: Aws, emails: list[str]) -> None:
        for email in emails:
            aws.call(
                "sns",
                "subscribe",
                resource=f"{self.label} ({email})",
                TopicArn=self.topic_arn,
                Protocol="email",
                Endpoint=email,
            )

    def delete(self, aws: Aws) -> None:
        observed = self.observe(aws) or {}
        for email, arn in sorted(observed.get("arns", {}).items()):
            aws.call(
                "sns",
                "unsubscribe",
                resource=f"{self.label} ({email})",
                missing=("NotFound", "NotFoundException"),
                SubscriptionArn=arn,
            )


def resources(ctx: StackContext) -> list[Resource]:
    key = kms.AlertsKey(ctx)
    topic = AlertsTopic(ctx, ctx.names.alerts_topic, key)
    return [key, topic, EmailSubscriptions(ctx, topic)]
