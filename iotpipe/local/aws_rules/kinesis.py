"""Kinesis Data Streams: a deleted stream stays DELETING for a while; UpdateShardCount's limits."""

from __future__ import annotations

from typing import Any

from iotpipe.local.aws_rules import AwsRefusal, Call, after, before, clock, lock
from iotpipe.local.aws_rules.deleting import is_deleting, linger, sweep

# DeleteStream (Kinesis API reference): "When you delete a stream ... Kinesis Data Streams
# immediately returns and sets the stream status to DELETING" and the stream stays listed until the
# deletion completes. AWS documents no duration; a one-shard stream takes some seconds to about a
# minute, so 30 s.
DELETE_SECONDS = 30.0
# UpdateShardCount (Kinesis API reference), "This operation has the following default limits. By
# default, you cannot do the following: Scale more than ten times per rolling 24-hour period per
# stream; Scale up to more than double your current shard count for a stream; Scale down below
# half your current shard count for a stream; Scale up to more than 10000 shards in a stream".
SCALINGS_PER_DAY = 10
DAY_SECONDS = 86_400.0
MAX_SHARDS = 10_000
# Changes AWS refuses while the stream is not ACTIVE.
_NEEDS_ACTIVE = (
    "AddTagsToStream",
    "UpdateShardCount",
    "UpdateStreamMode",
    "IncreaseStreamRetentionPeriod",
    "DecreaseStreamRetentionPeriod",
    "StartStreamEncryption",
)
# The control-plane operations that see a stream; each first forgets finished deletions. (Not the
# data plane: AWS may accept records for a DELETING stream, and its calls stay unparsed and fast.)
_SEES_STREAMS = (
    "CreateStream",
    "DeleteStream",
    "DescribeStream",
    "DescribeStreamSummary",
    "ListStreams",
    "ListShards",
    "ListTagsForStream",
    *_NEEDS_ACTIVE,
)


def _streams(call: Call) -> dict[str, Any]:
    from moto.kinesis.models import kinesis_backends

    return kinesis_backends[call.account_id][call.region].streams


def _name(call: Call) -> str | None:
    name = call.params.get("StreamName")
    arn = call.params.get("StreamARN")
    return name or (arn.rsplit("/", 1)[-1] if arn else None)


@before("kinesis", *_SEES_STREAMS)
def forget_finished_deletions(call: Call) -> None:
    sweep(call, _streams(call))


# The texts of AWS's refusals, as kinesalite (which mirrors AWS's responses) sends them.
@before("kinesis", "CreateStream")
def refuse_a_name_in_use(call: Call) -> None:
    name = call.params["StreamName"]
    if name in _streams(call):
        raise AwsRefusal(
            "ResourceInUseException",
            f"Stream {name} under account {call.account_id} already exists.",
        )


@before("kinesis", *_NEEDS_ACTIVE)
def refuse_changes_while_deleting(call: Call) -> None:
    name = _name(call)
    if name is not None and is_deleting(call, name):
        raise AwsRefusal(
            "ResourceInUseException",
            f"Stream {name} under account {call.account_id} not ACTIVE, instead in state DELETING",
        )


@before("kinesis", "DeleteStream")
def hold_the_deleted_stream(call: Call) -> None:
    name = _name(call)
    stream = _streams(call).get(name or "")
    if stream is not None:
        with lock():
            call.state.setdefault("being_deleted", {})[name] = stream


@after("kinesis", "DeleteStream")
def keep_it_deleting(call: Call, reply: dict[str, Any]) -> None:
    name = _name(call) or ""
    with lock():
        stream = call.state.get("being_deleted", {}).pop(name, None)
        # A new stream of the same name starts a new scaling history.
        call.state.get("scalings", {}).pop(name, None)
    if stream is not None:
        stream.status = "DELETING"
        linger(call, _streams(call), name, stream, DELETE_SECONDS)


def _open_shards(stream: Any) -> int:
    return sum(1 for shard in stream.shards.values() if shard.is_open)


@before("kinesis", "UpdateShardCount")
def hold_to_scaling_limits(call: Call) -> None:
    name = _name(call)
    stream = _streams(call).get(name or "")
    if stream is None:
        return
    current, target = _open_shards(stream), int(call.params["TargetShardCount"])
    counts = f"Current open shard count: {current}, Target shard count: {target}"
    # Texts as kinesalite sends them (its tests were checked against AWS).
    if target > MAX_SHARDS:
        raise AwsRefusal(
            "LimitExceededException",
            f"Target shard count or number of open shards cannot be greater than {MAX_SHARDS}. "
            + counts,
        )
    if target > current * 2:
        raise AwsRefusal(
            "LimitExceededException",
            "UpdateShardCount cannot scale up over double your current open shard count. " + counts,
        )
    if target < current / 2:
        raise AwsRefusal(
            "LimitExceededException",
            "UpdateShardCount cannot scale down below half your current open shard count. "
            + counts,
        )
    now = clock.now()
    with lock():
        recent = [t for t in call.state.get("scalings", {}).get(name, []) if now - t < DAY_SECONDS]
    if len(recent) >= SCALINGS_PER_DAY:
        # AWS's exact text for this refusal is not published; the code is LimitExceededException.
        raise AwsRefusal(
            "LimitExceededException",
            f"Stream {name} under account {call.account_id} has already been scaled "
            f"{SCALINGS_PER_DAY} times in the last 24 hours, the most UpdateShardCount allows.",
        )


@after("kinesis", "UpdateShardCount")
def count_the_scaling(call: Call, reply: dict[str, Any]) -> None:
    name = _name(call) or ""
    now = clock.now()
    with lock():
        scalings = call.state.setdefault("scalings", {})
        scalings[name] = [t for t in scalings.get(name, []) if now - t < DAY_SECONDS] + [now]
