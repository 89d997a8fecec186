"""The archive bucket: versioned, with a lifecycle S3 accepts, emptied completely by `down`.

Runs against the moto server with the emulator's AWS rules on (S3 lifecycle minimums).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
from botocore.awsrequest import AWSResponse, HTTPHeaders

from iotpipe.aws import Aws, add_client_hook
from iotpipe.config import parse_config
from iotpipe.context import StackContext
from iotpipe.stack import build_resources
from tests.faults import _operation_from, _Raw
from tests.support import client, write_config

ACCOUNT = "123456789012"
REGION = "us-east-1"
BUCKET = f"test-archive-{ACCOUNT}-{REGION}"

pytestmark = pytest.mark.usefixtures("processor_source")


def up_ok(cli, config: Path | None = None) -> None:
    result = cli("up", "--yes", config=config)
    assert result.exit_code == 0, result


def test_up_versions_the_archive_and_expires_noncurrent_versions_and_lone_markers(
    cli, endpoint: str
) -> None:
    up_ok(cli)
    s3 = client(endpoint, "s3")
    assert s3.get_bucket_versioning(Bucket=BUCKET)["Status"] == "Enabled"
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]}
    versions = rules["noncurrent-versions"]
    assert versions["Filter"] == {"Prefix": ""}
    assert versions["Status"] == "Enabled"
    assert versions["NoncurrentVersionExpiration"]["NoncurrentDays"] == 30
    assert versions["Expiration"] == {"ExpiredObjectDeleteMarker": True}
    # What `up` wrote is what it reads back: a second plan has nothing to do for the bucket.
    plan = cli("plan", "--output", "json")
    assert plan.exit_code == 0, plan
    bucket = [s for s in plan.json["steps"] if s["kind"] == "s3.bucket"]
    assert [s["action"] for s in bucket] == ["no-change"], bucket


def test_the_noncurrent_expiry_is_configurable_and_converges(
    cli, endpoint: str, tmp_path: Path
) -> None:
    up_ok(cli)
    config = write_config(tmp_path / "c.toml", archive={"noncurrent_version_expire_days": 90})
    up_ok(cli, config)
    rules = client(endpoint, "s3").get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]
    versions = next(r for r in rules if r["ID"] == "noncurrent-versions")
    assert versions["NoncurrentVersionExpiration"]["NoncurrentDays"] == 90


def test_a_too_early_transition_is_refused_by_the_config_naming_the_field(
    cli, faults, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "c.toml", archive={"transition_to_ia_days": 7})
    result = cli("up", "--yes", config=config)
    assert result.exit_code == 2, result
    assert "archive.transition_to_ia_days" in result.stderr
    assert faults.calls == []


@pytest.fixture
def bare_bucket(endpoint: str) -> Any:
    s3 = client(endpoint, "s3")
    s3.create_bucket(Bucket="lifecycle-rules")
    return s3


def put_rule(s3: Any, **actions: Any) -> None:
    s3.put_bucket_lifecycle_configuration(
        Bucket="lifecycle-rules",
        LifecycleConfiguration={
            "Rules": [
                {"ID": "r", "Filter": {"Prefix": "readings/"}, "Status": "Enabled", **actions}
            ]
        },
    )


@pytest.mark.parametrize(
    ("actions", "message"),
    [
        (
            {"Transitions": [{"Days": 7, "StorageClass": "STANDARD_IA"}]},
            "'Days' in Transition action must be greater than or equal to 30 for storageClass "
            "'STANDARD_IA'",
        ),
        (
            {"Transitions": [{"Days": 29, "StorageClass": "ONEZONE_IA"}]},
            "'Days' in Transition action must be greater than or equal to 30 for storageClass "
            "'ONEZONE_IA'",
        ),
        (
            {
                "Transitions": [
                    {"Days": 30, "StorageClass": "STANDARD_IA"},
                    {"Days": 45, "StorageClass": "GLACIER_IR"},
                ]
            },
            "must be 30 days more than 'Days' in the Transition action for StorageClass "
            "'STANDARD_IA'",
        ),
        (
            {
                "Transitions": [{"Days": 30, "StorageClass": "GLACIER_IR"}],
                "Expiration": {"Days": 30},
            },
            "'Days' in the Expiration action for filter '(prefix=readings/)' must be greater "
            "than 'Days' in the Transition action",
        ),
    ],
)
def test_the_emulator_refuses_a_lifecycle_s3_refuses(bare_bucket, actions, message) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        put_rule(bare_bucket, **actions)
    error = caught.value.response["Error"]
    assert error["Code"] == "InvalidArgument"
    assert message in error["Message"]
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_the_emulator_accepts_the_minimums_themselves(bare_bucket) -> None:
    put_rule(
        bare_bucket,
        Transitions=[
            {"Days": 30, "StorageClass": "STANDARD_IA"},
            {"Days": 60, "StorageClass": "GLACIER_IR"},
        ],
        Expiration={"Days": 61},
    )
    # Glacier classes have no minimum age before the move.
    put_rule(bare_bucket, Transitions=[{"Days": 0, "StorageClass": "GLACIER_IR"}])


# --- Emptying the bucket on `down --delete-data` ---


@pytest.fixture
def delete_objects_errors() -> Iterator[list[dict[str, str]]]:
    """Answer every DeleteObjects with a 200 whose <Error> entries are the listed keys."""
    refused: list[dict[str, str]] = []

    def attach(service: str, s3: Any) -> None:
        if service != "s3":
            return

        def before_send(request: Any, **kwargs: Any) -> AWSResponse | None:
            operation = request.context.get("operation_name") or _operation_from(kwargs)
            if operation != "DeleteObjects" or not refused:
                return None
            errors = "".join(
                f"<Error><Key>{e['Key']}</Key><VersionId>{e['VersionId']}</VersionId>"
                f"<Code>{e['Code']}</Code><Message>{e['Message']}</Message></Error>"
                for e in refused
            )
            body = f'<?xml version="1.0" encoding="UTF-8"?><DeleteResult>{errors}</DeleteResult>'
            headers = HTTPHeaders()
            headers["Content-Type"] = "application/xml"
            return AWSResponse(request.url, 200, headers, _Raw(body.encode()))

        s3.meta.events.register("before-send", before_send)

    remove = add_client_hook(attach)
    yield refused
    remove()


def test_down_fails_naming_the_keys_delete_objects_refused(
    cli, endpoint: str, delete_objects_errors
) -> None:
    up_ok(cli)
    s3 = client(endpoint, "s3")
    put = s3.put_object(Bucket=BUCKET, Key="readings/held.gz", Body=b"x")
    version = put.get("VersionId", "null")
    delete_objects_errors.append(
        {"Key": "readings/held.gz", "VersionId": version, "Code": "AccessDenied", "Message": "no"}
    )
    result = cli("down", "--yes", "--delete-data")
    assert result.exit_code == 1, result
    assert "readings/held.gz" in result.stderr
    assert "AccessDenied" in result.stderr
    assert "Traceback" not in result.stderr
    # Nothing was reported deleted that still exists.
    assert s3.head_bucket(Bucket=BUCKET)["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_down_empties_more_than_a_thousand_versions_and_markers(cli, endpoint: str) -> None:
    up_ok(cli)
    s3 = client(endpoint, "s3")
    keys = [f"readings/dt=2026-01-01/hour=00/{i:05d}.gz" for i in range(1_001)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: s3.put_object(Bucket=BUCKET, Key=key, Body=b"1"), keys))
        # Second versions and delete markers: more than one page of versions, with markers.
        list(pool.map(lambda key: s3.put_object(Bucket=BUCKET, Key=key, Body=b"2"), keys[:20]))
        list(pool.map(lambda key: s3.delete_object(Bucket=BUCKET, Key=key), keys[20:40]))
    listed = s3.list_object_versions(Bucket=BUCKET)
    assert listed["IsTruncated"]
    result = cli("down", "--yes", "--delete-data")
    assert result.exit_code == 0, result
    with pytest.raises(botocore.exceptions.ClientError):
        s3.head_bucket(Bucket=BUCKET)


def test_the_bucket_is_emptied_only_once_the_delivery_stream_is_gone(
    cli, endpoint: str, faults
) -> None:
    """The stream's deletion can still flush a buffer: the bucket waits for it to be gone."""
    up_ok(cli)
    client(endpoint, "firehose").delete_delivery_stream(DeliveryStreamName="test-archive")
    aws = Aws(region=REGION, endpoint_url=endpoint)
    ctx = StackContext(parse_config({"stack": {"name": "test"}}), aws)
    bucket = next(r for r in build_resources(ctx) if r.kind == "s3.bucket")
    # The stream still shows DELETING for three looks (AWS takes a while; moto is instant).
    deleting = {
        "DeliveryStreamDescription": {
            "DeliveryStreamName": "test-archive",
            "DeliveryStreamARN": f"arn:aws:firehose:{REGION}:{ACCOUNT}:deliverystream/test-archive",
            "DeliveryStreamStatus": "DELETING",
            "DeliveryStreamType": "DirectPut",
            "VersionId": "1",
            "Destinations": [],
            "HasMoreDestinations": False,
        }
    }
    still_deleting = faults.respond("firehose", "DescribeDeliveryStream", deleting, times=3)
    faults.calls.clear()
    bucket.delete(aws)
    assert still_deleting.hits == 3
    calls = faults.calls
    looks = [i for i, c in enumerate(calls) if c == ("firehose", "DescribeDeliveryStream")]
    # Three DELETING answers (and the emulator's own, if any), then the look that found it gone.
    assert len(looks) >= 4, calls
    assert looks[-1] < calls.index(("s3", "ListObjectVersions")), calls
    with pytest.raises(botocore.exceptions.ClientError):
        client(endpoint, "s3").head_bucket(Bucket=BUCKET)


