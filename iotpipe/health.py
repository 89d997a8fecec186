"""Is the pipeline healthy? Alarms, stream lag, dead letters, archive freshness, alert delivery.

Each check reads what AWS reports now and answers ok, warning, unhealthy or missing. A missing
resource is unhealthy: a pipeline without its DLQ or alarms cannot say it is fine. Warnings (no
data yet, alarms still gathering data) inform without failing the check.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from iotpipe.permissions import Grant, reads
from iotpipe.resources import sns
from iotpipe.resources.cloudwatch import alarm_names
from iotpipe.resources.kinesis import ReadingsStream
from iotpipe.resources.sns import EmailSubscriptions
from iotpipe.resources.sqs import DeadLetterQueue

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.config import Config
    from iotpipe.context import StackContext
    from iotpipe.naming import Names

OK, WARNING, UNHEALTHY, MISSING = "ok", "warning", "unhealthy", "missing"
ITERATOR_AGE_WINDOW = timedelta(minutes=15)
# How far back "has the stream ever had traffic" looks.
TRAFFIC_LOOKBACK = timedelta(days=5)


@dataclass(frozen=True)
class Check:
    name: str
    state: str
    detail: str
    value: Any = None

    @property
    def healthy(self) -> bool:
        return self.state in (OK, WARNING)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Health:
    """The health checks of one stack. The stream, queue and subscriptions are found as their
    resources observe them (iotpipe.resources), which the checks read further."""

    def __init__(self, aws: Aws, ctx: StackContext, *, now: datetime | None = None) -> None:
        self.aws = aws
        self.ctx = ctx
        self.names = ctx.names
        self.config = ctx.config
        self.now = now or datetime.now(UTC)

    def run(self) -> list[Check]:
        checks: list[Callable[[], Check]] = [
            self.alarms,
            self.iterator_age,
            self.dead_letters,
            self.archive_delivery,
            self.alert_subscriptions,
        ]
        with ThreadPoolExecutor(max_workers=len(checks)) as pool:
            return list(pool.map(lambda check: check(), checks))

    def alarms(self) -> Check:
        # By name, not by the "<stack>-" prefix, which a neighbour stack "<stack>-dev" shares.
        names = alarm_names(self.names, self.config)
        alarms = list(
            self.aws.paginate(
                "cloudwatch",
                "describe_alarms",
                resource=f"CloudWatch alarms of stack {self.names.stack}",
                key="MetricAlarms",
                AlarmNames=names,
            )
        )
        if not alarms:
            return Check(
                "alarms",
                MISSING,
                f"none of the stack's {len(names)} CloudWatch alarms exists: run `iotpipe up`",
            )
        by_state: dict[str, list[str]] = {}
        for alarm in alarms:
            by_state.setdefault(alarm["StateValue"], []).append(alarm["AlarmName"])
        counts = {state: len(names) for state, names in by_state.items()}
        if "ALARM" in by_state:
            return Check(
                "alarms", UNHEALTHY, "in ALARM: " + ", ".join(sorted(by_state["ALARM"])), counts
            )
        if "INSUFFICIENT_DATA" in by_state:
            waiting = len(by_state["INSUFFICIENT_DATA"])
            return Check(
                "alarms",
                WARNING,
                f"{len(alarms)} alarm(s), none in ALARM; {waiting} without enough data yet",
                counts,
            )
        return Check("alarms", OK, f"{len(alarms)} alarm(s), all OK", counts)

    def _stream_summary(self) -> dict[str, Any] | None:
        return ReadingsStream(self.ctx, self.names.readings_stream).observe(self.aws)

    def _stream_metric(
        self, stream: str, label: str, metric: str, statistic: str, *, start: datetime, period: int
    ) -> list[dict[str, Any]]:
        """The datapoints of one of the stream's AWS/Kinesis metrics from `start` to now."""
        stats = self.aws.call(
            "cloudwatch",
            "get_metric_statistics",
            resource=f"CloudWatch metrics of {label}",
            Namespace="AWS/Kinesis",
            MetricName=metric,
            Dimensions=[{"Name": "StreamName", "Value": stream}],
            StartTime=start,
            EndTime=self.now,
            Period=period,
            Statistics=[statistic],
        )
        return stats.get("Datapoints", [])

    def iterator_age(self) -> Check:
        stream = self.names.readings_stream
        label = f"kinesis.stream {stream}"
        if self._stream_summary() is None:
            return Check("iterator age", MISSING, f"stream {stream} does not exist")
        points = self._stream_metric(
            stream,
            label,
            "GetRecords.IteratorAgeMilliseconds",
            "Maximum",
            start=self.now - ITERATOR_AGE_WINDOW,
            period=60,
        )
        if not points:
            return Check(
                "iterator age",
                WARNING,
                "no GetRecords in the last 15 min: is the processor reading?",
            )
        age = max(p["Maximum"] for p in points) / 1000
        limit = self.config.alerts.iterator_age_seconds
        state = UNHEALTHY if age > limit else OK
        detail = f"max {age:,.0f} s over the last 15 min (limit {limit:,} s)"
        return Check("iterator age", state, detail, round(age, 1))

    def dead_letters(self) -> Check:
        queue = self.names.dead_letter_queue
        found = DeadLetterQueue(self.ctx, queue).observe(self.aws)
        if found is None:
            return Check("dead-letter queue", MISSING, f"queue {queue} does not exist")
        attributes = found["Attributes"]
        depth = int(attributes.get("ApproximateNumberOfMessages", 0)) + int(
            attributes.get("ApproximateNumberOfMessagesNotVisible", 0)
        )
        if depth:
            return Check(
                "dead-letter queue",
                UNHEALTHY,
                f"{depth} failed batch(es) waiting in {queue}: each names the shard and sequence "
                "numbers to replay",
                depth,
            )
        return Check("dead-letter queue", OK, f"{queue} is empty", 0)

    def archive_delivery(self) -> Check:
        bucket = self.names.archive_bucket
        label = f"s3.bucket {bucket}"
        exists = self.aws.call(
            "s3", "head_bucket", resource=label, missing=("404", "NoSuchBucket"), Bucket=bucket
        )
        if exists is None:
            return Check("archive delivery", MISSING, f"bucket {bucket} does not exist")
        # Keys are partitioned by day (UTC): the newest object is under today's or yesterday's.
        newest: datetime | None = None
        for day in (self.now, self.now - timedelta(days=1)):
            prefix = f"{self.names.archive_prefix}dt={day:%Y-%m-%d}/"
            for obj in self.aws.paginate(
                "s3",
                "list_objects_v2",
                resource=label,
                key="Contents",
                Bucket=bucket,
                Prefix=prefix,
            ):
                if newest is None or obj["LastModified"] > newest:
                    newest = obj["LastModified"]
            if newest is not None:
                break
        limit = self.config.alerts.archive_freshness_seconds
        if newest is None:
            return self._nothing_delivered(bucket, label, limit)
        age = (self.now - newest).total_seconds()
        state = UNHEALTHY if age > limit else OK
        detail = (
            f"last delivery {_ago(age)} ago at {newest:%Y-%m-%d %H:%M} UTC (limit {_ago(limit)})"
        )
        return Check("archive delivery", state, detail, newest.isoformat())

    def _nothing_delivered(self, bucket: str, label: str, limit: int) -> Check:
        """No delivery since yesterday: stale, unless no reading has ever come in (a new stack).

        "No traffic yet", a warning: the archive has never received a reading, nor the stream a
        record (since it was created, 5 days back at most). Readings that reached the stream
        less than the freshness limit ago are on their way; longer ago is unhealthy.
        """
        prefix = self.names.archive_prefix
        stale = Check(
            "archive delivery", UNHEALTHY, f"nothing delivered under {prefix} since yesterday (UTC)"
        )
        ever = self.aws.call(
            "s3", "list_objects_v2", resource=label, Bucket=bucket, Prefix=prefix, MaxKeys=1
        )
        if ever.get("KeyCount", len(ever.get("Contents", []))):
            return stale
        first = self._first_incoming_record()
        if first is None:
            return Check(
                "archive delivery",
                WARNING,
                "no traffic yet: no reading has reached the stream or the archive since the "
                "stack was created",
            )
        waiting = (self.now - first).total_seconds()
        if waiting <= limit:
            return Check(
                "archive delivery",
                WARNING,
                f"first readings reached the stream {_ago(waiting)} ago; none archived yet "
                f"(Firehose delivers within its buffering interval; limit {_ago(limit)})",
            )
        return Check(
            "archive delivery",
            UNHEALTHY,
            f"readings have reached the stream for {_ago(waiting)}, but none has ever been "
            f"delivered under {prefix} (limit {_ago(limit)})",
        )

    def _first_incoming_record(self) -> datetime | None:
        """When the stream first received records (CloudWatch's IncomingRecords), or None."""
        stream = self.names.readings_stream
        label = f"kinesis.stream {stream}"
        summary = self._stream_summary()
        if summary is None:
            return None
        created = summary["StreamCreationTimestamp"]
        # 5-minute periods: at most 1,440 datapoints per call (CloudWatch's limit), 5 days back.
        start = max(created, self.now - TRAFFIC_LOOKBACK)
        points = self._stream_metric(
            stream, label, "IncomingRecords", "Sum", start=start, period=300
        )
        seen = [p["Timestamp"] for p in points if p.get("Sum", 0) > 0]
        return min(seen, default=None)

    def alert_subscriptions(self) -> Check:
        [subscriptions] = [r for r in sns.resources(self.ctx) if isinstance(r, EmailSubscriptions)]
        found = subscriptions.observe(self.aws)
        if found is None:
            return Check(
                "alert subscriptions", MISSING, f"topic {self.names.alerts_topic} does not exist"
            )
        pending = found["pending"]
        subscribed = {*found["arns"], *pending}
        absent = sorted(set(self.config.alerts.emails) - subscribed)
        if pending or absent:
            parts = []
            if pending:
                parts.append(f"awaiting confirmation (check the inbox): {', '.join(pending)}")
            if absent:
                parts.append(f"not subscribed: {', '.join(absent)} (run `iotpipe up`)")
            return Check("alert subscriptions", UNHEALTHY, "; ".join(parts), len(pending))
        if not subscribed:
            return Check("alert subscriptions", WARNING, "nobody receives alerts ([alerts] emails)")
        return Check(
            "alert subscriptions", OK, f"{len(subscribed)} confirmed email subscription(s)"
        )


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def grants(names: Names, config: Config) -> list[Grant]:
    """The IAM permissions of the health checks (`status`)."""
    alarms = [names.arn("cloudwatch", f"alarm:{name}") for name in alarm_names(names, config)]
    return [
        reads(["cloudwatch:DescribeAlarms"], alarms),
        reads(
            ["cloudwatch:GetMetricStatistics"],
            "*",
            why="IAM has no resource type for cloudwatch:GetMetricStatistics",
        ),
        reads(["kinesis:DescribeStreamSummary"], names.readings_stream_arn),
        # HeadBucket and ListObjectsV2 (the newest delivery) are both s3:ListBucket.
        reads(["s3:ListBucket"], names.archive_bucket_arn),
        reads(["sns:GetTopicAttributes", "sns:ListSubscriptionsByTopic"], names.alerts_topic_arn),
        reads(["sqs:GetQueueUrl", "sqs:GetQueueAttributes"], names.dead_letter_queue_arn),
    ]
