"""CloudWatch: alarms on every stage of the pipeline, wired to the alerts topic, and one dashboard.

Each alarm says both when it fires and when it recovers (OK actions). Missing data means "no
traffic" for every metric here (AWS publishes them only while there is activity), so it never
fires an alarm on an idle pipeline.

An alarm watches exactly one (namespace, metric, dimension set): one that AWS does not publish gets
no data and never fires, without any error. Every alarm and dashboard metric is therefore one of
`DOCUMENTED_METRICS`, the combinations AWS documents, each with its page.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from iotpipe.engine.fields import Field, State, Tagging, call
from iotpipe.engine.model import Resource
from iotpipe.naming import Names
from iotpipe.permissions import Grant, lifecycle, reads, writes

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.config import Config
    from iotpipe.context import StackContext

_IOT = "https://docs.aws.amazon.com/iot/latest/developerguide/metrics_dimensions.html"
_KINESIS = "https://docs.aws.amazon.com/streams/latest/dev/monitoring-with-cloudwatch.html"
_LAMBDA = "https://docs.aws.amazon.com/lambda/latest/dg/monitoring-metrics-types.html"
_SQS = (
    "https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/"
    "sqs-available-cloudwatch-metrics.html"
)
_FIREHOSE = (
    "https://docs.aws.amazon.com/firehose/latest/dev/monitoring-with-cloudwatch-metrics.html"
)
_DYNAMODB = (
    "https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/metrics-dimensions.html"
)

# (namespace, metric, dimension names) that AWS documents publishing, and where. An alarm or
# dashboard metric outside this table is refused by the tests: AWS would send it no data.
DOCUMENTED_METRICS: dict[tuple[str, str, frozenset[str]], str] = {
    # "The RuleName dimension contains the name of the rule" (rule metrics).
    ("AWS/IoT", "TopicMatch", frozenset({"RuleName"})): _IOT,
    ("AWS/IoT", "RuleMessageThrottled", frozenset({"RuleName"})): _IOT,
    # Rule action metrics: "The RuleName dimension contains the name of the rule that specifies
    # the action. The ActionType dimension contains the type of action that was invoked."
    ("AWS/IoT", "Success", frozenset({"RuleName", "ActionType"})): _IOT,
    ("AWS/IoT", "Failure", frozenset({"RuleName", "ActionType"})): _IOT,
    ("AWS/IoT", "ErrorActionSuccess", frozenset({"RuleName", "ActionType"})): _IOT,
    ("AWS/IoT", "ErrorActionFailure", frozenset({"RuleName", "ActionType"})): _IOT,
    # Stream-level metrics, dimension StreamName.
    ("AWS/Kinesis", "IncomingRecords", frozenset({"StreamName"})): _KINESIS,
    ("AWS/Kinesis", "WriteProvisionedThroughputExceeded", frozenset({"StreamName"})): _KINESIS,
    ("AWS/Kinesis", "GetRecords.IteratorAgeMilliseconds", frozenset({"StreamName"})): _KINESIS,
    # Per-function metrics, dimension FunctionName.
    ("AWS/Lambda", "Invocations", frozenset({"FunctionName"})): _LAMBDA,
    ("AWS/Lambda", "Errors", frozenset({"FunctionName"})): _LAMBDA,
    ("AWS/Lambda", "Throttles", frozenset({"FunctionName"})): _LAMBDA,
    ("AWS/Lambda", "Duration", frozenset({"FunctionName"})): _LAMBDA,
    ("AWS/Lambda", "IteratorAge", frozenset({"FunctionName"})): _LAMBDA,
    # "The only dimension that Amazon SQS sends to CloudWatch is QueueName."
    ("AWS/SQS", "ApproximateNumberOfMessagesVisible", frozenset({"QueueName"})): _SQS,
    # Data delivery metrics, dimension DeliveryStreamName.
    ("AWS/Firehose", "IncomingRecords", frozenset({"DeliveryStreamName"})): _FIREHOSE,
    ("AWS/Firehose", "DeliveryToS3.Records", frozenset({"DeliveryStreamName"})): _FIREHOSE,
    ("AWS/Firehose", "DeliveryToS3.DataFreshness", frozenset({"DeliveryStreamName"})): _FIREHOSE,
    # Table-level metrics with TableName (the table, not its indexes); ThrottledRequests by
    # TableName and Operation.
    ("AWS/DynamoDB", "ConsumedWriteCapacityUnits", frozenset({"TableName"})): _DYNAMODB,
    ("AWS/DynamoDB", "WriteThrottleEvents", frozenset({"TableName"})): _DYNAMODB,
    ("AWS/DynamoDB", "ReadThrottleEvents", frozenset({"TableName"})): _DYNAMODB,
    ("AWS/DynamoDB", "ThrottledRequests", frozenset({"TableName", "Operation"})): _DYNAMODB,
}

# The ActionType values of the topic rule's actions: the rule's main action writes to Kinesis,
# its error action to S3 ("The action type specified by the rule that triggered the request").
RULE_ACTION_TYPE = "Kinesis"
ERROR_ACTION_TYPE = "S3"

MANAGED_BY = "Managed by iotpipe stack "
OWNER_PATTERN = re.compile(re.escape(MANAGED_BY) + r"`([^`]+)`")


@dataclass(frozen=True)
class AlarmSpec:
    suffix: str
    description: str
    namespace: str
    metric: str
    dimensions: dict[str, str]
    statistic: str
    threshold: float
    period_seconds: int = 300
    evaluation_periods: int = 1
    datapoints_to_alarm: int = 1
    comparison: str = "GreaterThanThreshold"
    treat_missing_data: str = "notBreaching"

    def alarm_name(self, stack: str) -> str:
        return f"{stack}-{self.suffix}"


def alarm_specs(ctx: StackContext) -> list[AlarmSpec]:
    return specs_for(ctx.names, ctx.config)


def specs_for(names: Names, config: Config) -> list[AlarmSpec]:
    """The stack's alarms: they depend on its names and config only, not on the account."""
    alerts = config.alerts
    iterator_age_ms = alerts.iterator_age_seconds * 1000
    stream = {"StreamName": names.readings_stream}
    function = {"FunctionName": names.processor_function}
    return [
        AlarmSpec(
            "readings-iterator-age",
            "Readings wait in the stream longer than alerts.iterator_age_seconds: "
            "the processor is falling behind.",
            "AWS/Kinesis",
            "GetRecords.IteratorAgeMilliseconds",
            stream,
            "Maximum",
            iterator_age_ms,
            period_seconds=60,
            evaluation_periods=5,
            datapoints_to_alarm=5,
        ),
        AlarmSpec(
            "readings-write-throttled",
            "Writes to the readings stream are throttled: add shards (iotpipe reshard).",
            "AWS/Kinesis",
            "WriteProvisionedThroughputExceeded",
            stream,
            "Sum",
            0,
        ),
        AlarmSpec(
            "processor-errors",
            "The processor Lambda function fails invocations.",
            "AWS/Lambda",
            "Errors",
            function,
            "Sum",
            0,
        ),
        AlarmSpec(
            "processor-throttles",
            "The processor Lambda function is throttled (account or reserved concurrency).",
            "AWS/Lambda",
            "Throttles",
            function,
            "Sum",
            0,
        ),
        AlarmSpec(
            "processor-iterator-age",
            "The processor reads records older than alerts.iterator_age_seconds.",
            "AWS/Lambda",
            "IteratorAge",
            function,
            "Maximum",
            iterator_age_ms,
            period_seconds=60,
            evaluation_periods=5,
            datapoints_to_alarm=5,
        ),
        AlarmSpec(
            "processor-dlq-not-empty",
            "Batches the processor gave up on wait in the dead-letter queue.",
            "AWS/SQS",
            "ApproximateNumberOfMessagesVisible",
            {"QueueName": names.dead_letter_queue},
            "Maximum",
            0,
        ),
        AlarmSpec(
            "archive-freshness",
            "The oldest reading not yet in S3 is older than alerts.archive_freshness_seconds.",
            "AWS/Firehose",
            "DeliveryToS3.DataFreshness",
            {"DeliveryStreamName": names.archive_delivery_stream},
            "Maximum",
            alerts.archive_freshness_seconds,
        ),
        AlarmSpec(
            "device-state-write-throttled",
            "Writes to the device-state table are throttled.",
            "AWS/DynamoDB",
            "WriteThrottleEvents",
            {"TableName": names.device_state_table},
            "Sum",
            0,
        ),
        AlarmSpec(
            "device-state-throttled-requests",
            # The processor writes device state with PartiQL batches (no reads); WriteThrottleEvents
            # above counts each throttled write, this each wholly throttled batch.
            "Batch writes to the device-state table are throttled.",
            "AWS/DynamoDB",
            "ThrottledRequests",
            {"TableName": names.device_state_table, "Operation": "BatchExecuteStatement"},
            "Sum",
            0,
        ),
        AlarmSpec(
            "iot-rule-failures",
            "The IoT rule fails to deliver messages to the stream (they go to iot-errors/).",
            "AWS/IoT",
            "Failure",
            {"RuleName": names.topic_rule, "ActionType": RULE_ACTION_TYPE},
            "Sum",
            0,
        ),
        AlarmSpec(
            "iot-rule-error-action-failures",
            "The IoT rule's error action fails too: messages are lost, neither in the stream "
            "nor in iot-errors/.",
            "AWS/IoT",
            "ErrorActionFailure",
            {"RuleName": names.topic_rule, "ActionType": ERROR_ACTION_TYPE},
            "Sum",
            0,
        ),
        AlarmSpec(
            "iot-rule-throttled",
            "The IoT rule is throttled: messages are dropped before any action.",
            "AWS/IoT",
            "RuleMessageThrottled",
            {"RuleName": names.topic_rule},
            "Sum",
            0,
        ),
    ]


