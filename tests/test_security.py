"""Security properties of everything `up` generates, checked as tests."""

from __future__ import annotations

import json

import pytest

from iotpipe.aws import Aws
from iotpipe.config import parse_config
from iotpipe.context import StackContext
from iotpipe.resources.iam import ServiceRole
from iotpipe.resources.iot import DevicePolicy
from iotpipe.stack import build_resources
from tests.policy_lint import parliament_findings, required_resource_types

CONFIGS = {
    "defaults": {},
    "mqtt-topics": {"iot": {"basic_ingest": False}},
    "parquet": {"archive": {"format": "parquet"}},
    "no-timeseries": {"timeseries": {"enabled": False}},
}
THING = "${iot:Connection.Thing.ThingName}"


@pytest.fixture(params=sorted(CONFIGS))
def resources(request, endpoint: str):
    config = parse_config({"stack": {"name": "sec"}, **CONFIGS[request.param]})
    return build_resources(StackContext(config, Aws(region="us-east-1", endpoint_url=endpoint)))


def _allows(policy: dict) -> list[dict]:
    return [s for s in policy["Statement"] if s["Effect"] == "Allow"]


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def test_one_role_per_service(resources) -> None:
    roles = {r.name for r in resources if isinstance(r, ServiceRole)}
    assert roles == {"sec-iot-rule", "sec-processor", "sec-firehose", "sec-crawler"}


def test_every_role_policy_passes_parliament(resources) -> None:
    for role in (r for r in resources if isinstance(r, ServiceRole)):
        assert parliament_findings(role.policy) == [], role.name


def test_no_wildcard_actions_and_star_resources_only_where_iam_has_no_resource(resources):
    for role in (r for r in resources if isinstance(r, ServiceRole)):
        for statement in _allows(role.policy):
            actions = _as_list(statement["Action"])
            assert "*" not in actions, role.name
            assert not any(a.endswith(":*") for a in actions), (role.name, actions)
            if "*" in _as_list(statement["Resource"]):
                for action in actions:
                    assert required_resource_types(action) == [], (role.name, action)


def test_trust_policies_guard_against_the_confused_deputy(resources) -> None:
    for role in (r for r in resources if isinstance(r, ServiceRole)):
        for statement in role.trust["Statement"]:
            if statement["Principal"] == {"Service": "glue.amazonaws.com"}:
                # Glue documents no source keys on AssumeRole: a condition would lock it out.
                assert "Condition" not in statement, role.name
                continue
            condition = json.dumps(statement.get("Condition", {}))
            assert "aws:SourceAccount" in condition or "sts:ExternalId" in condition, role.name
            assert "123456789012" in condition, role.name


def test_device_policy_lets_a_device_act_only_as_itself(resources) -> None:
    policy = next(r for r in resources if isinstance(r, DevicePolicy))
    document = policy.desired()["document"]
    allows = _allows(document)
    assert allows
    for statement in allows:
        resources_text = json.dumps(statement["Resource"]) + json.dumps(
            statement.get("Condition", {})
        )
        assert THING in resources_text, statement
        for resource in _as_list(statement["Resource"]):
            assert "+" not in resource and "#" not in resource, resource
    connect = next(s for s in allows if "iot:Connect" in _as_list(s["Action"]))
    assert _as_list(connect["Resource"]) == [f"arn:aws:iot:us-east-1:123456789012:client/{THING}"]
    publish = [
        r
        for s in allows
        if "iot:Publish" in _as_list(s["Action"])
        for r in _as_list(s["Resource"])
        if "telemetry" in r
    ]
    assert len(publish) == 1
    assert publish[0].endswith(f"dt/sensors/{THING}/telemetry")


def test_every_store_is_encrypted_at_rest(cli, endpoint) -> None:
    import boto3

    assert cli("up", "--yes").exit_code == 0

    def client(service: str):
        return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1")

    bucket = "test-archive-123456789012-us-east-1"
    rules = client("s3").get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
    assert rules["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    stream = client("kinesis").describe_stream_summary(StreamName="test-readings")
    assert stream["StreamDescriptionSummary"]["EncryptionType"] == "KMS"
    queue = client("sqs").get_queue_url(QueueName="test-processor-dlq")["QueueUrl"]
    attributes = client("sqs").get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])
    assert attributes["Attributes"]["SqsManagedSseEnabled"] == "true"
    topic = client("sns").get_topic_attributes(
        TopicArn="arn:aws:sns:us-east-1:123456789012:test-alerts"
    )
    # The stack's customer managed key, which CloudWatch may use (tests/test_alerting.py).
    key = client("kms").describe_key(KeyId=topic["Attributes"]["KmsMasterKeyId"])["KeyMetadata"]
    assert (key["KeyManager"], key["KeyState"]) == ("CUSTOMER", "Enabled")
    delivery = client("firehose").describe_delivery_stream(DeliveryStreamName="test-archive")
    encryption = delivery["DeliveryStreamDescription"]["DeliveryStreamEncryptionConfiguration"]
    # moto echoes the requested key type; AWS adds Status ENABLED once applied.
    assert encryption["KeyType"] == "AWS_OWNED_CMK"
    assert encryption.get("Status", "ENABLED") in ("ENABLED", "ENABLING")
    workgroup = client("athena").get_work_group(WorkGroup="test")["WorkGroup"]["Configuration"]
    assert workgroup["ResultConfiguration"]["EncryptionConfiguration"]["EncryptionOption"] == (
        "SSE_S3"
    )
    # DynamoDB and Timestream always encrypt at rest (AWS-owned / AWS-managed keys).
    table = client("dynamodb").describe_table(TableName="test-device-state")["Table"]
    assert table.get("SSEDescription", {}).get("Status", "ENABLED") in ("ENABLED", "ENABLING")
