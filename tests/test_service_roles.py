"""The service roles grant what AWS documents each service needs for this pipeline, both ways:
nothing documented is missing, nothing undocumented is granted. (The processor's role is held to
the calls its handler makes in the processor tests instead: tests/permission_audit.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from iotpipe.aws import Aws
from iotpipe.config import load_config
from iotpipe.context import StackContext
from iotpipe.resources import firehose, glue, iot
from iotpipe.resources.iam import ServiceRole
from tests.policy_lint import parliament_findings

# What each service does as the role, for this pipeline's use of it, and where AWS says so.
DOCUMENTED: dict[str, dict[str, str]] = {
    "iot-rule": {
        # AWS IoT Core developer guide, "Kinesis Data Streams" rule action: "AWS IoT must have
        # permission to perform the kinesis:PutRecord operation".
        "kinesis:PutRecord": "the rule's Kinesis action",
        # Same guide, "S3" rule action (the rule's error action): "s3:PutObject".
        "s3:PutObject": "the rule's S3 error action",
    },
    "firehose": {
        # Amazon Data Firehose developer guide, "Grant Firehose access to an Amazon S3
        # destination": the bucket and object actions, and logs:PutLogEvents for error logging.
        "s3:AbortMultipartUpload": "delivery to S3",
        "s3:GetBucketLocation": "delivery to S3",
        "s3:GetObject": "delivery to S3",
        "s3:ListBucket": "delivery to S3",
        "s3:ListBucketMultipartUploads": "delivery to S3",
        "s3:PutObject": "delivery to S3",
        "logs:PutLogEvents": "delivery error logging",
    },
    "crawler": {
        # AWS Glue developer guide, "Step 2: Create an IAM role for AWS Glue" (the
        # AWSGlueServiceRole managed policy), scoped to what crawling one existing table takes:
        # read the database and its tables, update the table and its partitions, read the
        # archive, write the crawler's logs.
        **{
            action: "crawling the archive table"
            for action in (
                "glue:BatchCreatePartition",
                "glue:BatchGetPartition",
                "glue:BatchUpdatePartition",
                "glue:CreatePartition",
                "glue:GetDatabase",
                "glue:GetPartition",
                "glue:GetPartitions",
                "glue:GetTable",
                "glue:GetTables",
                "glue:UpdatePartition",
                "glue:UpdateTable",
            )
        },
        "s3:GetBucketLocation": "reading the archive",
        "s3:GetObject": "reading the archive",
        "s3:ListBucket": "reading the archive",
        "logs:CreateLogGroup": "the crawler's logs",
        "logs:CreateLogStream": "the crawler's logs",
        "logs:PutLogEvents": "the crawler's logs",
    },
}
# Firehose developer guide, "Grant Firehose access to AWS Glue for data format conversion".
PARQUET = {
    "glue:GetTable": "record format conversion",
    "glue:GetTableVersion": "record format conversion",
    "glue:GetTableVersions": "record format conversion",
}


def context(tmp_path: Path, archive_format: str = "gzip") -> StackContext:
    path = tmp_path / "iotpipe.toml"
    path.write_text(f'[stack]\nname = "plant-7"\n[archive]\nformat = "{archive_format}"\n')
    return StackContext(load_config(path), Aws(region="us-east-1"), "123456789012", True)


def actions(role: ServiceRole) -> set[str]:
    out: set[str] = set()
    for statement in role.policy["Statement"]:
        listed = statement["Action"]
        out |= {listed} if isinstance(listed, str) else set(listed)
    return out


@pytest.mark.parametrize("archive_format", ["gzip", "parquet"])
def test_each_role_grants_exactly_what_its_service_is_documented_to_need(tmp_path, archive_format):
    ctx = context(tmp_path, archive_format)
    roles = {
        "iot-rule": iot.rule_role(ctx),
        "firehose": firehose.firehose_role(ctx),
        "crawler": glue.crawler_role(ctx),
    }
    for name, role in roles.items():
        documented = dict(DOCUMENTED[name])
        if name == "firehose" and archive_format == "parquet":
            documented |= PARQUET
        assert actions(role) == set(documented), name
        assert parliament_findings(role.policy) == [], name


def test_the_check_fails_for_a_role_that_grants_more(tmp_path):
    role = iot.rule_role(context(tmp_path))
    role.policy["Statement"][0]["Action"] = ["kinesis:PutRecord", "kinesis:DeleteStream"]
    assert actions(role) != set(DOCUMENTED["iot-rule"])