def alarm_names(names: Names, config: Config) -> list[str]:
    """The names of the stack's alarms."""
    return [spec.alarm_name(names.stack) for spec in specs_for(names, config)]


def alarm_count(config: Config) -> int:
    """How many alarms `up` deploys for `config` (the cost model prices them)."""
    placeholder = Names(
        stack=config.stack.name, app=config.stack.app, region="us-east-1", account="0" * 12
    )
    return len(specs_for(placeholder, config))


def undocumented(namespace: str, metric: str, dimensions: list[str] | set[str]) -> bool:
    """True when AWS documents no such (namespace, metric, dimension set)."""
    return (namespace, metric, frozenset(dimensions)) not in DOCUMENTED_METRICS


class AlarmDescriptions:
    """One DescribeAlarms for all of the stack's alarms instead of one per alarm.

    Each alarm's description is served from it once: the plan's observation. Any later look
    (after the alarm is created or updated) asks AWS again.
    """

    def __init__(self, names: list[str]) -> None:
        self._names = names
        self._lock = threading.Lock()
        self._found: dict[str, dict[str, Any]] | None = None
        self._unserved = set(names)

    def take(self, aws: Aws, alarm: Alarm) -> tuple[bool, dict[str, Any] | None]:
        """(served from the batch, the alarm or None if absent); (False, None) once served."""
        with self._lock:
            if alarm.name not in self._unserved:
                return False, None
            if self._found is None:
                # AlarmNames takes up to 100 names; a stack has a dozen alarms.
                found = alarm.call(aws, "describe_alarms", AlarmNames=self._names)
                self._found = {a["AlarmName"]: a for a in found.get("MetricAlarms", [])}
            self._unserved.discard(alarm.name)
            return True, self._found.get(alarm.name)


