"""SNS: the encrypted alerts topic that CloudWatch alarms notify.

The topic is encrypted with the stack's customer managed key (iotpipe/resources/kms.py), named by
its alias: CloudWatch cannot publish to a topic under the AWS managed key `alias/aws/sns`, whose
policy cannot grant it the key. A topic deployed on that key is moved to the stack's key by `up`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from iotpipe.engine.fields import Field, State, Tagging, Write, call
from iotpipe.engine.model import Resource
from iotpipe.permissions import Grant, lifecycle, reads, writes
from iotpipe.resources import kms

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.context import StackContext


TOPIC_MISSING = ("NotFound", "NotFoundException")


def _topic_tagging(write: str | None) -> Tagging:
    """The topic's tags, by its ARN (the subscriptions' owner is the topic's)."""
    return Tagging(
        "sns",
        "list_tags_for_resource",
        write,
        lambda r, raw: {"ResourceArn": r.ctx.names.alerts_topic_arn},
    )


class AlertsTopic(Resource):
    kind = "sns.topic"
    absent = TOPIC_MISSING
    fields = (Field("kms_key", "Attributes.KmsMasterKeyId", "set_topic_attributes"),)
    writes = (
        call(
            "sns",
            "set_topic_attributes",
            lambda r, want, have: {
                "TopicArn": r.arn,
                "AttributeName": "KmsMasterKeyId",
                "AttributeValue": want["kms_key"],
            },
        ),
    )
    tagging = _topic_tagging("tag_resource")

    def __init__(self, ctx: StackContext, name: str, key: kms.AlertsKey) -> None:
        super().__init__(ctx, name, depends_on=(key.key,))
        self.kms_key = key.alias

    @property
    def arn(self) -> str:
        return self.ctx.names.alerts_topic_arn

    def grants(self) -> list[Grant]:
        arn = self.ctx.names.alerts_topic_arn
        return lifecycle(
            arn,
            self.ctx.stack,
            read=["sns:GetTopicAttributes", "sns:ListTagsForResource"],
            write=["sns:CreateTopic", "sns:SetTopicAttributes", "sns:TagResource"],
            delete=["sns:DeleteTopic"],
        )

    def desired(self) -> dict[str, Any]:
        return {"tags": self.ctx.tags, "kms_key": self.kms_key}

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        return self.find(aws, "get_topic_attributes", TopicArn=self.arn)

    def create(self, aws: Aws) -> None:
        # CreateTopic is idempotent for the same name and attributes.
        self.call(
            aws,
            "create_topic",
            Name=self.name,
            Attributes={"KmsMasterKeyId": self.kms_key},
            Tags=self.ctx.tag_list,
        )

    def delete(self, aws: Aws) -> None:
        self.call(aws, "delete_topic", TopicArn=self.arn)


# What SNS lists instead of an ARN for a subscription the recipient has not confirmed yet.
PENDING = "PendingConfirmation"


class EmailSubscriptions(Resource):
    """The alert e-mail addresses subscribed to the topic, added and removed as the config says.

    A new address stays pending until its owner clicks the link in AWS's e-mail. A pending
    subscription has no ARN, so it cannot be unsubscribed through the API; AWS deletes it after
    48 hours unless confirmed. Removing a pending address is therefore reported, not attempted.
    """

    kind = "sns.subscriptions"
    absent = TOPIC_MISSING
    fields = (Field("emails", "emails", "subscriptions"),)
    writes = (Write("subscriptions", lambda r, aws, want, have: r.sync(aws, want, have)),)
    # Subscriptions cannot be tagged: they belong to whoever owns the topic.
    tagging = _topic_tagging(None)

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
        topic = self.find(aws, "get_topic_attributes", TopicArn=self.topic_arn)
        if topic is None:
            return None
        subscriptions = aws.paginate(
            "sns",
            "list_subscriptions_by_topic",
            resource=self.label,
            key="Subscriptions",
            TopicArn=self.topic_arn,
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
        # A pending address no longer wanted cannot be removed: it is left out of the diff.
        wanted = set(self.desired()["emails"])
        emails = sorted(set(confirmed) | (pending & wanted))
        return {"emails": emails, "arns": confirmed, "pending": sorted(pending)}

    def sync(self, aws: Aws, want: dict[str, Any], have: State) -> None:
        current, wanted = set(have["emails"]), set(want["emails"])
        self._subscribe(aws, sorted(wanted - current))
        self._unsubscribe(aws, {e: have.raw["arns"][e] for e in sorted(current - wanted)})

    def notes(self, observed: State) -> list[str]:
        wanted = set(self.desired()["emails"])
        pending = set(observed.raw["pending"])
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

    def create(self, aws: Aws) -> None:
        self._subscribe(aws, self.desired()["emails"])

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

    def _unsubscribe(self, aws: Aws, arns: dict[str, str]) -> None:
        for email, arn in arns.items():
            aws.call(
                "sns",
                "unsubscribe",
                resource=f"{self.label} ({email})",
                missing=TOPIC_MISSING,
                SubscriptionArn=arn,
            )

    def delete(self, aws: Aws) -> None:
        observed = self.observe(aws)
        if observed is not None:
            self._unsubscribe(aws, dict(sorted(observed["arns"].items())))


def resources(ctx: StackContext) -> list[Resource]:
    key = kms.AlertsKey(ctx)
    topic = AlertsTopic(ctx, ctx.names.alerts_topic, key)
    return [key, topic, EmailSubscriptions(ctx, topic)]
