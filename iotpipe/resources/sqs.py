"""SQS: the processor's dead-letter queue (where the event source mapping sends failed batches)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from iotpipe.aws import Transient
from iotpipe.engine.model import Change, Resource
from iotpipe.engine.reconcile import report_wait
from iotpipe.errors import AwsError
from iotpipe.permissions import Grant, owned, reads, writes

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.context import StackContext

# The longest SQS keeps a message: time enough to notice the alarm and replay the batch.
RETENTION_SECONDS = 14 * 86_400
QUEUE_MISSING = ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")
# DeleteQueue (SQS API reference): "When you delete a queue, you must wait at least 60 seconds
# before creating a queue with the same name." CreateQueue answers this code until then.
QUEUE_DELETED_RECENTLY = Transient(
    "queue-deleted-recently", "AWS.SimpleQueueService.QueueDeletedRecently"
)


class DeadLetterQueue(Resource):
    kind = "sqs.queue"

    def grants(self) -> list[Grant]:
        arn = self.ctx.names.dead_letter_queue_arn
        return [
            reads(["sqs:GetQueueUrl", "sqs:GetQueueAttributes", "sqs:ListQueueTags"], arn),
            writes(["sqs:CreateQueue", "sqs:SetQueueAttributes", "sqs:TagQueue"], arn),
            writes(["sqs:DeleteQueue"], arn, condition=owned(self.ctx.stack)),
        ]

    def desired(self) -> dict[str, Any]:
        return {
            "tags": self.ctx.tags,
            # SSE-SQS: encryption at rest with no KMS key to manage or pay for.
            "attributes": {
                "SqsManagedSseEnabled": "true",
                "MessageRetentionPeriod": str(RETENTION_SECONDS),
            },
        }

    def _url(self, aws: Aws) -> str | None:
        found = aws.call(
            "sqs", "get_queue_url", resource=self.label, missing=QUEUE_MISSING, QueueName=self.name
        )
        return found["QueueUrl"] if found else None

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        url = self._url(aws)
        if url is None:
            return None
        attributes, tags = aws.gather(
            lambda: aws.call(
                "sqs",
                "get_queue_attributes",
                resource=self.label,
                missing=QUEUE_MISSING,
                QueueUrl=url,
                AttributeNames=["All"],
            ),
            lambda: aws.call(
                "sqs", "list_queue_tags", resource=self.label, missing=QUEUE_MISSING, QueueUrl=url
            ),
        )
        if attributes is None or tags is None:
            return None
        have = attributes.get("Attributes", {})
        return {
            "tags": tags.get("Tags", {}),
            "attributes": {key: have.get(key) for key in self.desired()["attributes"]},
            "arn": have.get("QueueArn"),
        }

    def create(self, aws: Aws) -> None:
        # CreateQueue with the same name and attributes is idempotent.
        params = {
            "QueueName": self.name,
            "Attributes": self.desired()["attributes"],
            "tags": self.ctx.tags,
        }
        try:
            aws.call("sqs", "create_queue", resource=self.label, **params)
        except AwsError as exc:
            if exc.code != QUEUE_DELETED_RECENTLY.code:
                raise
            # The queue was deleted moments ago (`down` then `up`): AWS refuses the name for 60 s.
            report_wait(
                "SQS refuses a queue name for 60 s after the queue was deleted; retrying until then"
            )
            aws.call(
                "sqs",
                "create_queue",
                resource=self.label,
                retry_on=(QUEUE_DELETED_RECENTLY,),
                **params,
            )

    def update(self, aws: Aws, changes: list[Change]) -> None:
        url = self._url(aws)
        for change in changes:
            if change.field == "tags":
                aws.call("sqs", "tag_queue", resource=self.label, QueueUrl=url, Tags=self.ctx.tags)
            elif change.field == "attributes":
                aws.call(
                    "sqs",
                    "set_queue_attributes",
                    resource=self.label,
                    QueueUrl=url,
                    Attributes=self.desired()["attributes"],
                )

    def delete(self, aws: Aws) -> None:
        url = self._url(aws)
        if url is not None:
            aws.call(
                "sqs", "delete_queue", resource=self.label, missing=QUEUE_MISSING, QueueUrl=url
            )


def resources(ctx: StackContext) -> list[Resource]:
    return [DeadLetterQueue(ctx, ctx.names.dead_letter_queue)]