def test_the_emulator_refuses_the_lifecycle_a_too_early_config_would_send(
    bare_bucket, endpoint: str
) -> None:
    """What the config refuses, S3 (and so the emulator) refuses too, had it been sent."""
    from iotpipe.config import ArchiveSection, Config
    from iotpipe.resources.s3 import _rule_input, lifecycle_rules

    # Bypass the config's own check, as a config of another tool would.
    config = Config().model_copy(
        update={
            "archive": ArchiveSection.model_construct(
                **{**ArchiveSection().__dict__, "transition_to_ia_days": 7}
            )
        }
    )
    ctx = StackContext(config, Aws(region=REGION, endpoint_url=endpoint))
    rules = [_rule_input(r) for r in lifecycle_rules(ctx)]
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        bare_bucket.put_bucket_lifecycle_configuration(
            Bucket="lifecycle-rules", LifecycleConfiguration={"Rules": rules}
        )
    assert caught.value.response["Error"]["Code"] == "InvalidArgument"
    assert caught.value.response["Error"]["Message"] == (
        "'Days' in Transition action must be greater than or equal to 30 for storageClass "
        "'STANDARD_IA'"
    )
    # The defaults pass.
    default = StackContext(Config(), Aws(region=REGION, endpoint_url=endpoint))
    bare_bucket.put_bucket_lifecycle_configuration(
        Bucket="lifecycle-rules",
        LifecycleConfiguration={"Rules": [_rule_input(r) for r in lifecycle_rules(default)]},
    )
