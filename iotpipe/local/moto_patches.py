"""Every change iotpipe makes to moto's own code, and the moto versions it was written for.

Each patch replaces one of moto's internals (a method of a model or response class), so that the
emulator stands in for AWS where moto does not (a TLS-only bucket policy, AWS's public layers),
or so that the local data plane runs what moto cannot (the Kinesis->Lambda trigger, Firehose's
delivery, the IoT rules fed by what is published). Those internals are moto's to rename in any
release: `MOTO_VERSIONS` is the range these patches were written and tested for, and `install`
warns when the installed moto is outside it. The AWS rules moto lacks (quotas, propagation,
deletions that take time) are a layer of their own, iotpipe.local.aws_rules, which wraps moto's
request handling; the emulator runs this check before installing either.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
import warnings
from collections.abc import Callable
from importlib import metadata
from typing import Any

# From 5.2 (included) to 5.3 (excluded): the 5.2.x releases.
MOTO_VERSIONS = ("5.2", "5.3")

_lock = threading.Lock()
_applied: set[str] = set()


class MotoVersionWarning(UserWarning):
    """The installed moto is not one the patches were written for: some may no longer apply."""


def _release(version: str) -> tuple[int, ...]:
    """The release numbers of a version: "5.2.5" -> (5, 2, 5), "5.3.0.dev4" -> (5, 3, 0)."""
    numbers = []
    for part in version.split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        numbers.append(int(digits.group()))
        if digits.group() != part:
            break
    return tuple(numbers)


def installed_moto_version() -> str:
    return metadata.version("moto")


def version_problem(installed: str) -> str | None:
    """Why moto `installed` may not take these patches, or None when it is in MOTO_VERSIONS."""
    low, high = MOTO_VERSIONS
    if _release(low) <= _release(installed) < _release(high):
        return None
    return (
        f"moto {installed} is installed, but iotpipe's patches to moto were written for moto "
        f">={low},<{high}: the emulator may not behave as AWS does; install "
        f"'moto[server]>={low},<{high}'"
    )


def check_moto_version() -> None:
    """Warn (MotoVersionWarning) when the installed moto is outside MOTO_VERSIONS."""
    problem = version_problem(installed_moto_version())
    if problem is not None:
        warnings.warn(MotoVersionWarning(problem), stacklevel=3)


def _once(name: str) -> bool:
    """True the first time `name` is asked for in this process: that patch is applied now."""
    with _lock:
        if name in _applied:
            return False
        _applied.add(name)
        return True


def install() -> None:
    """The emulator's patches (once per process), after checking the version of moto."""
    check_moto_version()
    if _once("tls-bucket-policies"):
        _evaluate_bucket_policies_over_tls()
    if _once("public-layers"):
        _resolve_public_layers()


# The emulator -----------------------------------------------------------------------------------


def _applies_over_tls(statement: dict[str, Any]) -> bool:
    """False for a statement limited to insecure transport (`Bool aws:SecureTransport=false`)."""
    value = statement.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport")
    if value is None:
        return True
    values = value if isinstance(value, list) else [value]
    return "true" in [str(v).lower() for v in values]


def _evaluate_bucket_policies_over_tls() -> None:
    # moto treats a statement whose condition does not match as a denial, so the TLS-only
    # statement denies everything; evaluate bucket policies as AWS would for a TLS request.
    from moto.iam.access_control import IAMPolicy, PermissionResult
    from moto.s3.models import FakeBucket

    def get_permission(bucket: FakeBucket, action: str, resource: str) -> Any:
        if bucket.policy is None:
            return PermissionResult.NEUTRAL
        policy = json.loads(bucket.policy)
        statements = policy.get("Statement", [])
        statements = statements if isinstance(statements, list) else [statements]
        applicable = [s for s in statements if _applies_over_tls(s)]
        if not applicable:
            return PermissionResult.NEUTRAL
        return IAMPolicy(json.dumps({**policy, "Statement": applicable})).is_action_permitted(
            action, resource
        )

    FakeBucket.get_permission = get_permission


