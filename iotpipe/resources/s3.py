"""S3: the archive bucket (Firehose output, quarantine, IoT rule errors, Athena results).

The archive is the only complete copy of every reading, so the bucket is versioned: an object
deleted or overwritten by mistake stays recoverable for `archive.noncurrent_version_expire_days`,
after which the lifecycle removes the old version and then the delete marker left alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from iotpipe.engine.fields import Field, Tagging, Write, call
from iotpipe.engine.model import Resource
from iotpipe.engine.reconcile import report_wait
from iotpipe.errors import AwsError
from iotpipe.permissions import Grant, reads, writes

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.context import StackContext

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


# DeleteObjects takes at most 1,000 keys a request (S3 API reference, DeleteObjects).
DELETE_BATCH = 1000
# Firehose answers DescribeDeliveryStream with this once a deleted stream is gone.
STREAM_GONE = ("ResourceNotFoundException",)


def lifecycle_rules(ctx: StackContext) -> list[dict[str, Any]]:
    """Archive to cheaper storage as it ages; expire what is only kept for a while.

    The minimum days S3 allows between classes are checked by the config (`ArchiveSection`).
    """
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
            "transitions": [[days, cls] for days, cls in archive.transitions()],
        },
        *(
            {"id": f"{rule}-expiry", "prefix": prefix, "expire_days": days}
            for rule, prefix, days in expire
        ),
        # Parts of uploads that never completed are billed but invisible.
        {"id": "abort-incomplete-uploads", "prefix": "", "abort_incomplete_days": 7},
        # Versioning keeps what is deleted or expired above as noncurrent versions: remove them
        # after a grace period, then the delete markers left with no version behind them.
        # ExpiredObjectDeleteMarker "cannot be specified with Days or Date" (S3 API reference,
        # LifecycleExpiration), hence a rule of its own.
        {
            "id": "noncurrent-versions",
            "prefix": "",
            "noncurrent_expire_days": archive.noncurrent_version_expire_days,
            "expired_delete_markers": True,
        },
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
    if rule.get("expired_delete_markers"):
        out["Expiration"] = {"ExpiredObjectDeleteMarker": True}
    if "noncurrent_expire_days" in rule:
        out["NoncurrentVersionExpiration"] = {"NoncurrentDays": rule["noncurrent_expire_days"]}
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
    if "NoncurrentDays" in rule.get("NoncurrentVersionExpiration", {}):
        spec["noncurrent_expire_days"] = rule["NoncurrentVersionExpiration"]["NoncurrentDays"]
    if rule.get("Expiration", {}).get("ExpiredObjectDeleteMarker"):
        spec["expired_delete_markers"] = True
    if rule.get("AbortIncompleteMultipartUpload"):
        days = rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"]
        spec["abort_incomplete_days"] = days
    return spec


# The Get calls that read the bucket's settings, each with the error it answers when none is
# set. Their answers share no key (but ResponseMetadata), so together they read as one.
READS = {
    "get_bucket_encryption": ("ServerSideEncryptionConfigurationNotFoundError",),
    "get_public_access_block": ("NoSuchPublicAccessBlockConfiguration",),
    "get_bucket_ownership_controls": ("OwnershipControlsNotFoundError",),
    "get_bucket_policy": ("NoSuchBucketPolicy",),
    "get_bucket_versioning": (),
    "get_bucket_lifecycle_configuration": ("NoSuchLifecycleConfiguration",),
}
SSE_DEFAULT = "ApplyServerSideEncryptionByDefault"


def _put(
    operation: str, field: str, param: str, value: Callable[[Any], Any] = lambda v: v
) -> Write:
    """The Put call that sets one setting: `param` is `value(desired value of field)`."""
    return call(
        "s3",
        operation,
        lambda r, want, have: {"Bucket": r.name, param: value(want[field])},
        name=field,
    )


class ArchiveBucket(Resource):
    kind = "s3.bucket"
    data_store = True
    absent = ("NoSuchBucket",)
    present = ("BucketAlreadyOwnedByYou",)
    fields = (
        Field(
            "encryption",
            f"ServerSideEncryptionConfiguration.Rules[0].{SSE_DEFAULT}.SSEAlgorithm",
            "encryption",
        ),
        Field("public_access_block", "PublicAccessBlockConfiguration", "public_access_block"),
        Field("ownership", "OwnershipControls.Rules[0].ObjectOwnership", "ownership"),
        Field(
            "policy", lambda raw: json.loads(raw["Policy"]) if "Policy" in raw else None, "policy"
        ),
        # A bucket never versioned has no Status at all.
        Field("versioning", "Status", "versioning"),
        Field("lifecycle", lambda raw: [_rule_spec(r) for r in raw.get("Rules", [])], "lifecycle"),
    )
    writes = (
        _put(
            "put_bucket_encryption",
            "encryption",
            "ServerSideEncryptionConfiguration",
            lambda v: {"Rules": [{SSE_DEFAULT: {"SSEAlgorithm": v}}]},
        ),
        _put("put_public_access_block", "public_access_block", "PublicAccessBlockConfiguration"),
        _put(
            "put_bucket_ownership_controls",
            "ownership",
            "OwnershipControls",
            lambda v: {"Rules": [{"ObjectOwnership": v}]},
        ),
        _put("put_bucket_policy", "policy", "Policy", json.dumps),
        _put(
            "put_bucket_versioning",
            "versioning",
            "VersioningConfiguration",
            lambda v: {"Status": v},
        ),
        _put(
            "put_bucket_lifecycle_configuration",
            "lifecycle",
            "LifecycleConfiguration",
            lambda v: {"Rules": [_rule_input(r) for r in v]},
        ),
    )
    # PutBucketTagging replaces the whole tag set: the tags others added are written back.
    tagging = Tagging(
        "s3",
        "get_bucket_tagging",
        "put_bucket_tagging",
        lambda r, raw: {"Bucket": r.name},
        found="TagSet",
        missing=("NoSuchTagSet",),
        whole=True,
        wrap=lambda tags: {"Tagging": {"TagSet": tags}},
    )

    def grants(self) -> list[Grant]:
        names = self.ctx.names
        arn = names.archive_bucket_arn
        return [
            reads(
                [
                    "s3:ListBucket",  # HeadBucket
                    "s3:GetBucketTagging",
                    "s3:GetEncryptionConfiguration",
                    "s3:GetBucketPublicAccessBlock",
                    "s3:GetBucketOwnershipControls",
                    "s3:GetBucketPolicy",
                    "s3:GetBucketVersioning",
                    "s3:GetLifecycleConfiguration",
                ],
                arn,
            ),
            writes(
                [
                    "s3:CreateBucket",
                    "s3:DeleteBucket",
                    "s3:PutBucketTagging",
                    "s3:PutEncryptionConfiguration",
                    "s3:PutBucketPublicAccessBlock",
                    "s3:PutBucketOwnershipControls",
                    "s3:PutBucketPolicy",
                    "s3:PutBucketVersioning",
                    "s3:PutLifecycleConfiguration",
                    "s3:ListBucketVersions",  # `down --delete-data` empties the bucket
                ],
                arn,
            ),
            # DeleteObjects of object versions is authorized as DeleteObjectVersion per key.
            # Whoever may set the bucket policy (or its lifecycle) can give themselves object
            # access anyway, so reading, writing and deleting objects are stated openly.
            writes(
                ["s3:DeleteObjectVersion", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                f"{arn}/*",
                why="every key of the stack's own bucket",
            ),
            # Before the bucket goes, the delivery stream writing to it must be gone.
            writes(["firehose:DescribeDeliveryStream"], names.archive_delivery_stream_arn),
        ]

    def desired(self) -> dict[str, Any]:
        names = self.ctx.names
        return {
            "tags": self.ctx.tags,
            # SSE-S3: encryption at rest with no per-request KMS charge.
            "encryption": "AES256",
            "public_access_block": PUBLIC_ACCESS_BLOCKED,
            "ownership": "BucketOwnerEnforced",
            "policy": tls_only_policy(names.archive_bucket_arn),
            "versioning": "Enabled",
            "lifecycle": lifecycle_rules(self.ctx),
        }

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        # HeadBucket answers a bare 404 for a bucket that does not exist.
        if self.call(aws, "head_bucket", missing=("404",), Bucket=self.name) is None:
            return None

        def read(operation: str, missing: tuple[str, ...]) -> Callable[[], Any]:
            return lambda: self.call(aws, operation, missing=missing, Bucket=self.name)

        answers = aws.gather(*(read(*get) for get in READS.items()))
        return {key: value for answer in answers if answer for key, value in answer.items()}

    def create(self, aws: Aws) -> None:
        params: dict[str, Any] = {"Bucket": self.name, "ObjectOwnership": "BucketOwnerEnforced"}
        if aws.region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": aws.region}
        self.make(aws, "create_bucket", **params)

    def delete(self, aws: Aws) -> None:
        # A Firehose stream being deleted can still flush a buffer into the bucket: emptying it
        # before the stream is gone would leave objects, and DeleteBucket would fail.
        wait_for_stream_gone(aws, self.ctx.names.archive_delivery_stream, self.label)
        empty_bucket(aws, self.name, self.label)
        self.remove(aws, "delete_bucket", Bucket=self.name)


def wait_for_stream_gone(aws: Aws, stream: str, label: str) -> None:
    """Wait until the delivery stream writing into the bucket no longer exists."""
    reported = False

    def gone() -> bool:
        nonlocal reported
        found = aws.call(
            "firehose",
            "describe_delivery_stream",
            resource=label,
            missing=STREAM_GONE,
            DeliveryStreamName=stream,
        )
        if found is None:
            return True
        status = found["DeliveryStreamDescription"].get("DeliveryStreamStatus")
        if status == "DELETING_FAILED":
            raise AwsError(
                f"Firehose delivery stream {stream} failed to delete, and may still write here",
                resource=label,
                hint="delete the stream in the Firehose console, then run `down` again",
            )
        if not reported:
            reported = True
            report_wait(
                f"Firehose delivery stream {stream} is {status or 'still there'}: it may flush "
                "objects into the bucket until it is gone, so the bucket is emptied after that"
            )
        return False

    aws.wait_for(
        gone,
        resource=label,
        what=f"for Firehose delivery stream {stream} to finish deleting (it may still flush "
        "objects into the bucket)",
    )


def empty_bucket(aws: Aws, bucket: str, label: str) -> None:
    """Delete every object version and delete marker, a page (at most 1,000) per DeleteObjects.

    Each pass lists from the start again instead of following page markers past keys it has
    just deleted: what is listed next is exactly what is left, whatever was written meanwhile.
    """
    previous: list[tuple[str, str]] | None = None
    while True:
        page = aws.call(
            "s3",
            "list_object_versions",
            resource=label,
            missing=("NoSuchBucket",),
            Bucket=bucket,
            MaxKeys=DELETE_BATCH,
        )
        if page is None:
            return
        listed = [
            (item["Key"], item["VersionId"])
            for item in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
        ]
        if not listed:
            return
        if listed == previous:
            raise AwsError(
                f"{len(listed)} object version(s) remain after DeleteObjects reported them "
                f"deleted, e.g. {listed[0][0]}",
                resource=label,
                hint="check the bucket in the S3 console, then run `down` again",
            )
        for start in range(0, len(listed), DELETE_BATCH):
            _delete_versions(aws, bucket, label, listed[start : start + DELETE_BATCH])
        previous = listed


def _delete_versions(aws: Aws, bucket: str, label: str, versions: list[tuple[str, str]]) -> None:
    reply = aws.call(
        "s3",
        "delete_objects",
        resource=label,
        Bucket=bucket,
        Delete={"Objects": [{"Key": k, "VersionId": v} for k, v in versions], "Quiet": True},
    )
    # DeleteObjects answers 200 even when it deletes nothing: each refused key is in Errors.
    errors = (reply or {}).get("Errors") or []
    if errors:
        shown = ", ".join(
            f"{e.get('Key')} (version {e.get('VersionId')}): {e.get('Code')}: {e.get('Message')}"
            for e in errors[:5]
        )
        more = f" and {len(errors) - 5} more" if len(errors) > 5 else ""
        raise AwsError(
            f"DeleteObjects could not delete {len(errors)} object version(s): {shown}{more}",
            resource=label,
            code=errors[0].get("Code"),
            hint="check the bucket policy and any Object Lock retention, then run `down` again",
        )


def resources(ctx: StackContext) -> list[Resource]:
    return [ArchiveBucket(ctx, ctx.names.archive_bucket)]
