"""AWS's rules, held by the emulator: behaviours moto lacks that this pipeline depends on.

moto accepts much that AWS refuses (policy sizes, a name deleted a moment ago, a change while a
function is still being created) and finishes at once what AWS finishes later (deletions,
detaches, IAM propagation). Each rule here restores one such behaviour for one API operation,
with the AWS page it comes from, so a rehearsal on the emulator fails where AWS would.

A rule is a function registered for a (service, operation) pair:

- `@before("sqs", "CreateQueue")` runs before moto handles the request; it may raise
  `AwsRefusal(code, message)`, which the emulator answers in the service's own wire protocol.
- `@after("kinesis", "DeleteStream")` runs after a successful reply; it may record what happened
  (a deletion time) or return a changed reply body (a status AWS shows and moto does not).
- `@answer("dynamodb", "BatchExecuteStatement")` replies in moto's place, for an operation moto
  does not emulate as AWS runs it; it returns the reply body (or raises `AwsRefusal`).

Time-based rules read `clock`, which the tests control. It follows real time, and the code's own
waits: `IOTPIPE_RETRY_SCALE` shortens every retry and wait sleep of the code (tests set 0.01), and
each such sleep moves the clock on by the time it stands for (a 0.6 s sleep at 0.01 is AWS's
60 s), so AWS's delays keep their proportion to the code's waits without slowing the suite.
`advance()` jumps it forward.

Every rule's state belongs to one emulated account; `reset()` forgets it with the account.
`docs/AWS-FIDELITY.md` lists the rules and the differences that remain.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from moto.core.exceptions import ServiceException

# The services whose rules live in this package, one module each.
RULE_MODULES = (
    "iam",
    "iot",
    "sqs",
    "kinesis",
    "dynamodb",
    "firehose",
    "lambda_",
    "glue",
    "s3",
    "kms",
)


class AwsRefusal(ServiceException):
    """AWS's answer to a request it refuses: error code, message and HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.http_status_code = status


class Clock:
    """Emulated seconds: real time (times `speed`), plus whatever `advance` (and the code's
    sleeps) added. An emulator in a process of its own, serving clients whose waits are
    shortened, runs faster instead (`run_faster`)."""

    def __init__(self) -> None:
        self._origin = time.monotonic()
        self._offset = 0.0
        self._speed = 1.0
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._offset + (time.monotonic() - self._origin) * self._speed

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += seconds

    def run_faster(self, speed: float) -> None:
        with self._lock:
            now = time.monotonic()
            self._offset += (now - self._origin) * self._speed
            self._origin, self._speed = now, speed


clock = Clock()


def _follow_code_sleeps() -> None:
    """A sleep of the code shortened by IOTPIPE_RETRY_SCALE stands for a longer one on AWS."""
    from iotpipe.aws import add_sleep_hook

    try:
        scale = float(os.environ.get("IOTPIPE_RETRY_SCALE", "1") or "1")
    except ValueError:
        scale = 1.0
    if 0 < scale < 1:
        add_sleep_hook(lambda seconds: clock.advance(seconds / scale - seconds))


@dataclass
class Call:
    """One request as a rule sees it: botocore names for the operation and its parameters."""

    service: str
    operation: str
    params: dict[str, Any]
    account_id: str
    region: str

    @property
    def state(self) -> dict[str, Any]:
        """This account and region's state, shared by the rules of one service."""
        return _state[(self.account_id, self.region, self.service)]


BeforeRule = Callable[[Call], None]
# Returns a replacement reply body, or None to keep moto's.
AfterRule = Callable[[Call, dict[str, Any]], dict[str, Any] | None]
# Returns the reply body; moto does not handle the request.
AnswerRule = Callable[[Call], dict[str, Any]]


def _rule_table() -> defaultdict[tuple[str, str], list[Any]]:
    return defaultdict(list)


@dataclass
class Registry:
    before: dict[tuple[str, str], list[BeforeRule]] = field(default_factory=_rule_table)
    after: dict[tuple[str, str], list[AfterRule]] = field(default_factory=_rule_table)
    answers: dict[tuple[str, str], AnswerRule] = field(default_factory=dict)
    enabled: bool = True

    def watches(self, key: tuple[str, str]) -> bool:
        return self.enabled and (key in self.before or key in self.after or key in self.answers)


registry = Registry()
_state: dict[tuple[str, str, str], dict[str, Any]] = defaultdict(dict)
_state_lock = threading.RLock()


