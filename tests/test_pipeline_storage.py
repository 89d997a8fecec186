"""Storage, catalog and monitoring: S3 lifecycle, Firehose, Timestream, Glue, Athena, SNS e-mail
subscriptions, CloudWatch alarms and dashboard; and how `up` handles an unavailable optional sink.

Everything runs against the moto server; settings are read back through boto3 field by field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from parliament import analyze_policy_string

from iotpipe import aws as aws_module
from iotpipe.engine.fields import Field, State, Write
from iotpipe.engine.model import Action, Change, Deferred, Plan, Resource, Step, Unavailable
from iotpipe.engine.reconcile import execute, plan_up
from iotpipe.resources.firehose import ARCHIVE_PREFIX, ERROR_PREFIX
from tests.faults import Rule
from tests.support import client, write_full_config

ACCOUNT = "123456789012"
REGION = "us-east-1"
STACK = "test"
BUCKET = f"test-archive-{ACCOUNT}-{REGION}"
TOPIC_ARN = f"arn:aws:sns:{REGION}:{ACCOUNT}:test-alerts"
ROLE_PREFIX = f"arn:aws:iam::{ACCOUNT}:role/"
# The processor's function reads sink settings (e.g. retention) from its environment.
OTHER_HALF = ("lambda.", "iot.", "sqs.")
OUR_SERVICES = ("s3", "firehose", "timestream-write", "glue", "athena", "cloudwatch", "sns")
TIMESTREAM_CLOSED = "Only existing Timestream for LiveAnalytics customers can access the service"


pytestmark = pytest.mark.usefixtures("processor_source")


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """Timestream is off by default; this module builds and checks every sink, so it is on."""
    return write_full_config(tmp_path / "iotpipe.toml")


# --- Emulator gaps, filled in the in-process moto server ---


@pytest.fixture(autouse=True)
def updatable_crawlers_and_workgroups(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto 5.2 implements neither UpdateCrawler nor UpdateWorkGroup; apply them as AWS does."""
    from moto.athena.responses import AthenaResponse
    from moto.core.responses import EmptyResult
    from moto.glue.responses import GlueResponse

    def update_crawler(self: GlueResponse) -> EmptyResult:
        # moto 5.2.6 names the parsed request `params` (`parameters` before).
        parameters = getattr(self, "params", None) or self.parameters
        crawler = self.glue_backend.get_crawler(parameters["Name"])
        fields = {
            "Role": "role",
            "DatabaseName": "database_name",
            "Description": "description",
            "Targets": "targets",
            "Schedule": "schedule",
            "SchemaChangePolicy": "schema_change_policy",
            "RecrawlPolicy": "recrawl_policy",
            "Configuration": "configuration",
        }
        for param, attribute in fields.items():
            if param in parameters:
                setattr(crawler, attribute, parameters[param])
        crawler.version += 1
        return EmptyResult()

    def update_work_group(self: AthenaResponse) -> str:
        group = self.athena_backend.work_groups[self._get_param("WorkGroup")]
        updates = dict(self._get_param("ConfigurationUpdates"))
        results = updates.pop("ResultConfigurationUpdates", None)
        if results is not None:
            group.configuration["ResultConfiguration"] = results
        group.configuration.update(updates)
        return "{}"

    monkeypatch.setattr(GlueResponse, "update_crawler", update_crawler, raising=False)
    monkeypatch.setattr(AthenaResponse, "update_work_group", update_work_group, raising=False)


# --- Helpers ---


@pytest.fixture
def aws(endpoint: str):
    return lambda service: client(endpoint, service)


def up_ok(cli, config: Path | None = None) -> Any:
    result = cli("up", "--yes", config=config)
    assert result.exit_code == 0, result
    return result


def our_mutating_calls(faults) -> list[tuple[str, str]]:
    return [(s, o) for s, o in faults.mutating_calls if s in OUR_SERVICES]


def changed_fields(plan: dict) -> dict[tuple[str, str], list[str]]:
    """The fields each resource of this half would change (the processor's own are not ours)."""
    return {
        (s["kind"], s["name"]): [c["field"] for c in s["changes"]]
        for s in plan["steps"]
        if s["action"] not in ("no-change", "skip") and not s["kind"].startswith(OTHER_HALF)
    }


def delivery_stream(aws) -> dict:
    return aws("firehose").describe_delivery_stream(DeliveryStreamName="test-archive")[
        "DeliveryStreamDescription"
    ]


def statement(document: dict, sid: str) -> dict:
    return next(s for s in document["Statement"] if s.get("Sid") == sid)


def role_policy(aws, role: str) -> dict:
    return aws("iam").get_role_policy(RoleName=role, PolicyName=f"{role}-policy")["PolicyDocument"]


# --- S3 lifecycle ---


