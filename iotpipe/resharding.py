"""Changing a stream's shard count within AWS's rules, which the tool enforces itself.

`UpdateShardCount` (UNIFORM_SCALING) accepts a new count only when it is at most double and at
least half the open shards, at most 10 times per stream in a rolling 24 hours, never above 10,000
shards per stream nor above the account's shard limit. Both `iotpipe reshard` and `up` plan through
`plan_reshard`, so neither can ask AWS for a change it would refuse half-way through.

How the 24-hour quota is counted: AWS keeps every closed shard listed (ListShards) for at least the
retention period, which is never shorter than 24 hours, and `ShardFilter` FROM_TIMESTAMP limits the
list to shards closed in the last 24 hours. Uniform scaling re-spreads the hash space evenly, so
every scaling operation closes every shard that was open before it (an untouched shard would have
to be exactly 1/new-count of the key space, which is 1/old-count). Each operation therefore adds one
generation to the shard lineage, and the number of operations in the window is the depth of the
longest parent chain among the shards closed in it. Where that assumption could be wrong the count
errs high, never low: an operation that makes intermediate shards deepens the chain, and manual
SplitShard/MergeShards (which AWS does not count) add closed shards. When the endpoint ignores the
filter (the emulator), every closed shard is counted, which again errs high.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from iotpipe.config import SHARD_BYTES_PER_SECOND, SHARD_RECORDS_PER_SECOND
from iotpipe.errors import IotpipeError, UsageError
from iotpipe.permissions import Grant, writes

if TYPE_CHECKING:
    from iotpipe.aws import Aws

MAX_SCALING_OPERATIONS_PER_DAY = 10
MAX_SHARDS_PER_STREAM = 10_000
QUOTA_WINDOW = timedelta(hours=24)
# Stream-level Kinesis metrics arrive once a minute: the finest period that has data.
METRIC_PERIOD_SECONDS = 60


class ReshardRefused(IotpipeError):
    """A shard-count change AWS would refuse (or half-apply); nothing was changed."""


def reshard_steps(current: int, target: int) -> list[int]:
    """The shard counts UpdateShardCount must pass through to go from `current` to `target`.

    AWS accepts one call only when the new count is at most double and at least half the open
    shards, so larger changes are made in steps: 1->4 is 1->2->4, 8->1 is 8->4->2->1.
    """
    if current < 1 or target < 1:
        raise UsageError("shard counts must be at least 1")
    steps = []
    count = current
    while count != target:
        count = min(target, count * 2) if target > count else max(target, math.ceil(count / 2))
        steps.append(count)
    return steps


@dataclass(frozen=True)
class ScalingHistory:
    """UpdateShardCount operations counted in the last 24 hours, and how."""

    operations: int
    closed_shards: int
    method: str


@dataclass(frozen=True)
class ShardLimits:
    """The account's shard quota in this region (kinesis:DescribeLimits)."""

    shard_limit: int
    open_shards: int


@dataclass(frozen=True)
class ReshardPlan:
    stream: str
    current: int
    target: int
    steps: list[int]
    history: ScalingHistory
    limits: ShardLimits

    @property
    def operations_left_after(self) -> int:
        return MAX_SCALING_OPERATIONS_PER_DAY - self.history.operations - len(self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "current": self.current,
            "target": self.target,
            "steps": self.steps,
            "operations_last_24h": self.history.operations,
            "operations_allowed_per_24h": MAX_SCALING_OPERATIONS_PER_DAY,
            "history": asdict(self.history),
            "limits": asdict(self.limits),
        }


def scaling_operations(shards: Iterable[dict[str, Any]]) -> tuple[int, int]:
    """(operations, closed shards) read from a shard list: the deepest lineage of closed shards.

    `shards` are ListShards entries; a closed one has an EndingSequenceNumber.
    """
    closed = {
        s["ShardId"]: s
        for s in shards
        if s.get("SequenceNumberRange", {}).get("EndingSequenceNumber")
    }
    depth: dict[str, int] = {}

    def depth_of(shard_id: str) -> int:
        if shard_id not in depth:
            shard = closed[shard_id]
            parents = [shard.get("ParentShardId"), shard.get("AdjacentParentShardId")]
            depth[shard_id] = 1 + max((depth_of(p) for p in parents if p in closed), default=0)
        return depth[shard_id]

    return max((depth_of(shard_id) for shard_id in closed), default=0), len(closed)


