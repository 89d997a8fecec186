"""The emulator holds IAM and IoT policies to AWS's size quotas (iotpipe/local/aws_rules/iam.py)."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from iotpipe.local.aws_rules.iam import (
    IOT_POLICY_MAX,
    MANAGED_POLICY_MAX,
    ROLE_INLINE_POLICIES_MAX,
    policy_size,
)

TRUST = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "lambda.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
)


def document(size: int, *, action: str = "s3:GetObject", prefix: str = "arn:aws:s3:::b/") -> str:
    """A valid policy of exactly `size` characters not counting whitespace, indented as people
    write them (the indentation must not count)."""
    statement = {"Effect": "Allow", "Action": action, "Resource": prefix}
    base = policy_size(json.dumps({"Version": "2012-10-17", "Statement": [statement]}))
    statement["Resource"] = prefix + "a" * (size - base)
    text = json.dumps({"Version": "2012-10-17", "Statement": [statement]}, indent=4)
    assert policy_size(text) == size and len(text) > size
    return text


@pytest.fixture
def client(endpoint: str):
    return lambda service: boto3.client(service, endpoint_url=endpoint, region_name="us-east-1")


def refusal(caught: pytest.ExceptionInfo[ClientError]) -> tuple[str, str, int]:
    error = caught.value.response["Error"]
    status = caught.value.response["ResponseMetadata"]["HTTPStatusCode"]
    return error["Code"], error["Message"], status


def test_a_managed_policy_is_at_most_6144_characters_without_whitespace(client) -> None:
    iam = client("iam")
    arn = iam.create_policy(PolicyName="fits", PolicyDocument=document(MANAGED_POLICY_MAX))[
        "Policy"
    ]["Arn"]
    for create in (
        lambda doc: iam.create_policy(PolicyName="too-big", PolicyDocument=doc),
        lambda doc: iam.create_policy_version(PolicyArn=arn, PolicyDocument=doc),
    ):
        with pytest.raises(ClientError) as caught:
            create(document(MANAGED_POLICY_MAX + 1))
        assert refusal(caught) == ("LimitExceeded", "Cannot exceed quota for PolicySize: 6144", 409)
    iam.create_policy_version(PolicyArn=arn, PolicyDocument=document(MANAGED_POLICY_MAX - 10))


def test_a_roles_inline_policies_are_at_most_10240_characters_together(client) -> None:
    iam = client("iam")
    iam.create_role(RoleName="r", AssumeRolePolicyDocument=TRUST)
    half = ROLE_INLINE_POLICIES_MAX // 2
    iam.put_role_policy(RoleName="r", PolicyName="a", PolicyDocument=document(half))
    iam.put_role_policy(RoleName="r", PolicyName="b", PolicyDocument=document(half))
    # Replacing a policy counts the new document instead of the old one.
    iam.put_role_policy(RoleName="r", PolicyName="b", PolicyDocument=document(half))
    with pytest.raises(ClientError) as caught:
        iam.put_role_policy(RoleName="r", PolicyName="b", PolicyDocument=document(half + 1))
    assert refusal(caught) == (
        "LimitExceeded",
        "Maximum policy size of 10240 bytes exceeded for role r",
        409,
    )
    with pytest.raises(ClientError):
        iam.put_role_policy(RoleName="r", PolicyName="c", PolicyDocument=document(200))


def test_an_iot_policy_is_at_most_2048_characters_without_whitespace(client) -> None:
    iot = client("iot")
    iot_doc = lambda size: document(  # noqa: E731
        size, action="iot:Connect", prefix="arn:aws:iot:us-east-1:123456789012:client/"
    )
    iot.create_policy(policyName="fits", policyDocument=iot_doc(IOT_POLICY_MAX))
    for create in (
        lambda doc: iot.create_policy(policyName="too-big", policyDocument=doc),
        lambda doc: iot.create_policy_version(policyName="fits", policyDocument=doc),
    ):
        with pytest.raises(ClientError) as caught:
            create(iot_doc(IOT_POLICY_MAX + 1))
        code, message, status = refusal(caught)
        assert (code, status) == ("InvalidRequestException", 400)
        assert "2048" in message


def test_the_pipelines_own_policies_fit_their_quotas(cli, client, config_file: Path) -> None:
    # Everything that adds permissions on: Timestream, Parquet conversion, recovery; `up` passes
    # the emulator's quota rules, and the sizes keep a margin for growth.
    config_file.write_text(
        '[stack]\nname = "test"\n'
        "[timeseries]\nenabled = true\n"
        '[archive]\nformat = "parquet"\n'
        "[device_state]\npoint_in_time_recovery = true\n"
    )
    result = cli("up", "--yes")
    assert result.exit_code == 0, result
    iam, iot = client("iam"), client("iot")
    roles = [r["RoleName"] for r in iam.list_roles()["Roles"]]
    assert roles
    for role in roles:
        names = iam.list_role_policies(RoleName=role)["PolicyNames"]
        docs = [
            json.dumps(iam.get_role_policy(RoleName=role, PolicyName=n)["PolicyDocument"])
            for n in names
        ]
        assert sum(map(policy_size, docs)) <= ROLE_INLINE_POLICIES_MAX * 0.8, role
    policies = iot.list_policies()["policies"]
    assert policies
    for policy in policies:
        text = iot.get_policy(policyName=policy["policyName"])["policyDocument"]
        assert policy_size(text) <= IOT_POLICY_MAX * 0.8, policy["policyName"]
