"""SQS: a queue name cannot be reused for 60 seconds after the queue is deleted."""

from __future__ import annotations

from typing import Any

from iotpipe.local.aws_rules import AwsRefusal, Call, after, before, clock, lock

# DeleteQueue (SQS API reference): "When you delete a queue, you must wait at least 60 seconds
# before creating a queue with the same name." AWS answers CreateQueue with
# AWS.SimpleQueueService.QueueDeletedRecently and this text (quoted in terraform-provider-aws
# #831 and #3113, which retries it for up to 70 s).
NAME_REUSE_SECONDS = 60.0
QUEUE_DELETED_RECENTLY = (
    "You must wait 60 seconds after deleting a queue before you can create another with the "
    "same name."
)


def _name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


@after("sqs", "DeleteQueue")
def remember_deletion(call: Call, reply: dict[str, Any]) -> None:
    with lock():
        call.state.setdefault("deleted", {})[_name(call.params["QueueUrl"])] = clock.now()


@before("sqs", "CreateQueue")
def refuse_recently_deleted_name(call: Call) -> None:
    with lock():
        deleted_at = call.state.get("deleted", {}).get(call.params["QueueName"])
    if deleted_at is not None and clock.now() - deleted_at < NAME_REUSE_SECONDS:
        raise AwsRefusal("QueueDeletedRecently", QUEUE_DELETED_RECENTLY)
