"""`iotpipe iam-policy`: least privilege for up / down / plan / status, checked by parliament."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import botocore.exceptions
import botocore.session
import pytest

from iotpipe.iam_policy import (
    JOBS,
    MANAGED_POLICY_CHARACTERS,
    ROLE_SERVICES,
    UNSCOPED_ACTIONS,
    job_policies,
    operator_policy,
    policy_characters,
)
from iotpipe.naming import Names
from tests.policy_lint import parliament_findings, required_resource_types
from tests.support import client

ACCOUNT = "123456789012"
NAMES = Names(stack="plant-7", app="sensors", region="us-east-1", account=ACCOUNT)
ROOT = Path(__file__).resolve().parent.parent
# Modules whose AWS calls up / down / plan / status make.
CALLERS = sorted((ROOT / "iotpipe" / "resources").glob("*.py"))
SERVICES = {
    "s3",
    "kinesis",
    "dynamodb",
    "sns",
    "sqs",
    "lambda",
    "iam",
    "logs",
    "iot",
    "firehose",
    "glue",
    "athena",
    "cloudwatch",
    "timestream-write",
    "sts",
    "kms",
}
IAM_PREFIX = {"timestream-write": "timestream"}
# boto3 operations whose IAM action is not their own name.
ACTION_OF = {
    ("s3", "head_bucket"): ["s3:ListBucket"],
    ("s3", "list_objects_v2"): ["s3:ListBucket"],
    ("s3", "list_object_versions"): ["s3:ListBucketVersions"],
    ("s3", "delete_objects"): ["s3:DeleteObject", "s3:DeleteObjectVersion"],
    ("s3", "get_bucket_encryption"): ["s3:GetEncryptionConfiguration"],
    ("s3", "put_bucket_encryption"): ["s3:PutEncryptionConfiguration"],
    ("s3", "get_public_access_block"): ["s3:GetBucketPublicAccessBlock"],
    ("s3", "put_public_access_block"): ["s3:PutBucketPublicAccessBlock"],
    ("s3", "get_bucket_lifecycle_configuration"): ["s3:GetLifecycleConfiguration"],
    ("s3", "put_bucket_lifecycle_configuration"): ["s3:PutLifecycleConfiguration"],
    ("s3", "delete_bucket_lifecycle"): ["s3:PutLifecycleConfiguration"],
    # GetLayerVersionByArn is authorized as lambda:GetLayerVersion (Lambda developer guide,
    # "Lambda API permissions": layer actions).
    ("lambda", "get_layer_version_by_arn"): ["lambda:GetLayerVersion"],
}


def statements(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return policy["Statement"]


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def allowed_actions(policy: dict[str, Any]) -> set[str]:
    return {action for s in statements(policy) for action in as_list(s["Action"])}


@pytest.fixture(scope="module")
def policy() -> dict[str, Any]:
    return operator_policy(NAMES)


def test_parliament_finds_nothing(policy):
    assert parliament_findings(policy) == []


def test_the_lint_helper_reports_what_it_finds():
    loose = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}],
    }
    assert any(f.startswith("RESOURCE_STAR") for f in parliament_findings(loose))
    assert parliament_findings(loose, ignore=["RESOURCE_STAR"]) == []


def test_no_wildcard_actions(policy):
    for action in allowed_actions(policy):
        assert "*" not in action, action


def test_resource_star_only_for_actions_without_resource_level_permissions(policy):
    for statement in statements(policy):
        if "*" in as_list(statement["Resource"]):
            assert statement["Resource"] == "*", statement["Sid"]
            for action in as_list(statement["Action"]):
                assert action in UNSCOPED_ACTIONS, action
    for action in UNSCOPED_ACTIONS:
        # IAM's own reference must agree that the action cannot be scoped to a resource.
        assert not [t for t in required_resource_types(action) if t.endswith("*")], action


def test_every_resource_is_the_stacks_own(policy):
    # The few ARNs AWS gives no name to scope by: the managed KMS key, device certificates and
    # things (named by the user, deleted by `down --delete-data`), event source mappings (scoped
    # by function instead), AWS's public Powertools layer, and the account's Data Catalog (which
    # every Glue database action names too).
    unnamed = {
        f"arn:aws:glue:us-east-1:{ACCOUNT}:catalog",
        f"arn:aws:kms:us-east-1:{ACCOUNT}:key/*",
        f"arn:aws:iot:us-east-1:{ACCOUNT}:cert/*",
        f"arn:aws:iot:us-east-1:{ACCOUNT}:thing/*",
        f"arn:aws:lambda:us-east-1:{ACCOUNT}:event-source-mapping:*",
        "arn:aws:lambda:us-east-1:017000801446:layer:AWSLambdaPowertoolsPythonV3-*",
    }
    for statement in statements(policy):
        for resource in as_list(statement["Resource"]):
            if resource == "*" or resource in unnamed:
                continue
            assert "plant-7" in resource or "plant_7" in resource, resource
            assert f":{ACCOUNT}:" in resource or resource.startswith("arn:aws:s3:::"), resource


def test_pass_role_only_for_the_stacks_roles_and_their_services(policy):
    passing = [s for s in statements(policy) if "iam:PassRole" in as_list(s["Action"])]
    assert len(passing) == len(ROLE_SERVICES)
    for statement in passing:
        assert as_list(statement["Action"]) == ["iam:PassRole"]
        role = statement["Resource"]
        service = statement["Condition"]["StringEquals"]["iam:PassedToService"]
        assert any(
            role == NAMES.role_arn(name) and service == ROLE_SERVICES[name]
            for name in ROLE_SERVICES
        ), statement


def _aws_calls() -> set[tuple[str, str]]:
    """Every (service, operation) the resource modules can call: string literals that name an
    operation of a service the same module uses."""
    session = botocore.session.get_session()
    operations = {
        service: {
            botocore.xform_name(op) for op in session.get_service_model(service).operation_names
        }
        for service in SERVICES
    }
    calls = {("sts", "get_caller_identity")}  # Aws.account_id
    for path in CALLERS:
        literals = {
            node.value
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
        }
        for service in literals & SERVICES:
            calls |= {(service, op) for op in literals & operations[service]}
    return calls


def _iam_actions(service: str, operation: str) -> list[str]:
    if (service, operation) in ACTION_OF:
        return ACTION_OF[service, operation]
    name = "".join(part.title() for part in operation.split("_"))
    return [f"{IAM_PREFIX.get(service, service)}:{name}"]


def test_the_policy_allows_every_call_the_stack_makes(policy):
    allowed = allowed_actions(policy)
    calls = _aws_calls()
    assert ("kinesis", "create_stream") in calls and ("sts", "get_caller_identity") in calls
    missing = sorted(
        f"{service}.{op} -> {action}"
        for service, op in calls
        for action in _iam_actions(service, op)
        if action not in allowed
    )
    assert missing == []


def test_kms_actions_are_exactly_the_calls_the_alerts_key_needs(policy):
    calls = {a for s, o in _aws_calls() if s == "kms" for a in _iam_actions(s, o)}
    assert "kms:ScheduleKeyDeletion" in calls
    assert {a for a in allowed_actions(policy) if a.startswith("kms:")} == calls
    # What changes or removes a key needs the stack's tag on it.
    lifecycle = next(s for s in statements(policy) if s["Sid"] == "AlertsKeyLifecycle")
    assert lifecycle["Condition"] == {"StringEquals": {"aws:ResourceTag/iotpipe:stack": "plant-7"}}


def test_log_groups_of_the_stack_are_covered(policy):
    logs = next(s for s in statements(policy) if s["Sid"] == "LogGroups")
    patterns = [
        r.removeprefix(f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:") for r in logs["Resource"]
    ]
    for group in (
        f"/aws/lambda/{NAMES.processor_function}",
        f"/aws/kinesisfirehose/{NAMES.archive_delivery_stream}",
    ):
        assert any(group.startswith(p.rstrip("*")) for p in patterns), group


def _merged(documents: list[dict[str, Any]]) -> dict[str, Any]:
    statements = [statement for document in documents for statement in document["Statement"]]
    return {"Version": documents[0]["Version"], "Statement": statements}


def test_cli_prints_the_policy_for_a_given_account(cli, faults):
    faults.calls.clear()
    result = cli("iam-policy", "--account-id", "210987654321")
    assert result.exit_code == 0, result
    assert set(result.json) == set(JOBS)
    policy = _merged(result.json["deploy"])
    assert "arn:aws:kinesis:us-east-1:210987654321:stream/test-*" in [
        r for s in policy["Statement"] for r in as_list(s["Resource"])
    ]
    for document in result.json["deploy"]:
        assert parliament_findings(document) == []
    assert faults.calls == []


def test_cli_asks_sts_for_the_account_when_not_given(cli, faults):
    faults.calls.clear()
    result = cli("iam-policy", "--job", "deploy")
    assert result.exit_code == 0, result
    assert ("sts", "GetCallerIdentity") in faults.calls
    resources = [r for s in _merged(result.json)["Statement"] for r in as_list(s["Resource"])]
    assert f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/test-*" in resources


def test_cli_rejects_an_unknown_job(cli, faults):
    faults.calls.clear()
    result = cli("iam-policy", "--job", "admin")
    assert result.exit_code == 2, result
    assert "--job" in result.stderr and "deploy" in result.stderr
    assert faults.calls == []


@pytest.mark.parametrize(
    "names",
    [NAMES, Names(stack="a" * 24, app="sensors", region="ap-southeast-4", account=ACCOUNT)],
    ids=["default", "longest-stack-name"],
)
def test_every_document_is_a_policy_aws_accepts(endpoint, names):
    documents = job_policies(names)["deploy"]
    # Together they grant exactly the deploy policy, which alone is too large for one.
    assert _merged(documents) == operator_policy(names)
    assert policy_characters(operator_policy(names)) > MANAGED_POLICY_CHARACTERS
    iam = client(endpoint, "iam")
    for number, document in enumerate(documents, start=1):
        assert policy_characters(document) <= MANAGED_POLICY_CHARACTERS
        sids = [st["Sid"] for st in document["Statement"]]
        assert len(sids) == len(set(sids))
        # The emulator holds CreatePolicy to IAM's size quota, as AWS does.
        iam.create_policy(PolicyName=f"deploy-{number}", PolicyDocument=json.dumps(document))


def test_a_document_too_large_for_one_policy_is_refused_by_the_emulator(endpoint):
    too_large = {"Version": "2012-10-17", "Statement": operator_policy(NAMES)["Statement"]}
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        client(endpoint, "iam").create_policy(
            PolicyName="deploy", PolicyDocument=json.dumps(too_large)
        )
    assert refused.value.response["Error"]["Code"] == "LimitExceeded"


def test_cli_rejects_a_malformed_account_id(cli, faults):
    faults.calls.clear()
    result = cli("iam-policy", "--account-id", "12345")
    assert result.exit_code == 2, result
    assert "--account-id" in result.stderr
    assert faults.calls == []
