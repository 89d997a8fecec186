"""Alerting that can fire: the alerts topic's key lets CloudWatch publish, and every alarm and
dashboard metric is a (namespace, metric, dimensions) combination AWS documents publishing."""

from __future__ import annotations

import fnmatch
import json
from datetime import date

import pytest

from iotpipe.config import Config
from iotpipe.cost import cost_report, load_prices
from iotpipe.resources.cloudwatch import DOCUMENTED_METRICS, undocumented
from iotpipe.resources.kms import DELETION_WINDOW_DAYS
from tests.support import client

ACCOUNT = "123456789012"
TOPIC_ARN = f"arn:aws:sns:us-east-1:{ACCOUNT}:test-alerts"
ALIAS = "alias/test-alerts"


def topic_key(endpoint: str) -> str:
    attributes = client(endpoint, "sns").get_topic_attributes(TopicArn=TOPIC_ARN)["Attributes"]
    return attributes["KmsMasterKeyId"]


def stack_alarms(endpoint: str) -> list[dict]:
    found = client(endpoint, "cloudwatch").describe_alarms(AlarmNamePrefix="test-")
    return found["MetricAlarms"]


def statement_for(policy: dict, service: str) -> dict:
    return next(s for s in policy["Statement"] if s.get("Principal") == {"Service": service})


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def assert_cloudwatch_may_use_the_topic_key(endpoint: str) -> str:
    """The topic's key is a customer managed, enabled, rotating key whose policy lets CloudWatch
    use it for this stack's alarms only. Returns its key id."""
    kms = client(endpoint, "kms")
    key_ref = topic_key(endpoint)
    assert key_ref != "alias/aws/sns"
    meta = kms.describe_key(KeyId=key_ref)["KeyMetadata"]
    assert meta["KeyManager"] == "CUSTOMER"
    assert meta["KeyState"] == "Enabled"
    assert kms.get_key_rotation_status(KeyId=meta["KeyId"])["KeyRotationEnabled"] is True
    tags = {t["TagKey"]: t["TagValue"] for t in kms.list_resource_tags(KeyId=meta["KeyId"])["Tags"]}
    assert tags["iotpipe:stack"] == "test"

    policy = json.loads(kms.get_key_policy(KeyId=meta["KeyId"], PolicyName="default")["Policy"])
    cloudwatch = statement_for(policy, "cloudwatch.amazonaws.com")
    assert cloudwatch["Effect"] == "Allow"
    assert set(as_list(cloudwatch["Action"])) == {"kms:Decrypt", "kms:GenerateDataKey*"}
    condition = cloudwatch["Condition"]
    assert condition["StringEquals"] == {"aws:SourceAccount": ACCOUNT}
    patterns = as_list(condition["ArnLike"]["aws:SourceArn"])
    alarms = stack_alarms(endpoint)
    assert alarms
    for alarm in alarms:
        assert any(fnmatch.fnmatchcase(alarm["AlarmArn"], p) for p in patterns), alarm["AlarmArn"]
    # Another stack's alarm in the same account is not let in.
    other = f"arn:aws:cloudwatch:us-east-1:{ACCOUNT}:alarm:other-processor-errors"
    assert not any(fnmatch.fnmatchcase(other, p) for p in patterns)
    sns = statement_for(policy, "sns.amazonaws.com")
    assert sns["Condition"]["StringEquals"] == {"kms:EncryptionContext:aws:sns:topicArn": TOPIC_ARN}
    root = next(
        s
        for s in policy["Statement"]
        if s.get("Principal") == {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}
    )
    assert root["Action"] == "kms:*"
    return meta["KeyId"]


def test_the_alerts_topic_key_lets_cloudwatch_publish(cli, endpoint):
    assert cli("up", "--yes").exit_code == 0
    assert_cloudwatch_may_use_the_topic_key(endpoint)
    # The alarms notify that topic.
    for alarm in stack_alarms(endpoint):
        assert alarm["AlarmActions"] == [TOPIC_ARN]