def before(service: str, *operations: str) -> Callable[[BeforeRule], BeforeRule]:
    def register(rule: BeforeRule) -> BeforeRule:
        for operation in operations:
            registry.before[(service, operation)].append(rule)
        return rule

    return register


def after(service: str, *operations: str) -> Callable[[AfterRule], AfterRule]:
    def register(rule: AfterRule) -> AfterRule:
        for operation in operations:
            registry.after[(service, operation)].append(rule)
        return rule

    return register


def answer(service: str, operation: str) -> Callable[[AnswerRule], AnswerRule]:
    def register(rule: AnswerRule) -> AnswerRule:
        registry.answers[(service, operation)] = rule
        return rule

    return register


def reset() -> None:
    """Forget every rule's state (the emulator forgot every resource)."""
    with _state_lock:
        _state.clear()


def lock() -> threading.RLock:
    """One lock for the rules' state: the emulator serves requests on many threads."""
    return _state_lock


_installed = False


def install() -> None:
    """Route every emulator request through the rules (once per process)."""
    global _installed
    if _installed:
        return
    for name in RULE_MODULES:
        importlib.import_module(f"{__name__}.{name}")
    _follow_code_sleeps()
    from moto.core.responses import BaseResponse

    original = BaseResponse.call_action

    def call_action(response: BaseResponse) -> Any:
        service = response.boto3_service_name
        try:
            operation = response._get_action()
        except Exception:
            return original(response)
        key = (service, operation)
        if not operation or not registry.watches(key):
            return original(response)
        call = Call(
            service,
            operation,
            _parameters(response, operation),
            response.current_account,
            response.region,
        )
        try:
            for rule in registry.before.get(key, []):
                rule(call)
        except AwsRefusal as refusal:
            return _refuse(response, refusal)
        answering = registry.answers.get(key)
        if answering is not None:
            try:
                reply = answering(call)
            except AwsRefusal as refusal:
                return _refuse(response, refusal)
            headers, body = response._enrich_response(response.response_headers, json.dumps(reply))
            return 200, headers, body
        status, headers, body = original(response)
        rules = registry.after.get(key, [])
        if rules and 200 <= int(status) < 300:
            reply = _json(body)
            for rule in rules:
                changed = rule(call, reply)
                if changed is not None:
                    reply = changed
                    body = json.dumps(changed)
        return status, headers, body

    BaseResponse.call_action = call_action
    _forget_with_the_accounts()
    _installed = True


def _forget_with_the_accounts() -> None:
    """A reset of the emulator (`/moto-api/reset`, from any process) resets the rules' state."""
    from moto.moto_api._internal.models import MotoAPIBackend

    original = MotoAPIBackend.reset

    def reset_too(backend: MotoAPIBackend) -> None:
        original(backend)
        reset()

    MotoAPIBackend.reset = reset_too


def _parameters(response: Any, operation: str) -> dict[str, Any]:
    """The request's parameters, parsed by the service's botocore model (as moto does)."""
    from moto.core.parse import PROTOCOL_PARSERS
    from moto.core.request import determine_request_protocol
    from moto.core.utils import get_service_model

    request = response.normalized_request
    service_model = get_service_model(response.boto3_service_name)
    # moto 5.2.6 passes the request itself, earlier 5.2 releases its content type.
    takes = list(inspect.signature(determine_request_protocol).parameters)[1]
    protocol = determine_request_protocol(
        service_model, request if takes == "request" else request.content_type
    )
    parser = PROTOCOL_PARSERS[protocol](service_model.operation_model(operation))
    parsed = parser.parse(
        {
            "method": request.method,
            "values": request.values,
            "headers": request.headers,
            "body": request.data,
            "url_path": request.path,
            "url_params": getattr(response, "uri_match", None) or {},
        }
    )
    return dict(parsed)


def _refuse(response: Any, refusal: AwsRefusal) -> Any:
    from moto.core.responses import ActionResult
    from moto.core.utils import get_service_model

    with warnings.catch_warnings():
        # moto warns of a code its model lacks; AWS sends such codes too.
        warnings.simplefilter("ignore", UserWarning)
        status, headers, body = response.serialized(ActionResult(refusal))
    # The status comes from the service model's error shape; for a code the model lacks (Lambda's
    # AccessDeniedException, say) it is the refusal's own.
    if refusal.code not in get_service_model(response.boto3_service_name).shape_names:
        status = refusal.http_status_code
    headers["status"] = str(status)
    return status, headers, body


def _json(body: Any) -> dict[str, Any]:
    try:
        value = json.loads(body) if body else {}
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
