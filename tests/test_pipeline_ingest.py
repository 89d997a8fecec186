"""Ingest and compute: IoT Core, the processor Lambda, its event source mapping, its dead letters.

Everything runs against the moto server; settings are read back through boto3 field by field.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import pytest

from iotpipe import packaging
from tests.support import client, write_full_config

ACCOUNT = "123456789012"
REGION = "us-east-1"
STACK = "test"
THING = "${iot:Connection.Thing.ThingName}"
RULE = "test_telemetry"
FUNCTION = "test-processor"
STREAM_ARN = f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/test-readings"
DLQ_ARN = f"arn:aws:sqs:{REGION}:{ACCOUNT}:test-processor-dlq"
BUCKET = f"test-archive-{ACCOUNT}-{REGION}"
OUR_SERVICES = ("iot", "lambda", "sqs")
# Taken before any fixture points packaging at a test package.
REAL_PROCESSOR_SOURCE = packaging.PROCESSOR_SOURCE


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """Timestream is off by default; this module builds and checks every sink, so it is on."""
    return write_full_config(tmp_path / "iotpipe.toml")


pytestmark = pytest.mark.usefixtures("processor_source")


@pytest.fixture
def aws(endpoint: str):
    return lambda service: client(endpoint, service)


def our_mutating_calls(faults) -> list[tuple[str, str]]:
    return [(s, o) for s, o in faults.mutating_calls if s in OUR_SERVICES]


def steps_of(plan: dict, *kinds: str) -> list[dict]:
    return [s for s in plan["steps"] if s["kind"] in kinds]


def up_ok(cli, config: Path | None = None) -> None:
    result = cli("up", "--yes", config=config)
    assert result.exit_code == 0, result


# --- IoT Core ---


def device_policy(aws) -> dict:
    return json.loads(aws("iot").get_policy(policyName="test-device")["policyDocument"])


def statement(document: dict, sid: str) -> dict:
    return next(s for s in document["Statement"] if s["Sid"] == sid)


def test_device_policy_confines_each_device_to_itself_with_basic_ingest(cli, aws) -> None:
    up_ok(cli)
    document = device_policy(aws)
    connect = document["Statement"][0]
    assert connect["Action"] == "iot:Connect"
    assert connect["Resource"] == f"arn:aws:iot:{REGION}:{ACCOUNT}:client/{THING}"
    assert connect["Condition"] == {"Bool": {"iot:Connection.Thing.IsAttached": "true"}}
    publish = statement(document, "PublishOwnTelemetry")
    assert publish["Action"] == "iot:Publish"
    assert publish["Resource"] == (
        f"arn:aws:iot:{REGION}:{ACCOUNT}:topic/$aws/rules/{RULE}/dt/sensors/{THING}/telemetry"
    )
    shadow = statement(document, "OwnShadowTopics")
    assert sorted(shadow["Action"]) == ["iot:Publish", "iot:Receive"]
    assert (
        shadow["Resource"] == f"arn:aws:iot:{REGION}:{ACCOUNT}:topic/$aws/things/{THING}/shadow/*"
    )
    subscribe = statement(document, "OwnShadowSubscriptions")
    assert subscribe["Action"] == "iot:Subscribe"
    assert subscribe["Resource"] == (
        f"arn:aws:iot:{REGION}:{ACCOUNT}:topicfilter/$aws/things/{THING}/shadow/*"
    )
    # Nothing else is granted: no wildcard topics, no other actions.
    assert len(document["Statement"]) == 4


def test_device_policy_without_basic_ingest_allows_the_plain_topic(cli, aws, tmp_path) -> None:
    config = write_full_config(tmp_path / "plain.toml", iot={"basic_ingest": False})
    up_ok(cli, config)
    publish = statement(device_policy(aws), "PublishOwnTelemetry")
    assert (
        publish["Resource"] == f"arn:aws:iot:{REGION}:{ACCOUNT}:topic/dt/sensors/{THING}/telemetry"
    )


def test_topic_rule_feeds_kinesis_and_keeps_failures(cli, aws) -> None:
    up_ok(cli)
    rule = aws("iot").get_topic_rule(ruleName=RULE)["rule"]
    assert rule["sql"] == (
        "SELECT *, topic(3) AS device_id, timestamp() AS received_at FROM 'dt/sensors/+/telemetry'"
    )
    assert rule["awsIotSqlVersion"] == "2016-03-23"
    assert rule["ruleDisabled"] is False
    role_arn = f"arn:aws:iam::{ACCOUNT}:role/test-iot-rule"
    assert rule["actions"] == [
        {
            "kinesis": {
                "roleArn": role_arn,
                "streamName": "test-readings",
                "partitionKey": "${topic(3)}",
            }
        }
    ]
    error = rule["errorAction"]["s3"]
    assert error["roleArn"] == role_arn
    assert error["bucketName"] == BUCKET
    assert error["key"].startswith("iot-errors/")
    assert "iotpipe:stack=test" in rule["description"]

    role = aws("iam").get_role(RoleName="test-iot-rule")["Role"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "iot.amazonaws.com"}
    assert trust["Condition"]["StringEquals"] == {"aws:SourceAccount": ACCOUNT}
    assert trust["Condition"]["ArnLike"] == {
        "aws:SourceArn": f"arn:aws:iot:{REGION}:{ACCOUNT}:rule/{RULE}"
    }
    policy = aws("iam").get_role_policy(RoleName="test-iot-rule", PolicyName="test-iot-rule-policy")
    grants = {s["Sid"]: s for s in policy["PolicyDocument"]["Statement"]}
    assert grants["WriteReadings"]["Action"] == ["kinesis:PutRecord"]
    assert grants["WriteReadings"]["Resource"] == STREAM_ARN
    assert grants["KeepFailedMessages"]["Action"] == ["s3:PutObject"]
    assert grants["KeepFailedMessages"]["Resource"] == f"arn:aws:s3:::{BUCKET}/iot-errors/*"


def test_thing_type_records_its_stack(cli, aws) -> None:
    up_ok(cli)
    found = aws("iot").describe_thing_type(thingTypeName="test-sensor")
    assert "iotpipe:stack=test" in found["thingTypeProperties"]["thingTypeDescription"]
    assert found["thingTypeMetadata"]["deprecated"] is False


def test_a_resource_of_another_stack_is_refused(cli, aws) -> None:
    aws("iot").create_thing_type(
        thingTypeName="test-sensor",
        thingTypeProperties={"thingTypeDescription": "(iotpipe:stack=other)"},
    )
    result = cli("plan")
    assert result.exit_code == 1
    assert "iot.thing-type test-sensor" in result.stderr
    assert "'other'" in result.stderr


# --- The processor ---


def test_processor_function_settings(cli, aws, processor_source) -> None:
    up_ok(cli)
    found = aws("lambda").get_function(FunctionName=FUNCTION)
    conf = found["Configuration"]
    assert conf["Runtime"] == "python3.11"
    assert conf["Handler"] == "processor.handler.lambda_handler"
    assert conf["Architectures"] == ["arm64"]
    assert conf["MemorySize"] == 256
    assert conf["Timeout"] == 60
    assert conf["Role"] == f"arn:aws:iam::{ACCOUNT}:role/test-processor"
    assert [layer["Arn"] for layer in conf["Layers"]] == [
        f"arn:aws:lambda:{REGION}:017000801446:layer:AWSLambdaPowertoolsPythonV3-python311-arm64:27"
    ]
    assert conf["Environment"]["Variables"] == {
        "STACK_NAME": "test",
        "DEVICE_STATE_TABLE": "test-device-state",
        "DEVICE_STATE_TTL_DAYS": "30",
        "TIMESERIES_DATABASE": "test",
        "TIMESERIES_TABLE": "readings",
        "TIMESERIES_MEMORY_RETENTION_HOURS": "24",
        "TIMESERIES_MAGNETIC_STORE_WRITES": "true",
        "TIMESERIES_MAGNETIC_RETENTION_DAYS": "365",
        "ARCHIVE_DELIVERY_STREAM": "test-archive",
        "ARCHIVE_BUCKET": BUCKET,
        "QUARANTINE_PREFIX": "quarantine/",
        "POWERTOOLS_SERVICE_NAME": "iotpipe-processor",
        "POWERTOOLS_METRICS_NAMESPACE": "iotpipe",
        "PROCESSOR_METRICS": "",
        "LOG_LEVEL": "INFO",
    }
    assert conf["CodeSha256"] == packaging.build_zip(processor_source).sha256
    assert found["Tags"]["iotpipe:stack"] == "test"

    groups = aws("logs").describe_log_groups(logGroupNamePrefix="/aws/lambda/test-processor")
    (group,) = groups["logGroups"]
    assert group["retentionInDays"] == 14


def test_timeseries_disabled_blanks_its_variables_and_grants(cli, aws, tmp_path) -> None:
    config = write_full_config(tmp_path / "nots.toml", timeseries={"enabled": False})
    up_ok(cli, config)
    env = aws("lambda").get_function_configuration(FunctionName=FUNCTION)["Environment"]
    assert env["Variables"]["TIMESERIES_DATABASE"] == ""
    assert env["Variables"]["TIMESERIES_TABLE"] == ""
    policy = aws("iam").get_role_policy(
        RoleName="test-processor", PolicyName="test-processor-policy"
    )
    actions = [a for s in policy["PolicyDocument"]["Statement"] for a in s["Action"]]
    assert not any(a.startswith("timestream:") for a in actions)


def test_processor_role_is_least_privilege(cli, aws) -> None:
    up_ok(cli)
    role = aws("iam").get_role(RoleName="test-processor")["Role"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "lambda.amazonaws.com"}
    assert trust["Condition"]["StringEquals"] == {"aws:SourceAccount": ACCOUNT}
    policy = aws("iam").get_role_policy(
        RoleName="test-processor", PolicyName="test-processor-policy"
    )
    grants = {s["Sid"]: (s["Action"], s["Resource"]) for s in policy["PolicyDocument"]["Statement"]}
    log_group = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/test-processor:*"
    assert grants == {
        "ReadReadings": (
            [
                "kinesis:DescribeStream",
                "kinesis:DescribeStreamSummary",
                "kinesis:GetRecords",
                "kinesis:GetShardIterator",
                "kinesis:ListShards",
            ],
            STREAM_ARN,
        ),
        "ListStreams": (["kinesis:ListStreams"], "*"),
        "WriteDeviceState": (
            ["dynamodb:PartiQLInsert", "dynamodb:PartiQLUpdate"],
            f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/test-device-state",
        ),
        "ArchiveReadings": (
            ["firehose:PutRecordBatch"],
            f"arn:aws:firehose:{REGION}:{ACCOUNT}:deliverystream/test-archive",
        ),
        "QuarantineInvalidReadings": (["s3:PutObject"], f"arn:aws:s3:::{BUCKET}/quarantine/*"),
        "DeadLetterFailedBatches": (["sqs:SendMessage"], DLQ_ARN),
        "WriteOwnLogs": (["logs:CreateLogStream", "logs:PutLogEvents"], log_group),
        "WriteTimeseries": (
            ["timestream:WriteRecords"],
            f"arn:aws:timestream:{REGION}:{ACCOUNT}:database/test/table/readings",
        ),
        "FindTimeseriesEndpoint": (["timestream:DescribeEndpoints"], "*"),
    }


def test_event_source_mapping_settings(cli, aws) -> None:
    up_ok(cli)
    (mapping,) = aws("lambda").list_event_source_mappings(FunctionName=FUNCTION)[
        "EventSourceMappings"
    ]
    assert mapping["EventSourceArn"] == STREAM_ARN
    assert mapping["BatchSize"] == 500
    assert mapping["MaximumBatchingWindowInSeconds"] == 5
    assert mapping["StartingPosition"] == "TRIM_HORIZON"
    assert mapping["BisectBatchOnFunctionError"] is True
    assert mapping["MaximumRetryAttempts"] == 5
    assert mapping["MaximumRecordAgeInSeconds"] == 21_600
    assert mapping["ParallelizationFactor"] == 1
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["DestinationConfig"] == {"OnFailure": {"Destination": DLQ_ARN}}
    tags = aws("lambda").list_tags(Resource=mapping["EventSourceMappingArn"])["Tags"]
    assert tags["iotpipe:stack"] == "test"


def test_dead_letter_queue_is_encrypted(cli, aws) -> None:
    up_ok(cli)
    sqs = aws("sqs")
    url = sqs.get_queue_url(QueueName="test-processor-dlq")["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["SqsManagedSseEnabled"] == "true"
    assert attributes["MessageRetentionPeriod"] == str(14 * 86_400)
    assert sqs.list_queue_tags(QueueUrl=url)["Tags"] == {"iotpipe:stack": "test"}


# --- Idempotence and change ---


def test_second_up_changes_nothing_and_uploads_no_code(cli, aws, faults) -> None:
    up_ok(cli)
    sha = aws("lambda").get_function_configuration(FunctionName=FUNCTION)["CodeSha256"]
    plan = cli("plan", "--output", "json")
    assert plan.exit_code == 0, plan
    assert all(s["action"] == "no-change" for s in plan.json["steps"]), plan.json
    faults.calls.clear()
    up_ok(cli)
    assert faults.mutating_calls == []
    assert ("lambda", "UpdateFunctionCode") not in faults.calls
    assert aws("lambda").get_function_configuration(FunctionName=FUNCTION)["CodeSha256"] == sha


def test_config_change_updates_exactly_those_fields(cli, aws, faults, tmp_path) -> None:
    up_ok(cli)
    config = write_full_config(
        tmp_path / "changed.toml",
        processor={"memory_mb": 512, "batch_size": 1000},
        iot={"basic_ingest": False},
    )
    plan = cli("plan", "--output", "json", config=config)
    assert plan.exit_code == 0, plan
    changed = {
        (s["kind"], c["field"]): (s["action"], c["new"])
        for s in plan.json["steps"]
        for c in s["changes"]
    }
    assert set(changed) == {
        ("lambda.function", "memory_mb"),
        ("lambda.event-source-mapping", "batch_size"),
        ("iot.policy", "document"),
    }
    assert changed[("lambda.function", "memory_mb")] == ("update", 512)
    assert changed[("lambda.event-source-mapping", "batch_size")] == ("update", 1000)

    faults.calls.clear()
    up_ok(cli, config)
    assert sorted(set(our_mutating_calls(faults))) == [
        ("iot", "CreatePolicyVersion"),
        ("lambda", "UpdateEventSourceMapping"),
        ("lambda", "UpdateFunctionConfiguration"),
    ]
    assert aws("lambda").get_function_configuration(FunctionName=FUNCTION)["MemorySize"] == 512
    (mapping,) = aws("lambda").list_event_source_mappings(FunctionName=FUNCTION)[
        "EventSourceMappings"
    ]
    assert mapping["BatchSize"] == 1000
    publish = statement(device_policy(aws), "PublishOwnTelemetry")
    assert publish["Resource"].endswith(":topic/dt/sensors/" + THING + "/telemetry")
    assert cli("plan", "--output", "json", config=config).json["summary"] == {
        "no-change": len(plan.json["steps"])
    }


def test_policy_updates_keep_within_five_versions(cli, aws, tmp_path) -> None:
    up_ok(cli)
    for i in range(6):
        # The default is Basic Ingest on: every one of these six runs changes the policy.
        config = write_full_config(tmp_path / f"c{i}.toml", iot={"basic_ingest": i % 2 == 1})
        up_ok(cli, config)
    iot = aws("iot")
    versions = iot.list_policy_versions(policyName="test-device")["policyVersions"]
    assert len(versions) == 5
    (default,) = [v for v in versions if v["isDefaultVersion"]]
    assert default["versionId"] == "7"
    publish = statement(device_policy(aws), "PublishOwnTelemetry")
    assert "$aws/rules/" in publish["Resource"]  # the last run (i=5) turned it back on


def test_starting_position_change_replaces_the_mapping(cli, aws, tmp_path) -> None:
    up_ok(cli)
    (before,) = aws("lambda").list_event_source_mappings(FunctionName=FUNCTION)[
        "EventSourceMappings"
    ]
    config = write_full_config(tmp_path / "latest.toml", processor={"starting_position": "LATEST"})
    plan = cli("plan", "--output", "json", config=config).json
    (step,) = steps_of(plan, "lambda.event-source-mapping")
    assert step["action"] == "replace"
    up_ok(cli, config)
    (after,) = aws("lambda").list_event_source_mappings(FunctionName=FUNCTION)[
        "EventSourceMappings"
    ]
    assert after["StartingPosition"] == "LATEST"
    assert after["UUID"] != before["UUID"]


def test_changed_source_is_uploaded_once(cli, aws, faults, processor_source) -> None:
    up_ok(cli)
    (processor_source / "handler.py").write_text("def lambda_handler(event, context):\n    pass\n")
    faults.calls.clear()
    up_ok(cli)
    assert our_mutating_calls(faults) == [("lambda", "UpdateFunctionCode")]
    sha = aws("lambda").get_function_configuration(FunctionName=FUNCTION)["CodeSha256"]
    assert sha == packaging.build_zip(processor_source).sha256
    faults.calls.clear()
    up_ok(cli)
    assert faults.mutating_calls == []


# --- Retries ---


def test_iam_propagation_errors_on_create_are_retried(cli, aws, faults) -> None:
    create_function = faults.fail(
        "lambda",
        "CreateFunction",
        "InvalidParameterValueException",
        "The role defined for the function cannot be assumed by Lambda.",
        times=2,
    )
    create_mapping = faults.fail(
        "lambda",
        "CreateEventSourceMapping",
        "InvalidParameterValueException",
        f"Cannot access stream {STREAM_ARN}. Please ensure the role can perform the GetRecords, "
        "GetShardIterator, DescribeStream, and ListStreams Actions on your stream in IAM.",
        times=2,
    )
    create_rule = faults.fail(
        "iot",
        "CreateTopicRule",
        "InvalidRequestException",
        f"iot.amazonaws.com is unable to assume role (sts:AssumeRole) on resource: "
        f"arn:aws:iam::{ACCOUNT}:role/test-iot-rule",
        times=2,
    )
    up_ok(cli)
    assert (create_function.hits, create_mapping.hits, create_rule.hits) == (2, 2, 2)
    assert aws("lambda").get_function(FunctionName=FUNCTION)
    assert aws("iot").get_topic_rule(ruleName=RULE)["rule"]["ruleName"] == RULE
    assert aws("lambda").list_event_source_mappings(FunctionName=FUNCTION)["EventSourceMappings"]


def test_iam_propagation_error_on_replace_rule_is_retried(cli, aws, faults, tmp_path) -> None:
    up_ok(cli)
    replace = faults.fail(
        "iot",
        "ReplaceTopicRule",
        "InvalidRequestException",
        f"iot.amazonaws.com is unable to assume role (sts:AssumeRole) on resource: "
        f"arn:aws:iam::{ACCOUNT}:role/test-iot-rule",
        times=2,
    )
    config = tmp_path / "app.toml"
    config.write_text('[stack]\nname = "test"\napp = "meters"\n')
    up_ok(cli, config)
    assert replace.hits == 2
    rule = aws("iot").get_topic_rule(ruleName=RULE)["rule"]
    assert rule["sql"].endswith("FROM 'dt/meters/+/telemetry'")


def test_update_conflict_is_waited_out(cli, aws, faults, tmp_path) -> None:
    up_ok(cli)
    conflict = faults.fail(
        "lambda",
        "UpdateFunctionConfiguration",
        "ResourceConflictException",
        "The operation cannot be performed at this time. An update is in progress for resource: "
        f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{FUNCTION}",
        status=409,
        times=2,
    )
    config = write_full_config(tmp_path / "mem.toml", processor={"memory_mb": 1024})
    up_ok(cli, config)
    assert conflict.hits == 2
    assert aws("lambda").get_function_configuration(FunctionName=FUNCTION)["MemorySize"] == 1024


def test_a_missing_layer_version_is_explained(cli, faults) -> None:
    faults.fail(
        "lambda",
        "CreateFunction",
        "ResourceNotFoundException",
        "One or more LayerVersion does not exist",
        status=404,
        times=None,
    )
    result = cli("up", "--yes")
    assert result.exit_code == 1
    assert "AWSLambdaPowertoolsPythonV3-python311-arm64:27" in result.stderr
    assert "powertools_layer_version" in result.stderr
    assert "Traceback" not in result.stderr


# --- down ---


def test_down_removes_ingest_and_compute(cli, aws) -> None:
    up_ok(cli)
    result = cli("down", "--yes")
    assert result.exit_code == 0, result
    lam, iot = aws("lambda"), aws("iot")
    assert lam.list_functions()["Functions"] == []
    assert lam.list_event_source_mappings()["EventSourceMappings"] == []
    assert aws("sqs").list_queues().get("QueueUrls", []) == []
    assert iot.list_policies()["policies"] == []
    assert iot.list_topic_rules()["rules"] == []
    # AWS deletes a thing type five minutes after its deprecation: down leaves it deprecated
    # and says so; the next down removes it.
    [thing_type] = iot.list_thing_types()["thingTypes"]
    assert thing_type["thingTypeMetadata"]["deprecated"]
    assert "run `iotpipe down` again" in result.stderr
    roles = [r["RoleName"] for r in aws("iam").list_roles()["Roles"]]
    assert "test-processor" not in roles
    assert "test-iot-rule" not in roles
    groups = aws("logs").describe_log_groups(logGroupNamePrefix="/aws/lambda/")["logGroups"]
    assert groups == []


# --- Packaging ---


def test_packaging_is_byte_for_byte_reproducible(processor_source) -> None:
    first = packaging.build_zip(processor_source)
    # New timestamps, other permissions, compiled files: none of it reaches the zip.
    for path in processor_source.iterdir():
        os.utime(path, (1_000_000_000, 1_000_000_000))
        path.chmod(0o755)
    cache = processor_source / "__pycache__"
    cache.mkdir()
    (cache / "handler.cpython-311.pyc").write_bytes(b"\x00compiled")
    (processor_source / "stale.pyc").write_bytes(b"\x00compiled")
    second = packaging.build_zip(processor_source)
    assert second.zip_bytes == first.zip_bytes
    assert second.sha256 == first.sha256
    with zipfile.ZipFile(io.BytesIO(first.zip_bytes)) as archive:
        infos = archive.infolist()
    assert [i.filename for i in infos] == ["processor/__init__.py", "processor/handler.py"]
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {i.external_attr >> 16 for i in infos} == {0o100644}


def test_packaging_changes_with_the_source(processor_source) -> None:
    first = packaging.build_zip(processor_source)
    (processor_source / "handler.py").write_text("# changed\n")
    assert packaging.build_zip(processor_source).sha256 != first.sha256


def test_missing_source_is_a_clear_error(tmp_path) -> None:
    from iotpipe.errors import IotpipeError

    with pytest.raises(IotpipeError, match="no Python source"):
        packaging.build_zip(tmp_path / "processor")


def test_the_real_processor_is_packaged_reproducibly() -> None:
    first = packaging.build_zip(REAL_PROCESSOR_SOURCE)
    assert packaging.build_zip(REAL_PROCESSOR_SOURCE).zip_bytes == first.zip_bytes
    with zipfile.ZipFile(io.BytesIO(first.zip_bytes)) as archive:
        names = archive.namelist()
    assert "processor/handler.py" in names
    assert names == sorted(names)
    assert all(name.startswith("processor/") and name.endswith(".py") for name in names)
