"""Fault injection through botocore's `before-send` hook: AWS-shaped error responses, latency.

The responses are encoded in each service's own wire protocol, so botocore parses them exactly as
it would parse AWS's, and the code under test meets the same `ClientError`s.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.awsrequest import AWSResponse, HTTPHeaders

from iotpipe.aws import add_client_hook, is_mutating


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any):
        yield self._body


def _cbor_text(text: str) -> bytes:
    data = text.encode()
    if len(data) < 24:
        return bytes([0x60 + len(data)]) + data
    if len(data) < 256:
        return bytes([0x78, len(data)]) + data
    return bytes([0x79]) + len(data).to_bytes(2, "big") + data


def error_response(protocol: str, url: str, code: str, message: str, status: int) -> AWSResponse:
    headers = HTTPHeaders()
    if protocol in ("json", "rest-json"):
        body = json.dumps({"__type": code, "message": message}).encode()
        headers["x-amzn-ErrorType"] = code
        headers["Content-Type"] = "application/x-amz-json-1.1"
    elif protocol == "smithy-rpc-v2-cbor":
        body = b"\xa2" + _cbor_text("__type") + _cbor_text(code)
        body += _cbor_text("message") + _cbor_text(message)
        headers["smithy-protocol"] = "rpc-v2-cbor"
        headers["Content-Type"] = "application/cbor"
    elif protocol in ("query", "ec2"):
        body = (
            f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>"
            f"<Message>{message}</Message></Error><RequestId>injected</RequestId></ErrorResponse>"
        ).encode()
        headers["Content-Type"] = "text/xml"
    else:  # rest-xml (S3)
        body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
        headers["Content-Type"] = "application/xml"
    return AWSResponse(url, status, headers, _Raw(body))


def success_response(url: str, body: dict[str, Any]) -> AWSResponse:
    headers = HTTPHeaders()
    headers["Content-Type"] = "application/x-amz-json-1.1"
    return AWSResponse(url, 200, headers, _Raw(json.dumps(body).encode()))


THROTTLE = {
    "json": ("ThrottlingException", 400),
    "rest-json": ("TooManyRequestsException", 429),
    "query": ("Throttling", 400),
    "rest-xml": ("SlowDown", 503),
    "smithy-rpc-v2-cbor": ("Throttling", 400),
}


@dataclass
class Rule:
    """Answer matching calls with an error; `times` bounds how often (None: always)."""

    match: Callable[[str, str], bool]
    code: str | None = None
    message: str = "injected"
    status: int = 400
    times: int | None = None
    probability: float = 1.0
    hits: int = 0
    # A crafted success body (JSON protocols) instead of an error: states the emulator never takes.
    body: dict[str, Any] | None = None


@dataclass
class Faults:
    """Installed on every client the code under test creates."""

    seed: int = 0
    latency_seconds: float = 0.0
    rules: list[Rule] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)
    injected: int = 0
    crash_at_mutating: int | None = None
    _mutating_seen: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def install(self) -> Callable[[], None]:
        return add_client_hook(self._attach)

    def _attach(self, service: str, client: Any) -> None:
        model = client.meta.service_model
        protocol = getattr(model, "resolved_protocol", None) or model.protocol

        def before_send(request: Any, **kwargs: Any) -> AWSResponse | None:
            operation = request.context.get("operation_name") or _operation_from(kwargs)
            if self.latency_seconds:
                time.sleep(self.latency_seconds)
            with self._lock:
                self.calls.append((service, operation))
                if is_mutating(operation):
                    self._mutating_seen += 1
                    if self._mutating_seen == self.crash_at_mutating:
                        self.injected += 1
                        return error_response(
                            protocol, request.url, "InjectedCrash", "injected crash", 400
                        )
                for rule in self.rules:
                    if rule.times is not None and rule.hits >= rule.times:
                        continue
                    if not rule.match(service, operation):
                        continue
                    if self._random.random() >= rule.probability:
                        continue
                    rule.hits += 1
                    self.injected += 1
                    if rule.body is not None:
                        return success_response(request.url, rule.body)
                    code, status = rule.code, rule.status
                    if code is None:
                        code, status = THROTTLE.get(protocol, ("Throttling", 400))
                    return error_response(protocol, request.url, code, rule.message, status)
            return None

        client.meta.events.register("before-send", before_send)

    # Convenience constructors ----------------------------------------------------------------
    def throttle(self, probability: float) -> Faults:
        self.rules.append(Rule(match=lambda s, o: True, probability=probability))
        return self

    def fail(
        self,
        service: str,
        operation: str,
        code: str,
        message: str = "injected",
        *,
        status: int = 400,
        times: int | None = 1,
    ) -> Rule:
        rule = Rule(
            match=lambda s, o: s == service and o == operation,
            code=code,
            message=message,
            status=status,
            times=times,
        )
        self.rules.append(rule)
        return rule

    def respond(
        self, service: str, operation: str, body: dict[str, Any], *, times: int | None = 1
    ) -> Rule:
        """Answer matching calls (of a JSON-protocol service) with `body` as a 200 response."""
        rule = Rule(match=lambda s, o: s == service and o == operation, body=body, times=times)
        self.rules.append(rule)
        return rule

    @property
    def mutating_calls(self) -> list[tuple[str, str]]:
        return [(s, o) for s, o in self.calls if is_mutating(o)]


def _operation_from(kwargs: dict[str, Any]) -> str:
    event = kwargs.get("event_name", "")
    return event.rsplit(".", 1)[-1]