def furthest_target(current: int, target: int, operations_left: int) -> int:
    """How far towards `target` the remaining operations reach."""
    steps = reshard_steps(current, target)[:operations_left]
    return steps[-1] if steps else current


def plan_reshard(
    stream: str, current: int, target: int, history: ScalingHistory, limits: ShardLimits
) -> ReshardPlan:
    """The steps from `current` to `target`, or ReshardRefused naming the rule that forbids it."""
    if target > MAX_SHARDS_PER_STREAM:
        raise ReshardRefused(
            f"stream {stream}: {target} shards is above AWS's {MAX_SHARDS_PER_STREAM:,} "
            "shards per stream for UpdateShardCount",
            hint="ask AWS support for a higher per-stream limit, or use [stream] mode = "
            '"on_demand"',
        )
    steps = reshard_steps(current, target)
    plan = ReshardPlan(stream, current, target, steps, history, limits)
    if not steps:
        return plan
    left = MAX_SCALING_OPERATIONS_PER_DAY - history.operations
    if len(steps) > left:
        reachable = furthest_target(current, target, max(left, 0))
        hint = (
            f"--target {reachable} fits in what is left today"
            if reachable != current
            else "try again once the oldest operation is more than 24 hours old"
        )
        raise ReshardRefused(
            f"stream {stream}: {current} -> {target} shards needs {len(steps)} UpdateShardCount "
            f"operation(s) ({' -> '.join(map(str, [current, *steps]))}), but "
            f"{history.operations} of AWS's {MAX_SCALING_OPERATIONS_PER_DAY} per rolling 24 "
            f"hours have already run ({history.method})",
            hint=hint,
        )
    # Other streams' shards count against the same account limit; this stream's own current
    # shards are freed as it scales, so only the growth beyond them needs room.
    others = max(limits.open_shards, current) - current
    peak = max(steps)
    if others + peak > limits.shard_limit:
        raise ReshardRefused(
            f"stream {stream}: {peak} shards would bring the account to {others + peak} open "
            f"shards, above its shard limit of {limits.shard_limit} in this region "
            f"({limits.open_shards} open now)",
            hint="request a higher 'Shards per Region' quota in Service Quotas, or choose a "
            "lower --target",
        )
    return plan


# AWS reads ------------------------------------------------------------------------------------


def read_history(aws: Aws, stream: str, *, now: datetime | None = None) -> ScalingHistory:
    """Count this stream's scaling operations in the last 24 hours from its shard lineage."""
    since = (now or datetime.now(UTC)) - QUOTA_WINDOW
    shards = _list_shards(aws, stream, {"Type": "FROM_TIMESTAMP", "Timestamp": since})
    operations, closed = scaling_operations(shards)
    return ScalingHistory(
        operations=operations,
        closed_shards=closed,
        method=f"counted from the lineage of the {closed} shard(s) closed in the last 24 hours",
    )


def _list_shards(aws: Aws, stream: str, shard_filter: dict[str, Any]) -> list[dict[str, Any]]:
    return list(
        aws.paginate(
            "kinesis",
            "list_shards",
            resource=f"kinesis.stream {stream}",
            StreamName=stream,
            ShardFilter=shard_filter,
        )
    )


def read_limits(aws: Aws) -> ShardLimits:
    limits = aws.call("kinesis", "describe_limits", resource="Kinesis account limits")
    return ShardLimits(
        shard_limit=int(limits["ShardLimit"]), open_shards=int(limits["OpenShardCount"])
    )


def plan_for_stream(aws: Aws, stream: str, current: int, target: int) -> ReshardPlan:
    """Plan against the stream's own history and the account's limits, as AWS will judge it."""
    if current == target:
        return ReshardPlan(
            stream, current, target, [], ScalingHistory(0, 0, "no change needed"), ShardLimits(0, 0)
        )
    return plan_reshard(stream, current, target, read_history(aws, stream), read_limits(aws))