def _resolve_public_layers() -> None:
    # moto resolves a layer ARN in the caller's own account only; AWS lets every account use the
    # layers AWS publishes, so accept those as AWS does (the Lambda rules refuse the versions AWS
    # does not publish, as AWS does). moto also lacks GetLayerVersionByArn: answer it for AWS's
    # published versions and for the caller's own layers.
    from moto.awslambda.exceptions import UnknownLayerVersionException
    from moto.awslambda.models import LambdaFunction, lambda_backends
    from moto.awslambda.responses import LambdaResponse

    from iotpipe.local.aws_rules.lambda_ import published_layer_version
    from iotpipe.resources.lambda_ import POWERTOOLS_ACCOUNT

    original = LambdaFunction._get_layers_data

    def get_layers_data(function: LambdaFunction, arns: list[str]) -> list[dict[str, Any]]:
        return [
            {"Arn": arn, "CodeSize": 0}
            if arn.split(":")[4] == POWERTOOLS_ACCOUNT
            else original(function, [arn])[0]
            for arn in arns
        ]

    def get_layer_version_by_arn(response: LambdaResponse) -> str:
        arn = response.querystring.get("Arn", [""])[0]
        published = published_layer_version(arn)
        if published is not None:
            return json.dumps(published)
        backend = lambda_backends[response.current_account][response.region]
        found = backend.layers_versions_by_arn(arn)
        if found is None:
            raise UnknownLayerVersionException([arn])
        return json.dumps(found.get_layer_version())

    LambdaFunction._get_layers_data = get_layers_data
    LambdaResponse.get_layer_version_by_arn = get_layer_version_by_arn


# The local data plane ---------------------------------------------------------------------------


def divert_kinesis_trigger(runs_locally: Callable[[str, str], bool]) -> None:
    """moto's own Kinesis->Lambda trigger, which would start a Docker container per record,
    stands down for each (function ARN, stream ARN) that `runs_locally` names (once per
    process)."""
    if not _once("kinesis-trigger"):
        return
    from moto.awslambda.models import LambdaBackend

    original = LambdaBackend.send_kinesis_message

    def send_kinesis_message(
        backend: Any, function_name: str, kinesis_stream: str, **kw: Any
    ) -> Any:
        if runs_locally(function_name, kinesis_stream):
            return None
        return original(backend, function_name=function_name, kinesis_stream=kinesis_stream, **kw)

    LambdaBackend.send_kinesis_message = send_kinesis_message


def divert_firehose_delivery(take: Callable[[str, str, str, list[bytes]], bool]) -> None:
    """A delivery stream's records go to `take(account, region, stream, records)`, which may
    deliver them itself (True); moto writes the others to S3 (once per process)."""
    if not _once("firehose-delivery"):
        return
    from moto.firehose.models import FirehoseBackend

    original = FirehoseBackend.put_s3_records

    def put_s3_records(
        backend: Any, name: str, version: str, destination: Any, records: list[dict[str, Any]]
    ) -> list[dict[str, str]]:
        data = [_record_bytes(r["Data"]) for r in records]
        if not take(backend.account_id, backend.region_name, name, data):
            return original(backend, name, version, destination, records)
        return [{"RecordId": str(uuid.uuid4())} for _ in records]

    FirehoseBackend.put_s3_records = put_s3_records


def _record_bytes(data: Any) -> bytes:
    return data if isinstance(data, bytes) else str(data).encode()


def listen_to_iot_publish(
    account: str, region: str, listener: Callable[[str, bytes], None]
) -> Callable[[], None]:
    """Tell `listener(topic, payload)` of what is published to moto's IoT data plane in this
    account and region (moto only stores it); returns what puts moto's own publish back."""
    from moto.iotdata.models import IoTDataPlaneBackend

    original = IoTDataPlaneBackend.publish

    def publish(backend: Any, topic: str, payload: bytes) -> None:
        original(backend, topic, payload)
        if (backend.account_id, backend.region_name) == (account, region):
            listener(topic, payload if isinstance(payload, bytes) else str(payload).encode())

    IoTDataPlaneBackend.publish = publish

    def restore() -> None:
        IoTDataPlaneBackend.publish = original

    return restore
