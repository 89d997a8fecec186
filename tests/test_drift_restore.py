"""`up` restores what was changed behind its back, each field with its resource's update call.

Every resource is changed with boto3 as a person in the console would change it; one `up` then
puts each field back (UpdateWorkGroup, UpdateTable, PutKeyPolicy, ...) and `plan` has nothing left
to do. Also: a stream mode switched by the config and back, a role with a managed policy attached
outside iotpipe torn down, and a stack with Timestream reported in sync.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from iotpipe.config import CatalogSection
from iotpipe.resources.glue import COLUMNS
from tests.support import client, write_config, write_full_config

# moto implements neither UpdateWorkGroup nor UpdateCrawler: the storage tests' stand-in does.
from tests.test_pipeline_storage import updatable_crawlers_and_workgroups  # noqa: F401

ACCOUNT = "123456789012"
BUCKET = f"test-archive-{ACCOUNT}-us-east-1"
STREAM = "test-readings"
TABLE = "test-device-state"
DELIVERY_STREAM = "test-archive"
QUEUE = "test-processor-dlq"
KEY_ALIAS = "alias/test-alerts"
GLUE_DATABASE = "test"
GLUE_TABLE = "readings"
WORKGROUP = "test"
WORKGROUP_ARN = f"arn:aws:athena:us-east-1:{ACCOUNT}:workgroup/{WORKGROUP}"
ROOT = f"arn:aws:iam::{ACCOUNT}:root"
MIB = 1024 * 1024

pytestmark = pytest.mark.usefixtures("processor_source")


def up_ok(cli, config: Path | None = None) -> dict[str, Any]:
    result = cli("up", "--yes", "--output", "json", config=config)
    assert result.exit_code == 0, result
    return result.json


def updated_fields(result: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    """The fields each updated resource of an `up` or `plan` changes."""
    return {
        (s["kind"], s["name"]): {c["field"] for c in s["changes"]}
        for s in result["steps"]
        if s["action"] == "update"
    }


def assert_plan_is_empty(cli, config: Path | None = None) -> None:
    plan = cli("plan", "-o", "json", config=config)
    assert plan.exit_code == 0, plan
    pending = [(s["kind"], s["name"], s["action"]) for s in plan.json["steps"]]
    assert set(plan.json["summary"]) == {"no-change"}, pending


# --- What a person changes in the console ---


def loosen_workgroup(endpoint: str) -> None:
    """Lift the enforcement and the cost cap. moto cannot update a workgroup, so the same name is
    made again with the looser configuration and the same tags."""
    athena = client(endpoint, "athena")
    group = athena.get_work_group(WorkGroup=WORKGROUP)["WorkGroup"]
    tags = athena.list_tags_for_resource(ResourceARN=WORKGROUP_ARN)["Tags"]
    athena.delete_work_group(WorkGroup=WORKGROUP, RecursiveDeleteOption=True)
    loose = {
        **group["Configuration"],
        "EnforceWorkGroupConfiguration": False,
        "BytesScannedCutoffPerQuery": 10 * 1024 * MIB,
    }
    athena.create_work_group(Name=WORKGROUP, Configuration=loose, Tags=tags)


def table_to_on_demand(endpoint: str) -> None:
    client(endpoint, "dynamodb").update_table(TableName=TABLE, BillingMode="PAY_PER_REQUEST")


def edit_catalog(endpoint: str) -> None:
    glue = client(endpoint, "glue")
    glue.update_database(
        Name=GLUE_DATABASE, DatabaseInput={"Name": GLUE_DATABASE, "Description": "edited"}
    )
    table = glue.get_table(DatabaseName=GLUE_DATABASE, Name=GLUE_TABLE)["Table"]
    storage = table["StorageDescriptor"]
    glue.update_table(
        DatabaseName=GLUE_DATABASE,
        TableInput={
            "Name": GLUE_TABLE,
            "TableType": table["TableType"],
            "Parameters": table["Parameters"],
            "PartitionKeys": table["PartitionKeys"],
            "StorageDescriptor": {
                **storage,
                "Columns": [c for c in storage["Columns"] if c["Name"] != "metrics"],
            },
        },
    )


def edit_roles(endpoint: str) -> None:
    iam = client(endpoint, "iam")
    anyone_in_the_account = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": ROOT}, "Action": "sts:AssumeRole"}],
    }
    iam.update_assume_role_policy(
        RoleName="test-crawler", PolicyDocument=json.dumps(anyone_in_the_account)
    )
    iam.update_role(RoleName="test-iot-rule", Description="edited")


def keep_readings_longer(endpoint: str) -> None:
    client(endpoint, "kinesis").increase_stream_retention_period(
        StreamName=STREAM, RetentionPeriodHours=72
    )


def stop_archive_encryption(endpoint: str) -> None:
    client(endpoint, "firehose").stop_delivery_stream_encryption(DeliveryStreamName=DELIVERY_STREAM)


def replace_key_policy(endpoint: str) -> str:
    """Only the account's own statement left: CloudWatch and SNS lose the key. The key's id."""
    kms = client(endpoint, "kms")
    key_id = kms.describe_key(KeyId=KEY_ALIAS)["KeyMetadata"]["KeyId"]
    root_only = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": ROOT}, "Action": "kms:*", "Resource": "*"}
        ],
    }
    kms.put_key_policy(KeyId=key_id, PolicyName="default", Policy=json.dumps(root_only))
    return key_id


def drop_ownership_controls(endpoint: str) -> None:
    client(endpoint, "s3").delete_bucket_ownership_controls(Bucket=BUCKET)


def edit_queue(endpoint: str) -> str:
    """Messages kept an hour, unencrypted. The queue's URL."""
    sqs = client(endpoint, "sqs")
    url = sqs.get_queue_url(QueueName=QUEUE)["QueueUrl"]
    sqs.set_queue_attributes(
        QueueUrl=url, Attributes={"MessageRetentionPeriod": "3600", "SqsManagedSseEnabled": "false"}
    )
    return url