def test_up_moves_a_stack_deployed_on_the_aws_managed_key(cli, endpoint, faults):
    assert cli("up", "--yes").exit_code == 0
    # A stack as deployed before: its topic on alias/aws/sns, and no key of its own.
    sns, kms = client(endpoint, "sns"), client(endpoint, "kms")
    sns.set_topic_attributes(
        TopicArn=TOPIC_ARN, AttributeName="KmsMasterKeyId", AttributeValue="alias/aws/sns"
    )
    key_id = kms.describe_key(KeyId=ALIAS)["KeyMetadata"]["KeyId"]
    kms.delete_alias(AliasName=ALIAS)
    kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)

    plan = cli("plan", "--output", "json")
    assert plan.exit_code == 0, plan
    steps = {(s["kind"], s["action"]): s for s in plan.json["steps"]}
    assert ("kms.key", "create") in steps
    change = steps["sns.topic", "update"]["changes"]
    assert [(c["field"], c["old"], c["new"]) for c in change] == [
        ("kms_key", "alias/aws/sns", ALIAS)
    ]

    result = cli("up", "--yes")
    assert result.exit_code == 0, result
    assert topic_key(endpoint) == ALIAS
    assert assert_cloudwatch_may_use_the_topic_key(endpoint) != key_id
    faults.calls.clear()
    assert cli("up", "--yes").exit_code == 0
    assert faults.mutating_calls == []


def test_down_schedules_the_key_deletion_and_up_brings_a_key_back(cli, endpoint, faults):
    assert cli("up", "--yes").exit_code == 0
    kms = client(endpoint, "kms")
    first = kms.describe_key(KeyId=ALIAS)["KeyMetadata"]["KeyId"]

    # A key cannot be deleted at once: down schedules it (the shortest window) and drops the alias.
    faults.calls.clear()
    assert cli("down", "--yes").exit_code == 0
    assert ("kms", "ScheduleKeyDeletion") in faults.calls
    meta = kms.describe_key(KeyId=first)["KeyMetadata"]
    assert meta["KeyState"] == "PendingDeletion"
    assert ALIAS not in {a["AliasName"] for a in kms.list_aliases()["Aliases"]}
    days = (meta["DeletionDate"].date() - date.today()).days
    assert DELETION_WINDOW_DAYS - 1 <= days <= DELETION_WINDOW_DAYS + 1

    # With the alias gone, the next up makes a new key, and the topic is on it.
    assert cli("up", "--yes").exit_code == 0
    second = assert_cloudwatch_may_use_the_topic_key(endpoint)
    assert second != first

    # A down interrupted after scheduling the deletion leaves the alias on a pending key:
    # up cancels the deletion and enables that same key again.
    faults.fail("kms", "DeleteAlias", "KMSInternalException", status=500, times=None)
    interrupted = cli("down", "--yes")
    assert interrupted.exit_code == 1
    faults.rules.clear()
    assert kms.describe_key(KeyId=ALIAS)["KeyMetadata"]["KeyState"] == "PendingDeletion"
    plan = cli("plan", "--output", "json")
    key_step = next(s for s in plan.json["steps"] if s["kind"] == "kms.key")
    assert key_step["action"] == "update"
    assert "cancels the deletion" in key_step["note"]
    faults.calls.clear()
    assert cli("up", "--yes").exit_code == 0, "up after an interrupted down"
    assert ("kms", "CancelKeyDeletion") in faults.calls
    assert assert_cloudwatch_may_use_the_topic_key(endpoint) == second
    # And a plain down afterwards removes everything it owns again.
    assert cli("down", "--yes").exit_code == 0
    assert kms.describe_key(KeyId=second)["KeyMetadata"]["KeyState"] == "PendingDeletion"


def dashboard_metrics(endpoint: str) -> list[tuple[str, str, list[str]]]:
    body = json.loads(
        client(endpoint, "cloudwatch").get_dashboard(DashboardName="test")["DashboardBody"]
    )
    found = []
    for widget in body["widgets"]:
        for metric in widget.get("properties", {}).get("metrics", []):
            namespace, name, *pairs = metric
            found.append((namespace, name, pairs[0::2]))
    return found