# The alarm's fields that DescribeAlarms answers under the key PutMetricAlarm takes them by.
ALARM_KEYS = {
    "description": "AlarmDescription",
    "statistic": "Statistic",
    "period_seconds": "Period",
    "evaluation_periods": "EvaluationPeriods",
    "datapoints_to_alarm": "DatapointsToAlarm",
    "threshold": "Threshold",
    "comparison": "ComparisonOperator",
    "treat_missing_data": "TreatMissingData",
    "alarm_actions": "AlarmActions",
    "ok_actions": "OKActions",
}
PUT_ALARM = "put_metric_alarm"


def _dimensions(alarm: dict[str, Any]) -> dict[str, str]:
    return {d["Name"]: d["Value"] for d in alarm.get("Dimensions", [])}


def _alarm(r: Alarm, want: dict[str, Any], have: State | None = None) -> dict[str, Any]:
    """PutMetricAlarm's parameters: it creates or fully replaces the alarm (tags are only
    applied on create)."""
    spec = r.spec
    return {
        "AlarmName": r.name,
        "Namespace": spec.namespace,
        "MetricName": spec.metric,
        "Dimensions": [{"Name": k, "Value": v} for k, v in want["dimensions"].items()],
        **{key: want[name] for name, key in ALARM_KEYS.items()},
        "ActionsEnabled": True,
        "Tags": r.ctx.tag_list,
    }


