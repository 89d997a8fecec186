"""S3: the archive bucket (Firehose output, quarantine, IoT rule errors, Athena results)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from iotpipe.engine.model import Change, Resource

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.stack import StackContext

PUBLIC_ACCESS_BLOCKED = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}


def tls_only_policy(bucket_arn: str) -> dict[str, Any]:
    """Deny every request that does not use TLS."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [bucket_arn, f"{bucket_arn}/*"],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ],
    }


def lifecycle_rules(ctx: StackContext) -> list[dict[str, Any]]:
    """Archive to cheaper storage as it ages; expire what is only kept for a while."""
    names, archive = ctx.names, ctx.config.archive
    expire = [
        ("quarantine", names.quarantine_prefix, archive.quarantine_expire_days),
        ("firehose-errors", names.archive_error_prefix, archive.quarantine_expire_days),
        ("iot-errors", names.iot_errors_prefix, archive.quarantine_expire_days),
        ("athena-results", names.athena_results_prefix, archive.athena_results_expire_days),
    ]
    return [
        {
            "id": "readings-tiering",
            "prefix": names.archive_prefix,
            # Big Firehose objects suit IA/Glacier IR (128 KiB minimum billed size per object).
            "transitions": [
                [archive.transition_to_ia_days, "STANDARD_IA"],
                [archive.transition_to_glacier_days, "GLACIER_IR"],
            ],
        },
        *(
            {"id": f"{rule}-expiry", "prefix": prefix, "expire_days": days}
            for rule, prefix, days in expire
        ),
        # Parts of uploads that never completed are billed but invisible.
        {"id": "abort-incomplete-uploads", "prefix": "", "abort_incomplete_days": 7},
    ]


def _rule_input(rule: dict[str, Any]) -> dict[str, Any]:
    """A lifecycle rule spec as the S3 API takes it."""
    out: dict[str, Any] = {
        "ID": rule["id"],
        "Filter": {"Prefix": rule["prefix"]},
        "Status": "Enabled",
    }
    if "transitions" in rule:
        out["Transitions"] = [{"Days": d, "StorageClass": c} for d, c in rule["transitions"]]
    if "expire_days" in rule:
        out["Expiration"] = {"Days": rule["expire_days"]}
    if "abort_incomplete_days" in rule:
        out["AbortIncompleteMultipartUpload"] = {
            "DaysAfterInitiation": rule["abort_incomplete_days"]
        }
    return out


def _rule_spec(rule: dict[str, Any]) -> dict[str, Any]:
    """An observed lifecycle rule in the shape of `lifecycle_rules` (disabled rules show so)."""
    prefix = rule.get("Filter", {}).get("Prefix", rule.get("Prefix", ""))
    spec: dict[str, Any] = {"id": rule.get("ID"), "prefix": prefix}
    if rule.get("Status") != "Enabled":
        spec["status"] = rule.get("Status")
    if rule.get("Transitions"):
        spec["transitions"] = [[t.get("Days"), t["StorageClass"]] for t in rule["Transitions"]]
    if "Days" in rule.get("Expiration", {}):
        spec["expire_days"] = rule["Expiration"]["Days"]
    if rule.get("AbortIncompleteMultipartUpload"):
        days = rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"]
        spec["abort_incomplete_days"] = days
    return spec


class ArchiveBucket(Resource):
    kind = "s3.bucket"
    data_store = True

    def desired(self) -> dict[str, Any]:
        names = self.ctx.names
        return {
            "tags": self.ctx.tags,
            # SSE-S3: encryption at rest with no per-request KMS charge.
            "encryption": "AES256",
            "public_access_block": PUBLIC_ACCESS_BLOCKED,
            "ownership": "BucketOwnerEnforced",
            "policy": tls_only_policy(names.archive_bucket_arn),
            "lifecycle": lifecycle_rules(self.ctx),
        }

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        bucket, label = self.name, self.label
        if aws.call("s3", "head_bucket", resource=label, missing=("404",), Bucket=bucket) is None:
            return None

        def read(operation: str, *missing: str):
            return lambda: aws.call("s3", operation, resource=label, missing=missing, Bucket=bucket)

        tagging, encryption, block, ownership, policy, lifecycle = aws.gather(
            read("get_bucket_tagging", "NoSuchTagSet"),
            read("get_bucket_encryption", "ServerSideEncryptionConfigurationNotFoundError"),
            read("get_public_access_block", "NoSuchPublicAccessBlockConfiguration"),
            read("get_bucket_ownership_controls", "OwnershipControlsNotFoundError"),
            read("get_bucket_policy", "NoSuchBucketPolicy"),
            read("get_bucket_lifecycle_configuration", "NoSuchLifecycleConfiguration"),
        )
        rules = (encryption or {}).get("ServerSideEncryptionConfiguration", {}).get("Rules", [])
        return {
            "tags": {t["Key"]: t["Value"] for t in (tagging or {}).get("TagSet", [])},
            "encryption": rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"]
            if rules
            else None,
            "public_access_block": (block or {}).get("PublicAccessBlockConfiguration"),
            "ownership": (ownership or {})
            .get("OwnershipControls", {})
            .get("Rules", [{}])[0]
            .get("ObjectOwnership"),
            "policy": json.loads(policy["Policy"]) if policy else None,
            "lifecycle": [_rule_spec(r) for r in (lifecycle or {}).get("Rules", [])],
        }

    def create(self, aws: Aws) -> None:
        params: dict[str, Any] = {"Bucket": self.name, "ObjectOwnership": "BucketOwnerEnforced"}
        if aws.region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": aws.region}
        aws.call(
            "s3",
            "create_bucket",
            resource=self.label,
            missing=("BucketAlreadyOwnedByYou",),
            **params,
        )

    def update(self, aws: Aws, changes: list[Change]) -> None:
        want = self.desired()
        for change in changes:
            field = change.field
            if field == "tags":
                merged = {**(change.old or {}), **want["tags"]}
                aws.call(
                    "s3",
                    "put_bucket_tagging",
                    resource=self.label,
                    Bucket=self.name,
                    Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in merged.items()]},
                )
            elif field == "encryption":
                rule = {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": want[field]}}
                aws.call(
                    "s3",
                    "put_bucket_encryption",
                    resource=self.label,
                    Bucket=self.name,
                    ServerSideEncryptionConfiguration={"Rules": [rule]},
                )
            elif field == "public_access_block":
                aws.call(
                    "s3",
                    "put_public_access_block",
                    resource=self.label,
                    Bucket=self.name,
                    PublicAccessBlockConfiguration=want[field],
                )
            elif field == "ownership":
                aws.call(
                    "s3",
                    "put_bucket_ownership_controls",
                    resource=self.label,
                    Bucket=self.name,
                    OwnershipControls={"Rules": [{"ObjectOwnership": want[field]}]},
                )
            elif field == "policy":
                aws.call(
                    "s3",
                    "put_bucket_policy",
                    resource=self.label,
                    Bucket=self.name,
                    Policy=json.dumps(want[field]),
                )
            elif field == "lifecycle":
                aws.call(
                    "s3",
                    "put_bucket_lifecycle_configuration",
                    resource=self.label,
                    Bucket=self.name,
                    LifecycleConfiguration={"Rules": [_rule_input(r) for r in want[field]]},
                )

    def delete(self, aws: Aws) -> None:
        empty_bucket(aws, self.name, self.label)
        aws.call(
            "s3", "delete_bucket", resource=self.label, missing=("NoSuchBucket",), Bucket=self.name
        )


def empty_bucket(aws: Aws, bucket: str, label: str) -> None:
    """Delete every object version and delete marker, 1,000 per call."""
    batch: list[dict[str, str]] = []

    def flush() -> None:
        if batch:
            aws.call(
                "s3",
                "delete_objects",
                resource=label,
                Bucket=bucket,
                Delete={"Objects": list(batch), "Quiet": True},
            )
            batch.clear()

    params: dict[str, Any] = {"Bucket": bucket}
    while True:
        page = aws.call(
            "s3", "list_object_versions", resource=label, missing=("NoSuchBucket",), **params
        )
        if page is None:
            return
        for item in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
            batch.append({"Key": item["Key"], "VersionId": item["VersionId"]})
            if len(batch) == 1000:
                flush()
        if not page.get("IsTruncated"):
            break
        params["KeyMarker"] = page.get("NextKeyMarker")
        params["VersionIdMarker"] = page.get("NextVersionIdMarker")
    flush()


def resources(ctx: StackContext) -> list[Resource]:
    return [ArchiveBucket(ctx, ctx.names.archive_bucket)]