def test_every_alarm_and_dashboard_metric_is_one_aws_documents(cli, endpoint):
    assert cli("up", "--yes").exit_code == 0
    alarms = stack_alarms(endpoint)
    for alarm in alarms:
        dims = [d["Name"] for d in alarm["Dimensions"]]
        assert not undocumented(alarm["Namespace"], alarm["MetricName"], dims), alarm["AlarmName"]
    metrics = dashboard_metrics(endpoint)
    assert len(metrics) >= 10
    for namespace, name, dims in metrics:
        assert not undocumented(namespace, name, dims), (namespace, name, dims)

    # The rule's delivery failures and its error action's failures, each by its action type.
    by_name = {a["AlarmName"]: a for a in alarms}
    failures = by_name["test-iot-rule-failures"]
    assert {d["Name"]: d["Value"] for d in failures["Dimensions"]} == {
        "RuleName": "test_telemetry",
        "ActionType": "Kinesis",
    }
    lost = by_name["test-iot-rule-error-action-failures"]
    assert lost["MetricName"] == "ErrorActionFailure"
    assert {d["Name"]: d["Value"] for d in lost["Dimensions"]} == {
        "RuleName": "test_telemetry",
        "ActionType": "S3",
    }


def test_the_documented_table_refuses_what_aws_does_not_publish():
    # The alarm that could never fire: rule action metrics always carry ActionType.
    assert undocumented("AWS/IoT", "Failure", ["RuleName"])
    assert not undocumented("AWS/IoT", "Failure", ["RuleName", "ActionType"])
    assert undocumented("AWS/DynamoDB", "ThrottledRequests", ["TableName"])
    for (namespace, _, _), source in DOCUMENTED_METRICS.items():
        assert namespace.startswith("AWS/")
        assert source.startswith("https://docs.aws.amazon.com/"), source


def test_cost_prices_the_alarms_up_deploys_and_the_key(cli, endpoint):
    assert cli("up", "--yes").exit_code == 0
    deployed = len(stack_alarms(endpoint))
    config = Config.model_validate({"stack": {"name": "test"}})
    items = cost_report(config, load_prices(), date(2025, 7, 1)).configured.items
    alarms = next(i for i in items if i.service == "CloudWatch" and i.item == "alarms")
    assert alarms.quantity == deployed
    key = next(i for i in items if i.service == "KMS" and i.item.startswith("customer managed key"))
    assert key.quantity == 1
    assert key.monthly_cost == pytest.approx(1.0)


def test_a_key_whose_alias_cannot_be_made_is_not_left_behind(cli, endpoint, faults):
    faults.fail("kms", "CreateAlias", "LimitExceededException", "too many aliases", times=None)
    failed = cli("up", "--yes")
    assert failed.exit_code == 1
    assert "LimitExceededException" in failed.stderr
    kms = client(endpoint, "kms")
    keys = [kms.describe_key(KeyId=k["KeyId"])["KeyMetadata"] for k in kms.list_keys()["Keys"]]
    made = [k for k in keys if k["KeyManager"] == "CUSTOMER"]
    # The key that no alias would ever find again waits for its deletion instead of costing $1
    # a month.
    assert made and all(k["KeyState"] == "PendingDeletion" for k in made)
    faults.rules.clear()
    assert cli("up", "--yes").exit_code == 0
    assert_cloudwatch_may_use_the_topic_key(endpoint)


def test_the_emulator_refuses_a_key_pending_deletion_what_aws_refuses(endpoint):
    kms = client(endpoint, "kms")
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.disable_key(KeyId=key)
    with pytest.raises(kms.exceptions.DisabledException):
        kms.enable_key_rotation(KeyId=key)
    kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    for refused in (
        lambda: kms.enable_key(KeyId=key),
        lambda: kms.enable_key_rotation(KeyId=key),
        lambda: kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7),
    ):
        with pytest.raises(kms.exceptions.KMSInvalidStateException, match="pending deletion"):
            refused()
    # Cancelling is the way back: the key is then disabled, and can be enabled.
    kms.cancel_key_deletion(KeyId=key)
    kms.enable_key(KeyId=key)
    kms.enable_key_rotation(KeyId=key)
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled"