def test_archive_lifecycle_tiers_readings_and_expires_what_is_temporary(cli, aws) -> None:
    up_ok(cli)
    rules = {
        r["ID"]: r for r in aws("s3").get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]
    }
    tiering = rules["readings-tiering"]
    assert tiering["Filter"] == {"Prefix": "readings/"}
    assert tiering["Status"] == "Enabled"
    assert tiering["Transitions"] == [
        {"Days": 30, "StorageClass": "STANDARD_IA"},
        {"Days": 90, "StorageClass": "GLACIER_IR"},
    ]
    for rule, prefix, days in [
        ("quarantine-expiry", "quarantine/", 30),
        ("firehose-errors-expiry", "firehose-errors/", 30),
        ("iot-errors-expiry", "iot-errors/", 30),
        ("athena-results-expiry", "athena-results/", 7),
    ]:
        assert rules[rule]["Filter"] == {"Prefix": prefix}
        assert rules[rule]["Expiration"] == {"Days": days}
        assert "Transitions" not in rules[rule]
    abort = rules["abort-incomplete-uploads"]
    assert abort["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}
    assert abort["Filter"] == {"Prefix": ""}


# --- Firehose ---


def test_delivery_stream_settings(cli, aws) -> None:
    up_ok(cli)
    stream = delivery_stream(aws)
    assert stream["DeliveryStreamType"] == "DirectPut"
    assert stream["DeliveryStreamStatus"] == "ACTIVE"
    assert stream["DeliveryStreamEncryptionConfiguration"]["KeyType"] == "AWS_OWNED_CMK"
    s3 = stream["Destinations"][0]["ExtendedS3DestinationDescription"]
    assert s3["BucketARN"] == f"arn:aws:s3:::{BUCKET}"
    assert s3["RoleARN"] == f"{ROLE_PREFIX}test-firehose"
    assert s3["Prefix"] == "readings/dt=!{timestamp:yyyy-MM-dd}/hour=!{timestamp:HH}/"
    assert s3["ErrorOutputPrefix"] == (
        "firehose-errors/!{firehose:error-output-type}/dt=!{timestamp:yyyy-MM-dd}/"
    )
    assert s3["BufferingHints"] == {"SizeInMBs": 64, "IntervalInSeconds": 900}
    assert s3["CompressionFormat"] == "GZIP"
    assert not s3.get("DataFormatConversionConfiguration", {}).get("Enabled")
    assert s3["CloudWatchLoggingOptions"] == {
        "Enabled": True,
        "LogGroupName": "/aws/kinesisfirehose/test-archive",
        "LogStreamName": "DestinationDelivery",
    }
    tags = aws("firehose").list_tags_for_delivery_stream(DeliveryStreamName="test-archive")
    assert {"Key": "iotpipe:stack", "Value": STACK} in tags["Tags"]
    logs = aws("logs")
    group = logs.describe_log_groups(logGroupNamePrefix="/aws/kinesisfirehose/test-archive")
    assert group["logGroups"][0]["retentionInDays"] == 14
    streams = logs.describe_log_streams(logGroupName="/aws/kinesisfirehose/test-archive")
    assert [s["logStreamName"] for s in streams["logStreams"]] == ["DestinationDelivery"]


def test_firehose_role_is_least_privilege(cli, aws) -> None:
    up_ok(cli)
    role = aws("iam").get_role(RoleName="test-firehose")["Role"]
    trust = role["AssumeRolePolicyDocument"]["Statement"][0]
    assert trust["Principal"] == {"Service": "firehose.amazonaws.com"}
    assert trust["Condition"] == {"StringEquals": {"sts:ExternalId": ACCOUNT}}
    policy = role_policy(aws, "test-firehose")
    assert statement(policy, "ArchiveBucket")["Resource"] == f"arn:aws:s3:::{BUCKET}"
    assert statement(policy, "ArchiveObjects")["Resource"] == [
        f"arn:aws:s3:::{BUCKET}/readings/*",
        f"arn:aws:s3:::{BUCKET}/firehose-errors/*",
    ]
    assert statement(policy, "ArchiveObjects")["Action"] == [
        "s3:AbortMultipartUpload",
        "s3:GetObject",
        "s3:PutObject",
    ]
    logs = statement(policy, "DeliveryLogs")
    assert logs["Action"] == ["logs:PutLogEvents"]
    assert logs["Resource"] == (
        f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/kinesisfirehose/test-archive:log-stream:*"
    )
    # No Glue access unless the stream converts to Parquet.
    assert not any(s.get("Sid") == "ParquetSchema" for s in policy["Statement"])


def test_parquet_archive_converts_with_the_glue_schema(cli, aws, tmp_path) -> None:
    up_ok(cli, write_full_config(tmp_path / "parquet.toml", archive={"format": "parquet"}))
    s3 = delivery_stream(aws)["Destinations"][0]["ExtendedS3DestinationDescription"]
    assert s3["CompressionFormat"] == "UNCOMPRESSED"
    conversion = s3["DataFormatConversionConfiguration"]
    assert conversion["Enabled"] is True
    assert conversion["SchemaConfiguration"]["DatabaseName"] == "test"
    assert conversion["SchemaConfiguration"]["TableName"] == "readings"
    assert conversion["SchemaConfiguration"]["RoleARN"] == f"{ROLE_PREFIX}test-firehose"
    assert conversion["InputFormatConfiguration"] == {"Deserializer": {"OpenXJsonSerDe": {}}}
    assert conversion["OutputFormatConfiguration"] == {
        "Serializer": {"ParquetSerDe": {"Compression": "SNAPPY"}}
    }
    table = aws("glue").get_table(DatabaseName="test", Name="readings")["Table"]
    serde = table["StorageDescriptor"]["SerdeInfo"]["SerializationLibrary"]
    assert serde == "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
    assert table["Parameters"]["classification"] == "parquet"
    glue = statement(role_policy(aws, "test-firehose"), "ParquetSchema")
    assert glue["Action"] == ["glue:GetTable", "glue:GetTableVersion", "glue:GetTableVersions"]
    assert glue["Resource"] == [
        f"arn:aws:glue:{REGION}:{ACCOUNT}:catalog",
        f"arn:aws:glue:{REGION}:{ACCOUNT}:database/test",
        f"arn:aws:glue:{REGION}:{ACCOUNT}:table/test/readings",
    ]


def test_parquet_needs_a_64_mib_buffer(cli, tmp_path) -> None:
    config = write_full_config(
        tmp_path / "small.toml", archive={"format": "parquet", "buffer_mb": 8}
    )
    result = cli("up", "--yes", config=config)
    assert result.exit_code == 2
    assert "archive" in result.stderr and "buffer_mb" in result.stderr


def test_firehose_prefixes_match_the_glue_location_template() -> None:
    assert ARCHIVE_PREFIX.startswith("readings/dt=") and "/hour=" in ARCHIVE_PREFIX
    assert ERROR_PREFIX.startswith("firehose-errors/")


# --- Timestream ---


def test_timeseries_database_and_table_retention(cli, aws) -> None:
    up_ok(cli)
    ts = aws("timestream-write")
    database = ts.describe_database(DatabaseName="test")["Database"]
    tags = ts.list_tags_for_resource(ResourceARN=database["Arn"])["Tags"]
    assert {"Key": "iotpipe:stack", "Value": STACK} in tags
    table = ts.describe_table(DatabaseName="test", TableName="readings")["Table"]
    assert table["RetentionProperties"] == {
        "MemoryStoreRetentionPeriodInHours": 24,
        "MagneticStoreRetentionPeriodInDays": 365,
    }
    assert table["MagneticStoreWriteProperties"]["EnableMagneticStoreWrites"] is True
    tags = ts.list_tags_for_resource(ResourceARN=table["Arn"])["Tags"]
    assert {"Key": "iotpipe:stack", "Value": STACK} in tags


def test_timeseries_retention_change_updates_the_table(cli, aws, tmp_path) -> None:
    up_ok(cli)
    config = write_full_config(tmp_path / "ts.toml", timeseries={"memory_retention_hours": 48})
    plan = cli("plan", "--output", "json", config=config).json
    assert changed_fields(plan) == {("timestream.table", "readings"): ["memory_retention_hours"]}
    up_ok(cli, config)
    table = aws("timestream-write").describe_table(DatabaseName="test", TableName="readings")
    assert table["Table"]["RetentionProperties"]["MemoryStoreRetentionPeriodInHours"] == 48


def test_unavailable_timestream_is_skipped_with_the_fix_named(cli, aws, faults) -> None:
    faults.rules.append(
        Rule(
            match=lambda service, _: service == "timestream-write",
            code="AccessDeniedException",
            message=TIMESTREAM_CLOSED,
        )
    )
    result = cli("up", "--yes")
    assert result.exit_code == 0, result
    assert "[timeseries] enabled = false" in result.stderr
    assert "Timestream for LiveAnalytics is not available" in result.stderr
    assert not [op for s, op in faults.mutating_calls if s == "timestream-write"]
    # Everything else came up.
    assert delivery_stream(aws)["DeliveryStreamStatus"] == "ACTIVE"
    assert aws("glue").get_table(DatabaseName="test", Name="readings")
    assert aws("athena").get_work_group(WorkGroup="test")["WorkGroup"]["Name"] == "test"
    # The processor is not pointed at a sink it cannot write to, nor allowed to.
    function = aws("lambda").get_function_configuration(FunctionName="test-processor")
    assert function["Environment"]["Variables"]["TIMESERIES_DATABASE"] == ""
    role_policy = aws("iam").get_role_policy(
        RoleName="test-processor", PolicyName="test-processor-policy"
    )
    assert "timestream" not in json.dumps(role_policy["PolicyDocument"])
    plan = cli("plan", "--output", "json").json
    skipped = {(s["kind"], s["name"]) for s in plan["steps"] if s["action"] == "skip"}
    assert skipped == {("timestream.database", "test"), ("timestream.table", "readings")}
    assert changed_fields(plan) == {}
    faults.calls.clear()
    again = cli("up", "--yes")
    assert again.exit_code == 0, again
    assert faults.mutating_calls == []
    assert "[timeseries] enabled = false" in again.stderr


def test_endpoint_discovery_failure_also_means_unavailable(cli, aws, faults) -> None:
    faults.rules.append(
        Rule(
            match=lambda service, op: service == "timestream-write",
            code="AccessDeniedException",
            message="User is not authorized to perform DescribeEndpoints",
        )
    )
    result = cli("up", "--yes", "--output", "json")
    assert result.exit_code == 0, result
    steps = {(s["kind"], s["action"]) for s in result.json["steps"]}
    assert ("timestream.database", "skip") in steps
    assert "[timeseries] enabled = false" in result.stderr


def test_timeseries_disabled_builds_none_of_it(cli, aws, faults, tmp_path) -> None:
    up_ok(cli, write_full_config(tmp_path / "off.toml", timeseries={"enabled": False}))
    assert not [c for c in faults.calls if c[0] == "timestream-write"]
    assert aws("timestream-write").list_databases()["Databases"] == []


# --- Glue ---


def test_glue_table_has_explicit_schema_and_partition_projection(cli, aws) -> None:
    up_ok(cli)
    glue = aws("glue")
    database = glue.get_database(Name="test")["Database"]
    assert database["Name"] == "test"
    tags = glue.get_tags(ResourceArn=f"arn:aws:glue:{REGION}:{ACCOUNT}:database/test")["Tags"]
    assert tags == {"iotpipe:stack": STACK}
    table = glue.get_table(DatabaseName="test", Name="readings")["Table"]
    assert table["TableType"] == "EXTERNAL_TABLE"
    storage = table["StorageDescriptor"]
    assert [(c["Name"], c["Type"]) for c in storage["Columns"]] == [
        ("device_id", "string"),
        ("ts", "bigint"),
        ("seq", "bigint"),
        ("received_at", "bigint"),
        ("metrics", "map<string,double>"),
        ("extra", "string"),
    ]
    assert [(k["Name"], k["Type"]) for k in table["PartitionKeys"]] == [
        ("dt", "string"),
        ("hour", "string"),
    ]
    assert storage["Location"] == f"s3://{BUCKET}/readings/"
    assert storage["InputFormat"] == "org.apache.hadoop.mapred.TextInputFormat"
    assert storage["SerdeInfo"]["SerializationLibrary"] == "org.openx.data.jsonserde.JsonSerDe"
    parameters = table["Parameters"]
    assert parameters["iotpipe:stack"] == STACK
    assert parameters["classification"] == "json"
    assert parameters["compressionType"] == "gzip"
    assert parameters["projection.enabled"] == "true"
    assert parameters["projection.dt.type"] == "date"
    assert parameters["projection.dt.format"] == "yyyy-MM-dd"
    assert parameters["projection.dt.range"] == "NOW-3YEARS,NOW"
    assert parameters["projection.hour.type"] == "integer"
    assert parameters["projection.hour.range"] == "0,23"
    assert parameters["projection.hour.digits"] == "2"
    assert parameters["storage.location.template"] == (
        f"s3://{BUCKET}/readings/dt=${{dt}}/hour=${{hour}}/"
    )


def test_parameters_added_by_a_crawler_are_not_drift(cli, aws) -> None:
    up_ok(cli)
    glue = aws("glue")
    table = glue.get_table(DatabaseName="test", Name="readings")["Table"]
    added = {**table["Parameters"], "UPDATED_BY_CRAWLER": "test-archive-crawler"}
    glue.update_table(
        DatabaseName="test",
        TableInput={
            "Name": "readings",
            "TableType": table["TableType"],
            "Parameters": added,
            "PartitionKeys": table["PartitionKeys"],
            "StorageDescriptor": table["StorageDescriptor"],
        },
    )
    assert changed_fields(cli("plan", "--output", "json").json) == {}


def test_crawler_keeps_the_declared_table(cli, aws) -> None:
    up_ok(cli)
    crawler = aws("glue").get_crawler(Name="test-archive-crawler")["Crawler"]
    assert crawler["Role"] == f"{ROLE_PREFIX}test-crawler"
    assert crawler["DatabaseName"] == "test"
    assert crawler["Targets"]["S3Targets"] == [{"Path": f"s3://{BUCKET}/readings/"}]
    assert crawler["Schedule"]["ScheduleExpression"] == "cron(0 3 ? * SUN *)"
    assert crawler["SchemaChangePolicy"] == {"UpdateBehavior": "LOG", "DeleteBehavior": "LOG"}
    assert crawler["RecrawlPolicy"] == {"RecrawlBehavior": "CRAWL_NEW_FOLDERS_ONLY"}
    assert json.loads(crawler["Configuration"]) == {
        "Version": 1.0,
        "CrawlerOutput": {"Partitions": {"AddOrUpdateBehavior": "InheritFromTable"}},
        "Grouping": {"TableGroupingPolicy": "CombineCompatibleSchemas"},
    }
    tags = aws("glue").get_tags(
        ResourceArn=f"arn:aws:glue:{REGION}:{ACCOUNT}:crawler/test-archive-crawler"
    )
    assert tags["Tags"] == {"iotpipe:stack": STACK}
    role = aws("iam").get_role(RoleName="test-crawler")["Role"]
    trust = role["AssumeRolePolicyDocument"]["Statement"][0]
    assert trust["Principal"] == {"Service": "glue.amazonaws.com"}
    assert "Condition" not in trust  # Glue sends no aws:SourceAccount (test_glue_crawler_role)
    policy = role_policy(aws, "test-crawler")
    assert statement(policy, "CatalogTable")["Resource"] == [
        f"arn:aws:glue:{REGION}:{ACCOUNT}:catalog",
        f"arn:aws:glue:{REGION}:{ACCOUNT}:database/test",
        f"arn:aws:glue:{REGION}:{ACCOUNT}:table/test/readings",
    ]
    assert "glue:DeleteTable" not in statement(policy, "CatalogTable")["Action"]
    assert statement(policy, "ReadReadings")["Resource"] == f"arn:aws:s3:::{BUCKET}/readings/*"
    assert statement(policy, "ListReadings")["Condition"] == {
        "StringLike": {"s3:prefix": ["readings/*"]}
    }
    assert statement(policy, "CrawlerLogs")["Resource"] == (
        f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws-glue/crawlers:log-stream:*"
    )


def test_crawler_schedule_change_updates_it_in_place(cli, aws, tmp_path) -> None:
    up_ok(cli)
    config = write_full_config(
        tmp_path / "cron.toml", catalog={"crawler_schedule": "cron(0 5 * * ? *)"}
    )
    plan = cli("plan", "--output", "json", config=config).json
    assert changed_fields(plan) == {("glue.crawler", "test-archive-crawler"): ["schedule"]}
    up_ok(cli, config)
    crawler = aws("glue").get_crawler(Name="test-archive-crawler")["Crawler"]
    assert crawler["Schedule"]["ScheduleExpression"] == "cron(0 5 * * ? *)"


# --- Athena ---


def test_workgroup_enforces_encrypted_results_and_a_scan_cutoff(cli, aws) -> None:
    up_ok(cli)
    group = aws("athena").get_work_group(WorkGroup="test")["WorkGroup"]
    config = group["Configuration"]
    assert config["EnforceWorkGroupConfiguration"] is True
    assert config["ResultConfiguration"] == {
        "OutputLocation": f"s3://{BUCKET}/athena-results/",
        "EncryptionConfiguration": {"EncryptionOption": "SSE_S3"},
    }
    assert config["BytesScannedCutoffPerQuery"] == 1024 * 1024 * 1024
    assert config["PublishCloudWatchMetricsEnabled"] is True
    assert config["EngineVersion"]["SelectedEngineVersion"] == "AUTO"
    tags = aws("athena").list_tags_for_resource(
        ResourceARN=f"arn:aws:athena:{REGION}:{ACCOUNT}:workgroup/test"
    )["Tags"]
    assert {"Key": "iotpipe:stack", "Value": STACK} in tags


# --- CloudWatch ---


EXPECTED_ALARMS = {
    "test-readings-iterator-age": (
        "AWS/Kinesis",
        "GetRecords.IteratorAgeMilliseconds",
        {"StreamName": "test-readings"},
        "Maximum",
        300_000.0,
    ),
    "test-readings-write-throttled": (
        "AWS/Kinesis",
        "WriteProvisionedThroughputExceeded",
        {"StreamName": "test-readings"},
        "Sum",
        0.0,
    ),
    "test-processor-errors": (
        "AWS/Lambda",
        "Errors",
        {"FunctionName": "test-processor"},
        "Sum",
        0.0,
    ),
    "test-processor-throttles": (
        "AWS/Lambda",
        "Throttles",
        {"FunctionName": "test-processor"},
        "Sum",
        0.0,
    ),
    "test-processor-iterator-age": (
        "AWS/Lambda",
        "IteratorAge",
        {"FunctionName": "test-processor"},
        "Maximum",
        300_000.0,
    ),
    "test-processor-dlq-not-empty": (
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        {"QueueName": "test-processor-dlq"},
        "Maximum",
        0.0,
    ),
    "test-archive-freshness": (
        "AWS/Firehose",
        "DeliveryToS3.DataFreshness",
        {"DeliveryStreamName": "test-archive"},
        "Maximum",
        1800.0,
    ),
    "test-device-state-write-throttled": (
        "AWS/DynamoDB",
        "WriteThrottleEvents",
        {"TableName": "test-device-state"},
        "Sum",
        0.0,
    ),
    "test-device-state-throttled-requests": (
        "AWS/DynamoDB",
        "ThrottledRequests",
        {"TableName": "test-device-state", "Operation": "BatchExecuteStatement"},
        "Sum",
        0.0,
    ),
    "test-iot-rule-failures": (
        "AWS/IoT",
        "Failure",
        {"RuleName": "test_telemetry", "ActionType": "Kinesis"},
        "Sum",
        0.0,
    ),
    "test-iot-rule-error-action-failures": (
        "AWS/IoT",
        "ErrorActionFailure",
        {"RuleName": "test_telemetry", "ActionType": "S3"},
        "Sum",
        0.0,
    ),
    "test-iot-rule-throttled": (
        "AWS/IoT",
        "RuleMessageThrottled",
        {"RuleName": "test_telemetry"},
        "Sum",
        0.0,
    ),
}


def test_alarms_watch_every_stage_and_notify_the_topic(cli, aws) -> None:
    up_ok(cli)
    cloudwatch = aws("cloudwatch")
    alarms = {
        a["AlarmName"]: a
        for a in cloudwatch.describe_alarms(AlarmNamePrefix="test-")["MetricAlarms"]
    }
    assert set(alarms) == set(EXPECTED_ALARMS)
    for name, (namespace, metric, dimensions, statistic, threshold) in EXPECTED_ALARMS.items():
        alarm = alarms[name]
        assert alarm["Namespace"] == namespace, name
        assert alarm["MetricName"] == metric, name
        assert {d["Name"]: d["Value"] for d in alarm["Dimensions"]} == dimensions, name
        assert alarm["Statistic"] == statistic, name
        assert alarm["Threshold"] == threshold, name
        assert alarm["ComparisonOperator"] == "GreaterThanThreshold", name
        assert alarm["TreatMissingData"] == "notBreaching", name
        assert alarm["AlarmActions"] == [TOPIC_ARN], name
        assert alarm["OKActions"] == [TOPIC_ARN], name
        assert alarm["ActionsEnabled"] is True, name
        tags = cloudwatch.list_tags_for_resource(ResourceARN=alarm["AlarmArn"])["Tags"]
        assert {"Key": "iotpipe:stack", "Value": STACK} in tags, name
    iterator = alarms["test-readings-iterator-age"]
    assert (iterator["Period"], iterator["EvaluationPeriods"], iterator["DatapointsToAlarm"]) == (
        60,
        5,
        5,
    )
    dlq = alarms["test-processor-dlq-not-empty"]
    assert (dlq["Period"], dlq["EvaluationPeriods"]) == (300, 1)


def test_the_plan_reads_all_alarms_in_one_call_and_still_sees_drift(cli, aws, faults) -> None:
    up_ok(cli)
    aws("cloudwatch").put_metric_alarm(
        AlarmName="test-processor-errors",
        Namespace="AWS/Lambda",
        MetricName="Errors",
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=99.0,
        ComparisonOperator="GreaterThanThreshold",
    )
    faults.calls.clear()
    plan = cli("plan", "--output", "json").json
    assert [op for s, op in faults.calls if op == "DescribeAlarms"] == ["DescribeAlarms"]
    assert ("cloudwatch.alarm", "test-processor-errors") in changed_fields(plan)
    up_ok(cli)
    # After the update the alarm is read again, from AWS, and is back in line.
    assert changed_fields(cli("plan", "--output", "json").json) == {}


def test_dashboard_shows_the_pipeline_and_records_its_stack(cli, aws) -> None:
    up_ok(cli)
    body = json.loads(aws("cloudwatch").get_dashboard(DashboardName="test")["DashboardBody"])
    widgets = body["widgets"]
    assert widgets[0]["type"] == "text"
    assert "Managed by iotpipe stack `test`" in widgets[0]["properties"]["markdown"]
    alarm_widget = next(w for w in widgets if w["type"] == "alarm")
    assert len(alarm_widget["properties"]["alarms"]) == len(EXPECTED_ALARMS)
    metrics = {m[1] for w in widgets if w["type"] == "metric" for m in w["properties"]["metrics"]}
    for metric in (
        "IncomingRecords",
        "GetRecords.IteratorAgeMilliseconds",
        "Errors",
        "Duration",
        "ApproximateNumberOfMessagesVisible",
        "DeliveryToS3.DataFreshness",
        "WriteThrottleEvents",
        "TopicMatch",
    ):
        assert metric in metrics


def test_a_dashboard_of_another_stack_is_refused(cli, aws) -> None:
    body = {
        "widgets": [
            {"type": "text", "properties": {"markdown": "Managed by iotpipe stack `other`"}}
        ]
    }
    aws("cloudwatch").put_dashboard(DashboardName="test", DashboardBody=json.dumps(body))
    result = cli("plan")
    assert result.exit_code == 1
    assert "cloudwatch.dashboard test" in result.stderr and "'other'" in result.stderr


# --- SNS e-mail subscriptions ---


def subscribed(aws) -> dict[str, str]:
    subs = aws("sns").list_subscriptions_by_topic(TopicArn=TOPIC_ARN)["Subscriptions"]
    return {s["Endpoint"]: s["SubscriptionArn"] for s in subs if s["Protocol"] == "email"}


def test_email_subscriptions_follow_the_config(cli, aws, tmp_path) -> None:
    two = write_full_config(
        tmp_path / "two.toml", alerts={"emails": ["a@example.com", "b@example.com"]}
    )
    up_ok(cli, two)
    assert set(subscribed(aws)) == {"a@example.com", "b@example.com"}
    one = write_full_config(tmp_path / "one.toml", alerts={"emails": ["b@example.com"]})
    plan = cli("plan", "--output", "json", config=one).json
    step = next(s for s in plan["steps"] if s["kind"] == "sns.subscriptions")
    assert step["changes"] == [
        {
            "field": "emails",
            "old": ["a@example.com", "b@example.com"],
            "new": ["b@example.com"],
            "paths": [{"path": [0], "old": "a@example.com"}],
        }
    ]
    up_ok(cli, one)
    assert set(subscribed(aws)) == {"b@example.com"}
    assert changed_fields(cli("plan", "--output", "json", config=one).json) == {}


@pytest.fixture
def pending_confirmation():
    """Make SNS list chosen addresses as AWS lists unconfirmed ones: without an ARN."""
    pending: set[str] = set()

    def hook(service: str, client: Any) -> None:
        if service != "sns":
            return

        def mark(parsed: dict, **_: Any) -> None:
            for sub in parsed.get("Subscriptions", []):
                if sub.get("Endpoint") in pending:
                    sub["SubscriptionArn"] = "PendingConfirmation"

        client.meta.events.register("after-call.sns.ListSubscriptionsByTopic", mark)

    remove = aws_module.add_client_hook(hook)
    yield pending
    remove()


def test_pending_subscriptions_are_listed_and_not_unsubscribed(
    cli, aws, tmp_path, faults, pending_confirmation
) -> None:
    two = write_full_config(
        tmp_path / "two.toml", alerts={"emails": ["a@example.com", "b@example.com"]}
    )
    up_ok(cli, two)
    pending_confirmation.update({"a@example.com", "b@example.com"})
    plan = cli("plan", "--output", "json", config=two).json
    step = next(s for s in plan["steps"] if s["kind"] == "sns.subscriptions")
    assert step["action"] == "no-change"
    assert "pending confirmation" in step["note"] and "a@example.com" in step["note"]
    one = write_full_config(tmp_path / "one.toml", alerts={"emails": ["b@example.com"]})
    faults.calls.clear()
    result = cli("up", "--yes", "--output", "json", config=one)
    assert result.exit_code == 0, result
    step = next(s for s in result.json["steps"] if s["kind"] == "sns.subscriptions")
    assert step["action"] == "no-change"
    assert "cannot unsubscribe while pending confirmation" in step["note"]
    assert "a@example.com" in step["note"]
    assert ("sns", "Unsubscribe") not in faults.calls
    assert our_mutating_calls(faults) == []


# --- The whole half: idempotence, changes, retries, teardown ---


def test_plan_after_up_is_empty_and_second_up_makes_no_mutating_call(cli, faults) -> None:
    up_ok(cli)
    plan = cli("plan", "--output", "json").json
    assert changed_fields(plan) == {}
    assert all(s["action"] == "no-change" for s in plan["steps"])
    faults.calls.clear()
    up_ok(cli)
    assert faults.mutating_calls == []


def test_config_change_plans_and_applies_exactly_those_fields(cli, aws, faults, tmp_path) -> None:
    up_ok(cli)
    config = write_full_config(
        tmp_path / "changed.toml",
        archive={"buffer_mb": 128},
        alerts={"iterator_age_seconds": 120, "emails": ["ops@example.com"]},
    )
    plan = cli("plan", "--output", "json", config=config).json
    assert changed_fields(plan) == {
        ("firehose.delivery_stream", "test-archive"): ["buffering"],
        ("cloudwatch.alarm", "test-readings-iterator-age"): ["threshold"],
        ("cloudwatch.alarm", "test-processor-iterator-age"): ["threshold"],
        ("sns.subscriptions", "test-alerts"): ["emails"],
    }
    firehose = next(s for s in plan["steps"] if s["kind"] == "firehose.delivery_stream")
    assert firehose["changes"][0]["old"] == {"size_mb": 64, "interval_seconds": 900}
    assert firehose["changes"][0]["new"] == {"size_mb": 128, "interval_seconds": 900}
    version = delivery_stream(aws)["VersionId"]
    faults.calls.clear()
    up_ok(cli, config)
    assert sorted(set(our_mutating_calls(faults))) == [
        ("cloudwatch", "PutMetricAlarm"),
        ("firehose", "UpdateDestination"),
        ("sns", "Subscribe"),
    ]
    stream = delivery_stream(aws)
    assert stream["VersionId"] != version
    s3 = stream["Destinations"][0]["ExtendedS3DestinationDescription"]
    assert s3["BufferingHints"] == {"SizeInMBs": 128, "IntervalInSeconds": 900}
    assert s3["CompressionFormat"] == "GZIP"
    assert s3["Prefix"] == ARCHIVE_PREFIX
    alarm = aws("cloudwatch").describe_alarms(AlarmNames=["test-readings-iterator-age"])
    assert alarm["MetricAlarms"][0]["Threshold"] == 120_000.0
    assert alarm["MetricAlarms"][0]["AlarmActions"] == [TOPIC_ARN]
    assert set(subscribed(aws)) == {"ops@example.com"}
    assert changed_fields(cli("plan", "--output", "json", config=config).json) == {}


def test_iam_propagation_errors_on_create_are_retried(cli, aws, faults) -> None:
    delivery = faults.fail(
        "firehose",
        "CreateDeliveryStream",
        "InvalidArgumentException",
        f"Firehose is unable to assume role {ROLE_PREFIX}test-firehose",
        times=3,
    )
    crawler = faults.fail(
        "glue",
        "CreateCrawler",
        "InvalidInputException",
        "Service is unable to assume provided role. Please verify role's TrustPolicy",
        times=3,
    )
    up_ok(cli)
    assert delivery.hits == 3 and crawler.hits == 3
    assert delivery_stream(aws)["DeliveryStreamStatus"] == "ACTIVE"
    assert aws("glue").get_crawler(Name="test-archive-crawler")["Crawler"]["Name"]


def test_an_unrelated_firehose_error_fails_fast_naming_the_stream(cli, faults) -> None:
    faults.fail(
        "firehose", "CreateDeliveryStream", "InvalidArgumentException", "bad prefix", times=None
    )
    result = cli("up", "--yes")
    assert result.exit_code == 1
    assert "firehose.delivery_stream test-archive" in result.stderr
    assert "bad prefix" in result.stderr


def test_generated_policies_pass_the_iam_linter(cli, aws) -> None:
    up_ok(cli)
    for role in ("test-firehose", "test-crawler"):
        findings = analyze_policy_string(json.dumps(role_policy(aws, role))).findings
        assert findings == [], (role, [str(f) for f in findings])


def stack_names(aws) -> list[str]:
    """Every resource of this half that is named after the stack."""
    found = []
    found += aws("firehose").list_delivery_streams()["DeliveryStreamNames"]
    found += [d["Name"] for d in aws("glue").get_databases()["DatabaseList"]]
    found += [c["Name"] for c in aws("glue").get_crawlers()["Crawlers"]]
    found += [w["Name"] for w in aws("athena").list_work_groups()["WorkGroups"]]
    found += [a["AlarmName"] for a in aws("cloudwatch").describe_alarms()["MetricAlarms"]]
    found += [d["DashboardName"] for d in aws("cloudwatch").list_dashboards()["DashboardEntries"]]
    found += [d["DatabaseName"] for d in aws("timestream-write").list_databases()["Databases"]]
    found += [g["logGroupName"] for g in aws("logs").describe_log_groups()["logGroups"]]
    found += [r["RoleName"] for r in aws("iam").list_roles()["Roles"]]
    found += [t["TopicArn"] for t in aws("sns").list_topics()["Topics"]]
    found += [s["Endpoint"] for s in aws("sns").list_subscriptions()["Subscriptions"]]
    found += [b["Name"] for b in aws("s3").list_buckets()["Buckets"]]
    return [name for name in found if "test" in name or "@" in name]


def test_down_with_delete_data_leaves_nothing_named_after_the_stack(cli, aws, tmp_path) -> None:
    config = write_full_config(tmp_path / "mail.toml", alerts={"emails": ["ops@example.com"]})
    up_ok(cli, config)
    aws("s3").put_object(Bucket=BUCKET, Key="readings/dt=2026-01-01/hour=00/x.gz", Body=b"x")
    assert stack_names(aws)
    result = cli("down", "--yes", "--delete-data", config=config)
    assert result.exit_code == 0, result
    assert stack_names(aws) == []


def test_down_without_delete_data_keeps_the_data_stores(cli, aws) -> None:
    up_ok(cli)
    result = cli("down", "--yes", "--output", "json")
    assert result.exit_code == 0, result
    kept = {(s["kind"], s["name"]) for s in result.json["steps"] if s["action"] == "keep"}
    assert ("timestream.database", "test") in kept
    assert ("timestream.table", "readings") in kept
    assert ("s3.bucket", BUCKET) in kept
    assert aws("timestream-write").describe_table(DatabaseName="test", TableName="readings")
    assert aws("firehose").list_delivery_streams()["DeliveryStreamNames"] == []
    assert aws("glue").get_crawlers()["Crawlers"] == []
    # Only the alarms of the kept table's auto scaling, which stays with it.
    alarms = [a["AlarmName"] for a in aws("cloudwatch").describe_alarms()["MetricAlarms"]]
    assert all(name.startswith("TargetTracking-table/test-device-state-") for name in alarms)


# --- The engine: optional resources become warnings, not failures ---


class _Fake(Resource):
    kind = "fake"

    def __init__(self, name: str, *, optional: bool, fail_create: bool, depends_on=()) -> None:
        super().__init__(None, name, depends_on)  # type: ignore[arg-type]
        self.optional = optional
        self.fail_create = fail_create
        self.created = False

    def desired(self) -> dict[str, Any]:
        return {}

    def observe(self, aws: Any) -> dict[str, Any] | None:
        return {} if self.created else None

    def create(self, aws: Any) -> None:
        if self.fail_create:
            raise Unavailable("service closed to this account", resource=self.label)
        self.created = True

    def delete(self, aws: Any) -> None:
        """Nothing to delete."""


class _Converged:
    """Just enough of `Aws` for the engine to re-read a resource after creating it."""

    def wait_for(self, check: Any, **_: Any) -> Any:
        return check()


def test_an_optional_resource_unavailable_at_create_is_skipped_with_its_dependents() -> None:
    sink = _Fake("sink", optional=True, fail_create=True)
    table = _Fake("table", optional=True, fail_create=False, depends_on=(sink.key,))
    other = _Fake("other", optional=False, fail_create=False)
    plan = Plan([Step(Action.CREATE, r) for r in (sink, table, other)])
    execute(_Converged(), plan)  # type: ignore[arg-type]
    assert [s.action for s in plan.steps] == [Action.SKIP, Action.SKIP, Action.CREATE]
    assert plan.skipped[0].note == "service closed to this account"
    assert plan.skipped[1].note == "skipped with fake/sink"
    assert other.created and not table.created


def test_a_step_aws_allows_only_later_is_deferred_and_holds_back_nothing() -> None:
    def later(r: Resource, aws: Any, want: dict[str, Any], have: State) -> None:
        raise Deferred("one TTL change per table per hour", resource=r.label)

    class Later(_Fake):
        fields = (Field("ttl", "ttl", "update_time_to_live"),)
        writes = (Write("update_time_to_live", later),)

        def desired(self) -> dict[str, Any]:
            return {"ttl": "expires_at"}

    table = Later("table", optional=False, fail_create=False)
    table.created = True
    function = _Fake("function", optional=False, fail_create=False, depends_on=(table.key,))
    changed = [Change("ttl", None, "expires_at")]
    plan = Plan([Step(Action.UPDATE, table, changed), Step(Action.CREATE, function)])
    execute(_Converged(), plan)  # type: ignore[arg-type]
    assert [s.action for s in plan.steps] == [Action.DEFER, Action.CREATE]
    assert plan.deferred[0].note == "one TTL change per table per hour"
    assert function.created


def test_a_required_resource_that_is_unavailable_fails_the_run() -> None:
    required = _Fake("required", optional=False, fail_create=True)
    with pytest.raises(Unavailable):
        execute(_Converged(), Plan([Step(Action.CREATE, required)]))  # type: ignore[arg-type]


def test_plan_skips_an_optional_resource_whose_service_is_unavailable() -> None:
    class Closed(_Fake):
        def observe(self, aws: Any) -> dict[str, Any] | None:
            raise Unavailable("closed", resource=self.label)

    closed = Closed("closed", optional=True, fail_create=False)
    dependent = _Fake("dependent", optional=False, fail_create=False, depends_on=(closed.key,))
    plan = plan_up(None, [closed, dependent], STACK)  # type: ignore[arg-type]
    assert [(s.action, s.note) for s in plan.steps] == [
        (Action.SKIP, "closed"),
        (Action.SKIP, "skipped with fake/closed"),
    ]
    assert plan.is_empty


def test_down_removes_a_time_series_sink_the_config_has_since_switched_off(
    cli, aws, tmp_path
) -> None:
    up_ok(cli)
    off = write_full_config(tmp_path / "off.toml", timeseries={"enabled": False})
    kept = cli("down", "--yes", "-o", "json", config=off)
    assert kept.exit_code == 0, kept
    assert ("timestream.database", "keep") in {(s["kind"], s["action"]) for s in kept.json["steps"]}
    assert cli("down", "--yes", "--delete-data", config=off).exit_code == 0
    assert aws("timestream-write").list_databases()["Databases"] == []