class Alarm(Resource):
    kind = "cloudwatch.alarm"
    # Read from DescribeAlarms' answer; PutMetricAlarm sets them all at once.
    fields = (
        Field("metric", lambda a: f"{a.get('Namespace')}/{a.get('MetricName')}", PUT_ALARM),
        Field("dimensions", _dimensions, PUT_ALARM),
        *(Field(name, key, PUT_ALARM) for name, key in ALARM_KEYS.items()),
    )
    writes = (call("cloudwatch", PUT_ALARM, _alarm),)
    tagging = Tagging(
        "cloudwatch",
        "list_tags_for_resource",
        "tag_resource",
        lambda r, raw: {"ResourceARN": raw["AlarmArn"]},
    )

    def __init__(
        self, ctx: StackContext, spec: AlarmSpec, batch: AlarmDescriptions | None = None
    ) -> None:
        super().__init__(
            ctx, spec.alarm_name(ctx.stack), depends_on=(f"sns.topic/{ctx.names.alerts_topic}",)
        )
        self.spec = spec
        self._batch = batch

    @property
    def arn(self) -> str:
        return self.ctx.names.arn("cloudwatch", f"alarm:{self.name}")

    def grants(self) -> list[Grant]:
        return lifecycle(
            self.arn,
            self.ctx.stack,
            read=["cloudwatch:DescribeAlarms", "cloudwatch:ListTagsForResource"],
            write=["cloudwatch:PutMetricAlarm", "cloudwatch:TagResource"],
            delete=["cloudwatch:DeleteAlarms"],
        )

    def desired(self) -> dict[str, Any]:
        spec, topic = self.spec, self.ctx.names.alerts_topic_arn
        return {
            "tags": self.ctx.tags,
            "description": spec.description,
            "metric": f"{spec.namespace}/{spec.metric}",
            "dimensions": spec.dimensions,
            "statistic": spec.statistic,
            "period_seconds": spec.period_seconds,
            "evaluation_periods": spec.evaluation_periods,
            "datapoints_to_alarm": spec.datapoints_to_alarm,
            "threshold": float(spec.threshold),
            "comparison": spec.comparison,
            "treat_missing_data": spec.treat_missing_data,
            "alarm_actions": [topic],
            "ok_actions": [topic],
        }

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        if self._batch is not None:
            served, alarm = self._batch.take(aws, self)
            if served:
                return alarm
        found = self.call(aws, "describe_alarms", AlarmNames=[self.name])
        alarms = found.get("MetricAlarms", [])
        return alarms[0] if alarms else None

    def create(self, aws: Aws) -> None:
        self.call(aws, PUT_ALARM, **_alarm(self, self.desired()))

    def delete(self, aws: Aws) -> None:
        self.call(aws, "delete_alarms", AlarmNames=[self.name])


LAMBDA_LOAD_METRICS = ("Invocations", "Errors", "Throttles")


def _metric_widgets(region: str, graphs: list[tuple[str, str, list[list[Any]]]]) -> list[Any]:
    """(title, statistic, metrics) graphs, three to a row of the 24-unit grid below the header
    (text, then alarms: 6 units)."""
    return [
        {
            "type": "metric",
            "x": index % 3 * 8,
            "y": 6 + index // 3 * 6,
            "width": 8,
            "height": 6,
            "properties": {
                "title": title,
                "region": region,
                "stat": stat,
                "period": 300,
                "view": "timeSeries",
                "metrics": metrics,
            },
        }
        for index, (title, stat, metrics) in enumerate(graphs)
    ]


def _dashboard(r: Dashboard, want: dict[str, Any], have: State | None = None) -> dict[str, Any]:
    return {"DashboardName": r.name, "DashboardBody": json.dumps(want["body"])}