# Recommendation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recommendation:
    """A target shard count from the stream's observed peak, with the arithmetic behind it."""

    peak_records_per_second: float
    peak_bytes_per_second: float
    headroom: float
    shards_for_records: int
    shards_for_bytes: int
    target: int
    datapoints: int
    period_seconds: int = METRIC_PERIOD_SECONDS

    def explanation(self) -> list[str]:
        spare = 1 + self.headroom
        return [
            f"peak over the last 24 h ({self.period_seconds} s sums / {self.period_seconds}, "
            f"{self.datapoints} data points): {self.peak_records_per_second:,.1f} records/s, "
            f"{self.peak_bytes_per_second:,.0f} bytes/s",
            f"records: ceil({self.peak_records_per_second:,.1f} x {spare:g} / "
            f"{SHARD_RECORDS_PER_SECOND:,} per shard) = {self.shards_for_records}",
            f"bytes: ceil({self.peak_bytes_per_second:,.0f} x {spare:g} / "
            f"{SHARD_BYTES_PER_SECOND:,} per shard) = {self.shards_for_bytes}",
            f"target = max(1, {self.shards_for_records}, {self.shards_for_bytes}) = {self.target}"
            f" (headroom {self.headroom:g} from [stream] headroom)",
        ]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "explanation": self.explanation()}


def recommend(
    peak_records_per_second: float, peak_bytes_per_second: float, headroom: float, datapoints: int
) -> Recommendation:
    spare = 1 + headroom
    for_records = math.ceil(peak_records_per_second * spare / SHARD_RECORDS_PER_SECOND)
    for_bytes = math.ceil(peak_bytes_per_second * spare / SHARD_BYTES_PER_SECOND)
    return Recommendation(
        peak_records_per_second=peak_records_per_second,
        peak_bytes_per_second=peak_bytes_per_second,
        headroom=headroom,
        shards_for_records=for_records,
        shards_for_bytes=for_bytes,
        target=max(1, for_records, for_bytes),
        datapoints=datapoints,
    )


def read_peaks(aws: Aws, stream: str, *, now: datetime | None = None) -> tuple[float, float, int]:
    """(peak records/s, peak bytes/s, data points) of the stream over the last 24 hours."""
    end = now or datetime.now(UTC)
    queries = [
        {
            "Id": key,
            "MetricStat": {
                "Metric": {
                    "Namespace": "AWS/Kinesis",
                    "MetricName": metric,
                    "Dimensions": [{"Name": "StreamName", "Value": stream}],
                },
                "Period": METRIC_PERIOD_SECONDS,
                "Stat": "Sum",
            },
        }
        for key, metric in (("records", "IncomingRecords"), ("bytes", "IncomingBytes"))
    ]
    values: dict[str, list[float]] = {"records": [], "bytes": []}
    for result in aws.paginate(
        "cloudwatch",
        "get_metric_data",
        resource=f"CloudWatch metrics of kinesis.stream {stream}",
        key="MetricDataResults",
        MetricDataQueries=queries,
        StartTime=end - QUOTA_WINDOW,
        EndTime=end,
    ):
        values[result["Id"]].extend(float(v) for v in result.get("Values", []))
    peak_records = max(values["records"], default=0.0) / METRIC_PERIOD_SECONDS
    peak_bytes = max(values["bytes"], default=0.0) / METRIC_PERIOD_SECONDS
    return peak_records, peak_bytes, len(values["records"])


def grants(stream_arn: str) -> list[Grant]:
    """What planning a shard-count change takes: the stream's shards, the account's limits."""
    return [
        writes(["kinesis:ListShards"], stream_arn),
        writes(
            ["kinesis:DescribeLimits"],
            "*",
            why="IAM has no resource type for kinesis:DescribeLimits (the account's shard quota)",
        ),
    ]


def recommend_grants() -> list[Grant]:
    """`reshard --recommend`: the stream's traffic of the last 24 hours."""
    why = "IAM has no resource type for cloudwatch:GetMetricData"
    return [writes(["cloudwatch:GetMetricData"], "*", why=why)]