# --- Tests ---


def test_up_restores_every_field_changed_outside_it(cli, endpoint, faults) -> None:
    up_ok(cli)
    loosen_workgroup(endpoint)
    table_to_on_demand(endpoint)
    edit_catalog(endpoint)
    edit_roles(endpoint)
    keep_readings_longer(endpoint)
    stop_archive_encryption(endpoint)
    key_id = replace_key_policy(endpoint)
    drop_ownership_controls(endpoint)
    queue_url = edit_queue(endpoint)
    faults.calls.clear()

    result = up_ok(cli)

    assert updated_fields(result) == {
        ("athena.workgroup", WORKGROUP): {"enforced", "bytes_scanned_cutoff"},
        ("dynamodb.table", TABLE): {"billing_mode", "provisioned_throughput"},
        ("glue.database", GLUE_DATABASE): {"description"},
        ("glue.table", GLUE_TABLE): {"columns"},
        ("iam.role", "test-crawler"): {"trust_policy"},
        ("iam.role", "test-iot-rule"): {"description"},
        ("kinesis.stream", STREAM): {"retention_hours"},
        ("firehose.delivery_stream", DELIVERY_STREAM): {"encryption"},
        ("kms.key", "test-alerts"): {"policy"},
        ("s3.bucket", BUCKET): {"ownership"},
        ("sqs.queue", QUEUE): {"attributes"},
    }
    # Each field is put back by its own update call, and by nothing broader.
    assert sorted(faults.mutating_calls) == [
        ("athena", "UpdateWorkGroup"),
        ("dynamodb", "UpdateTable"),
        ("firehose", "StartDeliveryStreamEncryption"),
        ("glue", "UpdateDatabase"),
        ("glue", "UpdateTable"),
        ("iam", "UpdateAssumeRolePolicy"),
        ("iam", "UpdateRole"),
        ("kinesis", "DecreaseStreamRetentionPeriod"),
        ("kms", "PutKeyPolicy"),
        ("s3", "PutBucketOwnershipControls"),
        ("sqs", "SetQueueAttributes"),
    ]
    assert_plan_is_empty(cli)

    config = client(endpoint, "athena").get_work_group(WorkGroup=WORKGROUP)["WorkGroup"][
        "Configuration"
    ]
    assert config["EnforceWorkGroupConfiguration"] is True
    assert config["BytesScannedCutoffPerQuery"] == CatalogSection().bytes_scanned_cutoff_mb * MIB
    table = client(endpoint, "dynamodb").describe_table(TableName=TABLE)["Table"]
    assert table["BillingModeSummary"]["BillingMode"] == "PROVISIONED"
    glue = client(endpoint, "glue")
    database = glue.get_database(Name=GLUE_DATABASE)["Database"]
    assert database["Description"] == "iotpipe test: archived sensor readings"
    columns = glue.get_table(DatabaseName=GLUE_DATABASE, Name=GLUE_TABLE)["Table"][
        "StorageDescriptor"
    ]["Columns"]
    assert [(c["Name"], c["Type"]) for c in columns] == COLUMNS
    iam = client(endpoint, "iam")
    trust = iam.get_role(RoleName="test-crawler")["Role"]["AssumeRolePolicyDocument"]
    assert trust["Statement"] == [
        {
            "Effect": "Allow",
            "Principal": {"Service": "glue.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ]
    description = iam.get_role(RoleName="test-iot-rule")["Role"]["Description"]
    assert description == "Lets the IoT telemetry rule write readings to Kinesis and failures to S3"
    summary = client(endpoint, "kinesis").describe_stream_summary(StreamName=STREAM)
    assert summary["StreamDescriptionSummary"]["RetentionPeriodHours"] == 24
    delivery = client(endpoint, "firehose").describe_delivery_stream(
        DeliveryStreamName=DELIVERY_STREAM
    )["DeliveryStreamDescription"]
    encryption = delivery["DeliveryStreamEncryptionConfiguration"]
    assert (encryption["Status"], encryption["KeyType"]) == ("ENABLED", "AWS_OWNED_CMK")
    policy = json.loads(
        client(endpoint, "kms").get_key_policy(KeyId=key_id, PolicyName="default")["Policy"]
    )
    assert [s["Sid"] for s in policy["Statement"]] == [
        "AccountAdministersTheKeyThroughIam",
        "CloudWatchAlarmsOfThisStackPublish",
        "SnsEncryptsTheAlertsTopic",
    ]
    ownership = client(endpoint, "s3").get_bucket_ownership_controls(Bucket=BUCKET)
    assert ownership["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    attributes = client(endpoint, "sqs").get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["MessageRetentionPeriod", "SqsManagedSseEnabled"]
    )["Attributes"]
    assert attributes == {
        "MessageRetentionPeriod": str(14 * 86_400),
        "SqsManagedSseEnabled": "true",
    }


def test_stream_mode_follows_the_config_to_on_demand_and_back(
    cli, endpoint, faults, config_file
) -> None:
    write_config(config_file, stream={"shards": 2})
    up_ok(cli)
    kinesis = client(endpoint, "kinesis")

    def stream() -> dict[str, Any]:
        return kinesis.describe_stream_summary(StreamName=STREAM)["StreamDescriptionSummary"]

    write_config(config_file, stream={"mode": "on_demand"})
    faults.calls.clear()
    on_demand = up_ok(cli)

    assert updated_fields(on_demand) == {("kinesis.stream", STREAM): {"mode"}}
    assert faults.mutating_calls == [("kinesis", "UpdateStreamMode")]
    assert stream()["StreamModeDetails"]["StreamMode"] == "ON_DEMAND"
    assert_plan_is_empty(cli)

    # Provisioned again, at the shard count the volume needs (1) rather than the 2 it left with.
    write_config(config_file)
    faults.calls.clear()
    provisioned = up_ok(cli)

    assert updated_fields(provisioned) == {("kinesis.stream", STREAM): {"mode", "shard_count"}}
    kinesis_calls = [op for service, op in faults.mutating_calls if service == "kinesis"]
    assert kinesis_calls == ["UpdateStreamMode", "UpdateShardCount"], faults.mutating_calls
    summary = stream()
    assert summary["StreamModeDetails"]["StreamMode"] == "PROVISIONED"
    assert summary["OpenShardCount"] == 1
    assert_plan_is_empty(cli)


def test_down_detaches_a_managed_policy_attached_outside_iotpipe(cli, endpoint, faults) -> None:
    up_ok(cli)
    iam = client(endpoint, "iam")
    extra = iam.create_policy(
        PolicyName="someone-elses-read-only",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Action": "s3:ListAllMyBuckets", "Resource": "*"}
                ],
            }
        ),
    )["Policy"]["Arn"]
    iam.attach_role_policy(RoleName="test-firehose", PolicyArn=extra)
    faults.calls.clear()

    down = cli("down", "--yes")

    assert down.exit_code == 0, down
    assert ("iam", "DetachRolePolicy") in faults.mutating_calls
    roles = {r["RoleName"] for r in iam.list_roles()["Roles"]}
    assert not roles & {"test-firehose", "test-processor", "test-crawler", "test-iot-rule"}
    # The policy is not the stack's: only its attachment goes.
    assert iam.get_policy(PolicyArn=extra)["Policy"]["AttachmentCount"] == 0