class Dashboard(Resource):
    """One dashboard of the pipeline's key metrics; dashboards cannot be tagged, so the owning
    stack is written in its first (text) widget."""

    kind = "cloudwatch.dashboard"
    absent = ("ResourceNotFound", "ResourceNotFoundException")
    fields = (Field("body", lambda found: json.loads(found["DashboardBody"]), "put_dashboard"),)
    writes = (call("cloudwatch", "put_dashboard", _dashboard),)

    def owner(self, observed: State) -> str | None:
        for widget in (observed.get("body") or {}).get("widgets", []):
            text = widget.get("properties", {}).get("markdown", "")
            found = OWNER_PATTERN.match(text) if widget.get("type") == "text" else None
            if found:
                return found.group(1)
        return None

    def grants(self) -> list[Grant]:
        # Dashboards are global (no region in their ARN) and carry no tags.
        arn = self.ctx.names.arn("cloudwatch", f"dashboard/{self.name}", region=False)
        return [
            reads(["cloudwatch:GetDashboard"], arn),
            writes(["cloudwatch:PutDashboard", "cloudwatch:DeleteDashboards"], arn),
        ]

    def desired(self) -> dict[str, Any]:
        return {"body": self._body()}

    def _body(self) -> dict[str, Any]:
        names, region = self.ctx.names, self.ctx.names.region
        stream = ["StreamName", names.readings_stream]
        function = ["FunctionName", names.processor_function]
        firehose = ["DeliveryStreamName", names.archive_delivery_stream]
        table = ["TableName", names.device_state_table]
        queue = ["QueueName", names.dead_letter_queue]
        rule = ["RuleName", names.topic_rule]
        rule_action = [*rule, "ActionType", RULE_ACTION_TYPE]
        error_action = [*rule, "ActionType", ERROR_ACTION_TYPE]
        alarms = [
            self.ctx.names.arn("cloudwatch", f"alarm:{spec.alarm_name(self.ctx.stack)}")
            for spec in alarm_specs(self.ctx)
        ]
        return {
            "widgets": [
                {
                    "type": "text",
                    "x": 0,
                    "y": 0,
                    "width": 24,
                    "height": 2,
                    "properties": {
                        "markdown": f"{MANAGED_BY}`{self.ctx.stack}`: device -> IoT Core -> "
                        "Kinesis -> Lambda -> DynamoDB / Firehose -> S3 -> Athena"
                    },
                },
                {
                    "type": "alarm",
                    "x": 0,
                    "y": 2,
                    "width": 24,
                    "height": 4,
                    "properties": {"title": "Alarms", "alarms": alarms},
                },
                *_metric_widgets(
                    region,
                    [
                        (
                            "IoT rule: messages matched / failed / lost",
                            "Sum",
                            [
                                ["AWS/IoT", "TopicMatch", *rule],
                                ["AWS/IoT", "Failure", *rule_action],
                                ["AWS/IoT", "ErrorActionFailure", *error_action],
                            ],
                        ),
                        (
                            "Stream: records in / throttled",
                            "Sum",
                            [
                                ["AWS/Kinesis", "IncomingRecords", *stream],
                                ["AWS/Kinesis", "WriteProvisionedThroughputExceeded", *stream],
                            ],
                        ),
                        (
                            "Stream: iterator age (ms)",
                            "Maximum",
                            [
                                ["AWS/Kinesis", "GetRecords.IteratorAgeMilliseconds", *stream],
                                ["AWS/Lambda", "IteratorAge", *function],
                            ],
                        ),
                        (
                            "Processor: invocations / errors / throttles",
                            "Sum",
                            [["AWS/Lambda", m, *function] for m in LAMBDA_LOAD_METRICS],
                        ),
                        (
                            "Processor: duration (ms)",
                            "p95",
                            [["AWS/Lambda", "Duration", *function]],
                        ),
                        (
                            "Dead-letter queue: visible messages",
                            "Maximum",
                            [["AWS/SQS", "ApproximateNumberOfMessagesVisible", *queue]],
                        ),
                        (
                            "Archive: records in / delivered to S3",
                            "Sum",
                            [
                                ["AWS/Firehose", "IncomingRecords", *firehose],
                                ["AWS/Firehose", "DeliveryToS3.Records", *firehose],
                            ],
                        ),
                        (
                            "Archive: data freshness (s)",
                            "Maximum",
                            [["AWS/Firehose", "DeliveryToS3.DataFreshness", *firehose]],
                        ),
                        (
                            "Device state: writes / throttles",
                            "Sum",
                            [
                                ["AWS/DynamoDB", "ConsumedWriteCapacityUnits", *table],
                                ["AWS/DynamoDB", "WriteThrottleEvents", *table],
                            ],
                        ),
                    ],
                ),
            ]
        }

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        return self.find(aws, "get_dashboard", DashboardName=self.name)

    def create(self, aws: Aws) -> None:
        self.call(aws, "put_dashboard", **_dashboard(self, self.desired()))

    def delete(self, aws: Aws) -> None:
        self.remove(aws, "delete_dashboards", DashboardNames=[self.name])


def resources(ctx: StackContext) -> list[Resource]:
    specs = alarm_specs(ctx)
    batch = AlarmDescriptions([spec.alarm_name(ctx.stack) for spec in specs])
    alarms: list[Resource] = [Alarm(ctx, spec, batch) for spec in specs]
    return [*alarms, Dashboard(ctx, ctx.names.dashboard)]
