"""Firehose: a deleted delivery stream stays DELETING for a while, and its name stays taken."""

from __future__ import annotations

from typing import Any

from iotpipe.local.aws_rules import AwsRefusal, Call, after, before, lock
from iotpipe.local.aws_rules.deleting import linger, sweep

# DeleteDeliveryStream (Firehose API reference): "When an API request to DeleteDeliveryStream
# succeeds, the Firehose stream is marked for deletion, and it goes into the DELETING state ...
# Removal of a Firehose stream that is in the DELETING state is a low priority operation for the
# service. A stream may remain in the DELETING state for several minutes." One minute here:
# "several minutes" at the short end, so `local serve` users are not kept waiting long.
DELETE_SECONDS = 60.0
_SEES_STREAMS = (
    "CreateDeliveryStream",
    "DeleteDeliveryStream",
    "DescribeDeliveryStream",
    "ListDeliveryStreams",
    "ListTagsForDeliveryStream",
    "TagDeliveryStream",
    "UpdateDestination",
    "StartDeliveryStreamEncryption",
)


def _streams(call: Call) -> dict[str, Any]:
    from moto.firehose.models import firehose_backends

    return firehose_backends[call.account_id][call.region].delivery_streams


@before("firehose", *_SEES_STREAMS)
def forget_finished_deletions(call: Call) -> None:
    sweep(call, _streams(call))


@before("firehose", "CreateDeliveryStream")
def refuse_a_name_in_use(call: Call) -> None:
    # ResourceInUseException for a name that exists, DELETING or not (CreateDeliveryStream API
    # reference: "The resource is already in use and not available for this operation"), with
    # AWS's text as a terraform apply quoted it (ministryofjustice/cloud-platform-environments
    # #3960).
    name = call.params["DeliveryStreamName"]
    if name in _streams(call):
        raise AwsRefusal(
            "ResourceInUseException",
            f"Firehose {name} under accountId {call.account_id} already exists",
        )


@before("firehose", "DeleteDeliveryStream")
def hold_the_deleted_stream(call: Call) -> None:
    name = call.params["DeliveryStreamName"]
    stream = _streams(call).get(name)
    if stream is not None:
        with lock():
            call.state.setdefault("being_deleted", {})[name] = stream


@after("firehose", "DeleteDeliveryStream")
def keep_it_deleting(call: Call, reply: dict[str, Any]) -> None:
    name = call.params["DeliveryStreamName"]
    with lock():
        stream = call.state.get("being_deleted", {}).pop(name, None)
    if stream is not None:
        # moto sets DELETING itself before it forgets the stream.
        stream.delivery_stream_status = "DELETING"
        linger(call, _streams(call), name, stream, DELETE_SECONDS)