def test_up_takes_off_a_policy_attached_or_put_on_a_role_outside_iotpipe(
    cli, endpoint, faults
) -> None:
    up_ok(cli)
    iam = client(endpoint, "iam")
    wide = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
    }
    admin = iam.create_policy(PolicyName="admin", PolicyDocument=json.dumps(wide))["Policy"]["Arn"]
    iam.attach_role_policy(RoleName="test-processor", PolicyArn=admin)
    iam.put_role_policy(
        RoleName="test-crawler", PolicyName="debugging", PolicyDocument=json.dumps(wide)
    )
    plan = cli("plan", "-o", "json")
    changed = {
        (step["name"], change["field"])
        for step in plan.json["steps"]
        for change in step["changes"]
        if step["action"] == "update"
    }
    assert {("test-processor", "managed_policies"), ("test-crawler", "inline_policies")} <= changed
    faults.calls.clear()

    assert cli("up", "--yes").exit_code == 0
    assert ("iam", "DetachRolePolicy") in faults.mutating_calls
    assert ("iam", "DeleteRolePolicy") in faults.mutating_calls
    assert iam.list_attached_role_policies(RoleName="test-processor")["AttachedPolicies"] == []
    assert iam.list_role_policies(RoleName="test-crawler")["PolicyNames"] == ["test-crawler-policy"]
    assert_plan_is_empty(cli)


def test_status_and_plan_report_a_stack_with_timestream_in_sync(cli, endpoint, tmp_path) -> None:
    config = write_full_config(tmp_path / "timeseries.toml")
    up_ok(cli, config)

    status = cli("status", "-o", "json", config=config)

    assert status.exit_code == 0, status
    assert status.json["healthy"] is True
    states = {(r["kind"], r["name"]): r["state"] for r in status.json["resources"]}
    assert states[("timestream.database", "test")] == "in sync"
    assert states[("timestream.table", "readings")] == "in sync"
    assert set(states.values()) == {"in sync"}, states
    assert_plan_is_empty(cli, config)
