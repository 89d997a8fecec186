"""The Glue crawler's role as deployed: a trust policy Glue can satisfy, and the permissions a
crawler of the archive table needs, on the ARNs Glue uses (log groups included).
"""

from __future__ import annotations

import fnmatch
import json
from typing import Any

import pytest

from iotpipe.aws import Aws
from iotpipe.config import parse_config
from iotpipe.context import StackContext
from iotpipe.resources.glue import crawler_role
from tests.policy_lint import parliament_findings
from tests.support import client

ACCOUNT = "123456789012"
REGION = "us-east-1"
BUCKET = f"arn:aws:s3:::test-archive-{ACCOUNT}-{REGION}"
GLUE = f"arn:aws:glue:{REGION}:{ACCOUNT}"
LOG_GROUP = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws-glue/crawlers"


@pytest.fixture(scope="module")
def role(emulator) -> dict[str, Any]:
    """The crawler role's documents as `up` writes them (no deployment needed to read them)."""
    ctx = StackContext(
        parse_config({"stack": {"name": "test"}}),
        Aws(region=REGION, endpoint_url=emulator.endpoint_url),
    )
    built = crawler_role(ctx)
    return {"trust": built.trust, "policy": built.policy}


@pytest.mark.usefixtures("processor_source")
def test_up_deploys_exactly_these_documents(cli, endpoint: str, role) -> None:
    result = cli("up", "--yes")
    assert result.exit_code == 0, result
    iam = client(endpoint, "iam")
    deployed = iam.get_role(RoleName="test-crawler")["Role"]["AssumeRolePolicyDocument"]
    policy = iam.get_role_policy(RoleName="test-crawler", PolicyName="test-crawler-policy")
    assert deployed == role["trust"]
    assert policy["PolicyDocument"] == role["policy"]
    crawler = client(endpoint, "glue").get_crawler(Name="test-archive-crawler")["Crawler"]
    assert crawler["Role"].endswith(":role/test-crawler")


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def allows(policy: dict[str, Any], action: str, resource: str, **context: str) -> bool:
    """Whether an Allow statement covers the request (IAM wildcards; StringLike conditions)."""
    for statement in policy["Statement"]:
        if statement["Effect"] != "Allow":
            continue
        if not any(fnmatch.fnmatchcase(action, a) for a in _listed(statement["Action"])):
            continue
        if not any(fnmatch.fnmatchcase(resource, r) for r in _listed(statement["Resource"])):
            continue
        conditions = statement.get("Condition", {}).get("StringLike", {})
        if all(
            any(fnmatch.fnmatchcase(context.get(key, ""), p) for p in _listed(patterns))
            for key, patterns in conditions.items()
        ):
            return True
    return False


def test_the_trust_policy_has_only_conditions_glue_is_documented_to_send(role) -> None:
    [statement] = role["trust"]["Statement"]
    assert statement["Principal"] == {"Service": "glue.amazonaws.com"}
    assert statement["Action"] == "sts:AssumeRole"
    # Glue does not document aws:SourceAccount/aws:SourceArn on AssumeRole: a condition on an
    # absent key never matches, and the crawler could not assume the role.
    assert "Condition" not in statement


@pytest.mark.parametrize(
    ("action", "resource"),
    [
        ("glue:GetDatabase", f"{GLUE}:database/test"),
        ("glue:GetDatabase", f"{GLUE}:catalog"),
        ("glue:GetTables", f"{GLUE}:database/test"),
        ("glue:GetTable", f"{GLUE}:table/test/readings"),
        ("glue:UpdateTable", f"{GLUE}:table/test/readings"),
        ("glue:GetPartition", f"{GLUE}:table/test/readings"),
        ("glue:GetPartitions", f"{GLUE}:table/test/readings"),
        ("glue:BatchGetPartition", f"{GLUE}:table/test/readings"),
        ("glue:CreatePartition", f"{GLUE}:table/test/readings"),
        ("glue:BatchCreatePartition", f"{GLUE}:table/test/readings"),
        ("glue:UpdatePartition", f"{GLUE}:table/test/readings"),
        ("s3:GetBucketLocation", BUCKET),
        ("s3:GetObject", f"{BUCKET}/readings/dt=2026-01-01/hour=00/part.gz"),
        # Glue writes each run to /aws-glue/crawlers, in a stream named after the crawler.
        ("logs:CreateLogGroup", LOG_GROUP),
        ("logs:CreateLogStream", f"{LOG_GROUP}:log-stream:test-archive-crawler"),
        ("logs:PutLogEvents", f"{LOG_GROUP}:log-stream:test-archive-crawler"),
    ],
)
def test_the_crawler_may_do_what_crawling_the_table_takes(role, action, resource) -> None:
    assert allows(role["policy"], action, resource), (action, resource, role["policy"])


def test_listing_is_allowed_under_the_readings_prefix_only(role) -> None:
    policy = role["policy"]
    assert allows(policy, "s3:ListBucket", BUCKET, **{"s3:prefix": "readings/"})
    assert allows(policy, "s3:ListBucket", BUCKET, **{"s3:prefix": "readings/dt=2026-01-01/"})
    assert not allows(policy, "s3:ListBucket", BUCKET, **{"s3:prefix": "quarantine/"})


@pytest.mark.parametrize(
    ("action", "resource"),
    [
        ("s3:GetObject", f"{BUCKET}/quarantine/x.json"),
        ("s3:PutObject", f"{BUCKET}/readings/x.gz"),
        ("glue:DeleteTable", f"{GLUE}:table/test/readings"),
        ("glue:CreateTable", f"{GLUE}:table/test/other"),
        ("glue:UpdateTable", f"{GLUE}:table/test/other"),
        ("logs:PutLogEvents", f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/x:*"),
    ],
)
def test_nothing_beyond_the_archive_table_and_its_logs(role, action, resource) -> None:
    assert not allows(role["policy"], action, resource), (action, resource)


def test_the_role_documents_lint_clean(role) -> None:
    assert parliament_findings(role["policy"]) == [], json.dumps(role["policy"], indent=1)


def _crawler_with_trust(endpoint: str, trust: dict[str, Any]) -> str | None:
    """Create a crawler with a role of this trust; the error code if Glue still refuses it after
    the attempts a new role needs to propagate (the emulator refuses its first few)."""
    import botocore.exceptions

    iam, glue = client(endpoint, "iam"), client(endpoint, "glue")
    iam.create_role(RoleName="crawler-trust", AssumeRolePolicyDocument=json.dumps(trust))
    glue.create_database(DatabaseInput={"Name": "trustdb"})
    error = None
    for _ in range(20):
        try:
            glue.create_crawler(
                Name="trust-crawler",
                Role=f"arn:aws:iam::{ACCOUNT}:role/crawler-trust",
                DatabaseName="trustdb",
                Targets={"S3Targets": [{"Path": "s3://bucket/readings/"}]},
            )
            return None
        except botocore.exceptions.ClientError as exc:
            error = exc.response["Error"]
            assert "unable to assume provided role" in error["Message"], error
    return error["Code"] if error else None


def test_the_emulator_refuses_a_crawler_role_glue_cannot_assume(endpoint: str) -> None:
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "glue.amazonaws.com"},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"aws:SourceAccount": ACCOUNT}},
            }
        ],
    }
    assert _crawler_with_trust(endpoint, trust) == "InvalidInputException"


def test_the_emulator_accepts_the_documented_glue_trust(endpoint: str, role) -> None:
    assert _crawler_with_trust(endpoint, role["trust"]) is None
    assert client(endpoint, "glue").get_crawler(Name="trust-crawler")["Crawler"]["Role"]
