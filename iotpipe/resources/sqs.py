"""SQS: the processor's dead-letter queue (where the event source mapping sends failed batches)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from iotpipe.aws import Transient
from iotpipe.engine.fields import Field, Tagging, call
from iotpipe.engine.model import Resource
from iotpipe.engine.reconcile import report_wait
from iotpipe.errors import AwsError
from iotpipe.permissions import Grant, lifecycle

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.context import StackContext

# The longest SQS keeps a message: time enough to notice the alarm and replay the batch.
RETENTION_SECONDS = 14 * 86_400
# SSE-SQS: encryption at rest with no KMS key to manage or pay for.
ATTRIBUTES = {"SqsManagedSseEnabled": "true", "MessageRetentionPeriod": str(RETENTION_SECONDS)}
MANAGED_ATTRIBUTES = tuple(ATTRIBUTES)
QUEUE_MISSING = ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")
# DeleteQueue (SQS API reference): "When you delete a queue, you must wait at least 60 seconds
# before creating a queue with the same name." CreateQueue answers this code until then.
QUEUE_DELETED_RECENTLY = Transient(
    "queue-deleted-recently", "AWS.SimpleQueueService.QueueDeletedRecently"
)


class DeadLetterQueue(Resource):
    kind = "sqs.queue"
    absent = QUEUE_MISSING
    fields = (
        Field(
            "attributes",
            lambda raw: {key: raw.get("Attributes", {}).get(key) for key in MANAGED_ATTRIBUTES},
            "set_queue_attributes",
        ),
    )
    writes = (
        call(
            "sqs",
            "set_queue_attributes",
            lambda r, want, have: {"QueueUrl": have.raw["url"], "Attributes": want["attributes"]},
        ),
    )
    tagging = Tagging(
        "sqs",
        "list_queue_tags",
        "tag_queue",
        lambda r, raw: {"QueueUrl": raw["url"]},
        shape="map",
        missing=QUEUE_MISSING,
    )

    def grants(self) -> list[Grant]:
        arn = self.ctx.names.dead_letter_queue_arn
        return lifecycle(
            arn,
            self.ctx.stack,
            read=["sqs:GetQueueUrl", "sqs:GetQueueAttributes", "sqs:ListQueueTags"],
            write=["sqs:CreateQueue", "sqs:SetQueueAttributes", "sqs:TagQueue"],
            delete=["sqs:DeleteQueue"],
        )

    def desired(self) -> dict[str, Any]:
        return {"tags": self.ctx.tags, "attributes": ATTRIBUTES}

    def _url(self, aws: Aws) -> str | None:
        found = self.find(aws, "get_queue_url", QueueName=self.name)
        return found["QueueUrl"] if found else None

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        url = self._url(aws)
        if url is None:
            return None
        attributes = self.find(
            aws,
            "get_queue_attributes",
            QueueUrl=url,
            AttributeNames=["All"],
        )
        return None if attributes is None else {"url": url, **attributes}

    def create(self, aws: Aws) -> None:
        # CreateQueue with the same name and attributes is idempotent.
        params = {
            "QueueName": self.name,
            "Attributes": self.desired()["attributes"],
            "tags": self.ctx.tags,
        }
        try:
            self.call(aws, "create_queue", **params)
        except AwsError as exc:
            if exc.code != QUEUE_DELETED_RECENTLY.code:
                raise
            # The queue was deleted moments ago (`down` then `up`): AWS refuses the name for 60 s.
            report_wait(
                "SQS refuses a queue name for 60 s after the queue was deleted; retrying until then"
            )
            self.call(aws, "create_queue", retry_on=(QUEUE_DELETED_RECENTLY,), **params)

    def delete(self, aws: Aws) -> None:
        url = self._url(aws)
        if url is not None:
            self.remove(aws, "delete_queue", QueueUrl=url)


def resources(ctx: StackContext) -> list[Resource]:
    return [DeadLetterQueue(ctx, ctx.names.dead_letter_queue)]
