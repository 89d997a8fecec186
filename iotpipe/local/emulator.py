"""An embedded AWS emulator (moto server) on loopback, with the fixes it needs to stand in for AWS.

moto denies a request whenever a policy statement's condition does not match, so the archive
bucket's TLS-only statement (`Deny ... Bool aws:SecureTransport=false`) would deny every object
request. Clients of the emulator stand for clients of AWS, which always use TLS, so bucket policies
are evaluated as AWS evaluates them for a TLS request. moto also resolves Lambda layers only in the
caller's own account, while every account may use the layers AWS publishes (Powertools).
"""

from __future__ import annotations

import json
import logging
import urllib.request
from typing import Any

from iotpipe.local import aws_rules
from iotpipe.resources.lambda_ import POWERTOOLS_ACCOUNT

_patched = False


def _applies_over_tls(statement: dict[str, Any]) -> bool:
    """False for a statement limited to insecure transport (`Bool aws:SecureTransport=false`)."""
    value = statement.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport")
    if value is None:
        return True
    values = value if isinstance(value, list) else [value]
    return "true" in [str(v).lower() for v in values]


def _patch_moto() -> None:
    # moto treats a statement whose condition does not match as a denial, so the TLS-only
    # statement denies everything; evaluate bucket policies as AWS would for a TLS request.
    global _patched
    if _patched:
        return
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
    _resolve_public_layers()
    _patched = True


def _resolve_public_layers() -> None:
    # moto resolves a layer ARN in the caller's own account only; AWS lets every account use the
    # layers AWS publishes, so accept those as AWS does (the Lambda rules refuse the versions AWS
    # does not publish, as AWS does). moto also lacks GetLayerVersionByArn: answer it for AWS's
    # published versions and for the caller's own layers.
    from moto.awslambda.exceptions import UnknownLayerVersionException
    from moto.awslambda.models import LambdaFunction, lambda_backends
    from moto.awslambda.responses import LambdaResponse

    from iotpipe.local.aws_rules.lambda_ import published_layer_version

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


class Emulator:
    """A moto server on 127.0.0.1 (port 0 picks a free one); use as a context manager."""

    def __init__(self, port: int = 0) -> None:
        from moto.server import ThreadedMotoServer

        _patch_moto()
        aws_rules.install()
        # The HTTP server would log every request; callers report their own progress.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.endpoint_url = ""

    def start(self) -> Emulator:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def reset(self) -> None:
        """Forget every resource: a fresh, empty account."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request) as response:
            response.read()

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
