"""AWS access in one place: sessions, clients, and the retry policy every call goes through.

botocore's own retries are switched off so that one policy (tenacity, below) decides what is
retried: throttling, 5xx, dropped connections, and the named "not yet consistent" errors a caller
passes in (IAM propagation, updates in progress). Everything else fails fast, as an `AwsError`
naming the resource and quoting AWS. An endpoint that cannot be reached, or that answers but is
not AWS, fails in seconds with a message naming the endpoint; a bad endpoint URL is refused
before any client exists.
"""

from __future__ import annotations

import gc
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, TypeVar
from urllib.parse import urlsplit

import boto3
import botocore.exceptions
import botocore.loaders
import botocore.paginate
import botocore.parsers
import botocore.session
import botocore.utils
import jmespath
from botocore.config import Config as BotoConfig
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from iotpipe.errors import AwsError, UsageError

T = TypeVar("T")

THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ProvisionedThroughputExceededException",
        "SlowDown",
        "BandwidthLimitExceeded",
        "PriorRequestNotComplete",
        "TransactionInProgressException",
        "EC2ThrottledException",
    }
)
SERVER_ERROR_CODES = frozenset(
    {"InternalFailure", "InternalError", "InternalServerError", "ServiceUnavailable"}
)
# The HTTP statuses worth another attempt, as botocore's standard retry mode has them
# (retries/standard.py, TransientRetryableChecker): 501 Not Implemented and 505 never change.
TRANSIENT_STATUSES = frozenset({500, 502, 503, 504})


@dataclass(frozen=True)
class Transient:
    """A named error that means "not yet", not "no": retried for a caller that names it."""

    name: str
    code: str
    message_contains: str | None = None

    def matches(self, code: str, message: str) -> bool:
        if code != self.code or is_pass_role_denial(code, message):
            return False
        return self.message_contains is None or self.message_contains.lower() in message.lower()


# The IAM-propagation errors: a role created or changed seconds ago is not yet assumable by the
# service it is passed to. Each text is the one AWS sends, as terraform-provider-aws retries it
# (internal/service/{lambda,firehose,iot,glue}); the services answer with generic codes, so the
# message is what tells "not yet" from "no".
IAM_PROPAGATION: tuple[Transient, ...] = (
    # Lambda CreateFunction / UpdateFunctionConfiguration: "The role defined for the function cannot
    # be assumed by Lambda." and "The provided execution role does not have permissions to call
    # ..." (lambda/function.go, retryFunctionOp).
    Transient("lambda-role", "InvalidParameterValueException", "cannot be assumed by Lambda"),
    Transient(
        "lambda-role-permissions",
        "InvalidParameterValueException",
        "execution role does not have permissions",
    ),
    # Lambda CreateEventSourceMapping: "Cannot access stream arn:... Please ensure the role can
    # perform the GetRecords, GetShardIterator, DescribeStream, and ListStreams Actions on your
    # stream in IAM." (lambda/event_source_mapping.go, retryEventSourceMapping).
    Transient("lambda-esm-access", "InvalidParameterValueException", "ensure the role can perform"),
    # Firehose CreateDeliveryStream / UpdateDestination: "Firehose is unable to assume role
    # arn:... Please check the role provided.", the role's own permissions not yet in force
    # ("... is not authorized to ..."), and "Access was denied when calling Glue. Please ensure
    # that the role specified in the data format conversion configuration has the necessary
    # permissions." (firehose/delivery_stream.go, the retry around CreateDeliveryStream).
    Transient("firehose-role", "InvalidArgumentException", "Firehose is unable to assume role"),
    Transient("firehose-role-access", "InvalidArgumentException", "is not authorized to"),
    Transient("firehose-glue-access", "InvalidArgumentException", "Access was denied"),
    # IoT CreateTopicRule / ReplaceTopicRule: "AWS IoT (iot.amazonaws.com) is unable to assume role
    # (sts:AssumeRole) on resource: arn:...  If the role was just created or updated, please try
    # again in a few seconds." (terraform-provider-aws #33433; the older wording "iot.amazonaws.com
    # is unable to perform: sts:AssumeRole on resource: ..." is in #20467, which added the retry on
    # "sts:AssumeRole" to iot/topic_rule.go). UnauthorizedException is not a propagation error:
    # it is the caller's own missing permission, and fails fast.
    Transient("iot-role", "InvalidRequestException", "sts:AssumeRole"),
    # Glue CreateCrawler / UpdateCrawler: "Service is unable to assume provided role. Please verify
    # role's TrustPolicy.", "com.amazonaws.services.glue.model.AccessDeniedException: You need to
    # enable AWS Security Token Service for this region. . Please verify the role's TrustPolicy.",
    # and the crawler role's permissions not yet in force ("User: arn:aws:sts::...:assumed-role/
    # <role>/AWS-Crawler is not authorized to perform: ..."), all as InvalidInputException
    # (glue/crawler.go, resourceCrawlerCreate).
    Transient("glue-role", "InvalidInputException", "Service is unable to assume provided role"),
    Transient("glue-trust", "InvalidInputException", "Please verify the role's TrustPolicy"),
    Transient("glue-role-access", "InvalidInputException", "is not authorized"),
)


def is_pass_role_denial(code: str, message: str) -> bool:
    """The caller may not pass the role to the service (iam:PassRole): permanent, never retried.

    AWS words it as "User: arn:... is not authorized to perform: iam:PassRole on resource: arn:..."
    under each service's access-denied code (IAM user guide, "I'm not authorized to perform:
    iam:PassRole"); only a change to the caller's own policy fixes it.
    """
    return "iam:passrole" in message.lower()


# Lambda refuses a change while a previous one is still being applied.
UPDATE_IN_PROGRESS: tuple[Transient, ...] = (
    Transient("lambda-update", "ResourceConflictException", None),
    Transient("resource-in-use", "ResourceInUseException", None),
)

_READ_PREFIXES = (
    "Describe",
    "Get",
    "List",
    "Head",
    "Query",
    "Scan",
    "Search",
    "Select",
    "Lookup",
    "Check",
    "Test",
    "Validate",
    "Estimate",
    "BatchGet",
)


def is_mutating(operation_name: str) -> bool:
    """True for an API operation that changes state (by AWS's naming conventions)."""
    return not operation_name.startswith(_READ_PREFIXES)


# Test seam: callables told of every retry or wait sleep (the emulator's clock follows them).
_sleep_hooks: list[Callable[[float], None]] = []


def add_sleep_hook(hook: Callable[[float], None]) -> Callable[[], None]:
    """Call `hook(seconds)` after every sleep of the default retry policy; returns a remover."""
    _sleep_hooks.append(hook)
    return lambda: _sleep_hooks.remove(hook)


def _told(sleep: Callable[[float], None]) -> Callable[[float], None]:
    """`sleep`, then the sleep hooks told of it."""

    def sleep_and_tell(seconds: float) -> None:
        sleep(seconds)
        for hook in list(_sleep_hooks):
            hook(seconds)

    return sleep_and_tell


_sleep = _told(time.sleep)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded both in attempts and in time."""

    base_seconds: float = 0.5
    max_wait_seconds: float = 20.0
    max_attempts: int = 8
    # IAM propagation takes seconds to a couple of minutes; it gets its own, longer, deadline.
    transient_deadline_seconds: float = 120.0
    # What the policy waits with, and the clock its deadlines (retries, `wait_for`) read.
    sleep: Callable[[float], None] = _sleep
    clock: Callable[[], float] = time.monotonic

    def backoff_seconds(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
        return random.uniform(0, min(self.max_wait_seconds, self.base_seconds * 2**attempt))

    def scaled(self, factor: float) -> RetryPolicy:
        return RetryPolicy(
            base_seconds=self.base_seconds * factor,
            max_wait_seconds=self.max_wait_seconds * factor,
            max_attempts=self.max_attempts,
            transient_deadline_seconds=self.transient_deadline_seconds * factor,
            sleep=self.sleep,
            clock=self.clock,
        )

    def on_clock(self, clock: Callable[[], float], sleep: Callable[[float], None]) -> RetryPolicy:
        """This policy on another clock (a test's, which moves only when `sleep` is called): its
        deadlines then count its own waits, not how long the calls took. The sleep hooks are
        told of these sleeps as of real ones."""
        return replace(self, clock=clock, sleep=_told(sleep))


# Test seam: the clock (and sleep) of the default policy; None for the real ones.
_default_clock: tuple[Callable[[], float], Callable[[float], None]] | None = None


def use_clock(clock: Callable[[], float], sleep: Callable[[float], None]) -> Callable[[], None]:
    """Put every `Aws` made from now on without a policy of its own on this clock (see
    `RetryPolicy.on_clock`); returns a remover."""
    global _default_clock
    _default_clock = (clock, sleep)

    def remove() -> None:
        global _default_clock
        _default_clock = None

    return remove


def _default_policy() -> RetryPolicy:
    # Tests and benchmarks shorten every sleep with IOTPIPE_RETRY_SCALE (e.g. 0.001).
    scale = float(os.environ.get("IOTPIPE_RETRY_SCALE", "1"))
    policy = RetryPolicy().scaled(scale)
    return policy if _default_clock is None else policy.on_clock(*_default_clock)


def error_code(exc: BaseException) -> tuple[str, str, int]:
    """(code, message, HTTP status) of a botocore ClientError."""
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return str(err.get("Code", "")), str(err.get("Message", "")), int(status or 0)
    return "", str(exc), 0


# An endpoint that cannot be reached at all (refused, no such host, no answer to the connect):
# the AWS SDKs' "standard" defaults, a 3.1 s connect timeout (botocore's
# sdk-default-configuration.json, connectTimeoutInMillis) and 3 attempts (the standard retry
# mode's default max_attempts), so that a wrong endpoint fails in seconds, not after the full
# backoff meant for throttling.
CONNECT_TIMEOUT_SECONDS = 3.1
CONNECT_ATTEMPTS = 3


def is_connect_failure(exc: BaseException | None) -> bool:
    """No connection could be made (as opposed to one that dropped in the middle of a call)."""
    return isinstance(
        exc, botocore.exceptions.EndpointConnectionError | botocore.exceptions.ConnectTimeoutError
    )


def endpoint_problem(url: str) -> str | None:
    """Why botocore would refuse `url` as an endpoint, or None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return "is not a URL: it must start with http:// or https:// (e.g. http://localhost:4566)"
    try:
        parts.port  # noqa: B018 -- urlsplit checks the port only when it is read
    except ValueError:
        return "has a port that is not a number from 0 to 65535"
    if not botocore.utils.is_valid_uri(url):
        return "does not name a valid host"
    return None


def is_throttling_or_server_error(exc: BaseException) -> bool:
    if is_connect_failure(exc) or isinstance(
        exc, botocore.exceptions.ConnectionClosedError | botocore.exceptions.ReadTimeoutError
    ):
        return True
    if not isinstance(exc, botocore.exceptions.ClientError):
        return False
    code, message, status = error_code(exc)
    if code in THROTTLING_CODES or code in SERVER_ERROR_CODES or status in TRANSIENT_STATUSES:
        return True
    # Kinesis and others say "LimitExceededException: Rate exceeded" for control-plane throttling;
    # the same code for a quota ("shard limit") is permanent.
    return code == "LimitExceededException" and "rate exceeded" in message.lower()


# Parsed service models are the same for every session; parsing them is most of what a new
# client costs (about 0.3 s of CPU for the pipeline's 15 services). Sessions in one process
# (`local serve`, `demo`, the commands a test runs) share them.
_loader_lock = threading.Lock()
_shared_loader: botocore.loaders.Loader | None = None
_models_frozen = False


def _session(profile: str | None, region: str | None) -> boto3.Session:
    global _shared_loader
    with _loader_lock:
        if _shared_loader is None:
            _shared_loader = botocore.loaders.create_loader()
        core = botocore.session.get_session()
        core.register_component("data_loader", _shared_loader)
        session = boto3.Session(botocore_session=core, profile_name=profile, region_name=region)
        # boto3 appends its own data directory to the loader's search path on every session.
        paths = _shared_loader.search_paths
        paths[:] = list(dict.fromkeys(paths))
    return session


def _freeze_service_models() -> None:
    """Keep the garbage collector from scanning the parsed models again, once they are loaded.

    They are hundreds of thousands of long-lived objects: every full collection walked them all
    (about 0.2 s, measured, in the middle of a plan). Frozen once per process, after the first
    complete set of clients; what is created later is collected as usual.
    """
    global _models_frozen
    with _loader_lock:
        if not _models_frozen:
            _models_frozen = True
            gc.freeze()


# Test seam: callables run on every new client (fault injection, call counting, latency).
_client_hooks: list[Callable[[str, Any], None]] = []


def add_client_hook(hook: Callable[[str, Any], None]) -> Callable[[], None]:
    """Run `hook(service_name, client)` on every client created from now on; returns a remover."""
    _client_hooks.append(hook)
    return lambda: _client_hooks.remove(hook)


class Aws:
    """One account/region: cached clients and the retrying `call`."""

    def __init__(
        self,
        *,
        profile: str | None = None,
        region: str | None = None,
        endpoint_url: str | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        try:
            self.session = _session(profile, region)
            if profile is not None and profile not in self.session.available_profiles:
                raise botocore.exceptions.ProfileNotFound(profile=profile)
            self.region = self.session.region_name or region or "us-east-1"
        except botocore.exceptions.ProfileNotFound:
            raise UsageError(
                f"AWS profile {profile!r} not found",
                hint="check --profile against ~/.aws/config",
            ) from None
        for source, url in (
            ("--endpoint-url", endpoint_url),
            ("AWS_ENDPOINT_URL", None if endpoint_url else os.environ.get("AWS_ENDPOINT_URL")),
        ):
            problem = endpoint_problem(url) if url else None
            if problem:
                raise UsageError(f"{source} {url!r} {problem}")
        self.endpoint_url = endpoint_url
        self.policy = policy or _default_policy()
        # Ratio of this policy's sleeps to the production ones (tests shorten everything).
        self._scale = self.policy.base_seconds / RetryPolicy.base_seconds
        self.calls: Counter[str] = Counter()
        self.retries: Counter[str] = Counter()
        self._clients: dict[str, Any] = {}
        self._service_endpoints: dict[str, str] = {}
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._account_id: str | None = None
        # Separate from the engine's pool, so a resource's parallel reads never wait on it.
        self._readers = ThreadPoolExecutor(max_workers=32, thread_name_prefix="aws-read")
        self._boto_config = BotoConfig(
            region_name=self.region,
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=32,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            read_timeout=60,
        )

    def client(self, service: str) -> Any:
        client = self._clients.get(service)
        if client is not None:
            return client
        # One client at a time: a boto3 session is not safe for concurrent client creation.
        # Calls on clients that already exist go on meanwhile (`_count` has its own lock).
        with self._lock:
            client = self._clients.get(service)
            if client is None:
                kwargs: dict[str, Any] = {"config": self._boto_config}
                endpoint = self._service_endpoints.get(service, self.endpoint_url)
                if endpoint is None and service.startswith("timestream"):
                    # Timestream's endpoint discovery would replace AWS_ENDPOINT_URL with AWS's.
                    endpoint = os.environ.get("AWS_ENDPOINT_URL")
                if endpoint:
                    kwargs["endpoint_url"] = endpoint
                try:
                    client = self.session.client(service, **kwargs)
                except (ValueError, botocore.exceptions.UnknownRegionError) as exc:
                    # What botocore refuses to build a client from: a service-specific endpoint
                    # variable (AWS_ENDPOINT_URL_<SERVICE>) or a region it cannot place.
                    raise UsageError(
                        f"cannot use AWS {service} with this configuration: {exc}",
                        hint="check the AWS_ENDPOINT_URL* variables and the region",
                    ) from None
                client.meta.events.register("before-call", self._count)
                for hook in list(_client_hooks):
                    hook(service, client)
                self._clients[service] = client
            return client

    def prewarm(self, first: str, *rest: str) -> None:
        """Create `first` now (the caller needs it next), then `rest` on a background thread.

        Building a client is CPU work (its methods, endpoint rules, handlers); done there it
        overlaps the caller's first calls' network time instead of adding to it.
        """
        self.client(first)

        def build() -> None:
            for service in rest:
                try:
                    self.client(service)
                except Exception:  # the call that needs it will meet the same error and report it
                    return
            _freeze_service_models()

        threading.Thread(target=build, name="aws-prewarm", daemon=True).start()

    def use_endpoint(self, service: str, endpoint_url: str) -> None:
        """Send `service`'s calls to `endpoint_url` (e.g. the account's IoT data endpoint)."""
        with self._lock:
            self._service_endpoints[service] = endpoint_url
            self._clients.pop(service, None)

    def _count(self, model: Any, **_: Any) -> None:
        with self._count_lock:
            self.calls[f"{model.service_model.service_name}:{model.name}"] += 1

    @property
    def mutating_calls(self) -> int:
        return sum(n for key, n in self.calls.items() if is_mutating(key.split(":", 1)[1]))

    @property
    def account_id(self) -> str:
        if self._account_id is None:
            identity = self.call("sts", "get_caller_identity", resource="AWS credentials")
            self._account_id = str(identity["Account"])
        return self._account_id

    @property
    def partition(self) -> str:
        return self.session.get_partition_for_region(self.region)

    def call(
        self,
        service: str,
        operation: str,
        *,
        resource: str,
        retry_on: Iterable[Transient] = (),
        missing: Iterable[str] = (),
        **params: Any,
    ) -> Any:
        """Call `service.operation(**params)` under the retry policy; failures name `resource`.

        An error whose code is in `missing` means "absent" and returns None instead of raising.
        """
        client = self.client(service)
        method = getattr(client, operation)
        transients = tuple(retry_on)
        policy = self.policy

        def retryable(exc: BaseException) -> bool:
            if is_throttling_or_server_error(exc):
                return True
            code, message, _ = error_code(exc)
            return any(t.matches(code, message) for t in transients)

        deadline = policy.transient_deadline_seconds if transients else None
        stop = stop_after_attempt(policy.max_attempts if not transients else 10_000)
        if deadline is not None:
            # On the real clock the deadline counts the calls' own time too, which a shortened
            # policy (tests, benchmarks) does not shorten: a transient always gets its
            # max_attempts.
            stop = stop | (
                _stop_after_seconds(policy.clock, deadline)
                & stop_after_attempt(policy.max_attempts)
            )
        stop = stop | _stop_after_connect_attempts
        retrying = Retrying(
            stop=stop,
            wait=wait_random_exponential(
                multiplier=policy.base_seconds, max=policy.max_wait_seconds
            ),
            retry=retry_if_exception(retryable),
            sleep=policy.sleep,
            reraise=True,
            before_sleep=_note_retry(self, service, operation),
        )
        try:
            return retrying(method, **params)
        except botocore.exceptions.ClientError as exc:
            code, message, status = error_code(exc)
            if code in missing or (status == 404 and "404" in missing):
                return None
            if _not_an_aws_error(exc):
                raise AwsError(
                    f"{client.meta.endpoint_url} is not an AWS endpoint: it answered "
                    f"{service} {api_name(client, operation)} with HTTP {status} and no AWS error",
                    hint=self._endpoint_hint(),
                ) from None
            hint = None
            if is_pass_role_denial(code, message):
                hint = (
                    "the AWS identity running iotpipe needs iam:PassRole on the role named "
                    "above (for the service it is passed to); add it to that identity's policy"
                )
            raise AwsError(
                f"{operation} failed: {code}: {message}", resource=resource, code=code, hint=hint
            ) from exc
        except botocore.exceptions.NoCredentialsError:
            raise AwsError(
                "no AWS credentials found",
                resource=resource,
                hint="configure credentials (aws configure, AWS_PROFILE or --profile)",
            ) from None
        except (
            botocore.exceptions.EndpointConnectionError,
            botocore.exceptions.ConnectTimeoutError,
        ) as exc:
            # About the endpoint, not the resource the call was for (nor its credentials).
            raise AwsError(
                f"cannot connect to {client.meta.endpoint_url} ({CONNECT_ATTEMPTS} attempts): "
                f"{_reason(exc)}",
                hint=self._endpoint_hint(),
            ) from None
        except (botocore.parsers.ResponseParserError, KeyError, TypeError, AttributeError) as exc:
            if not isinstance(exc, botocore.parsers.ResponseParserError) and not _raised_in_parser(
                exc
            ):
                raise
            raise AwsError(
                f"{client.meta.endpoint_url} is not an AWS endpoint: its answer to "
                f"{service} {api_name(client, operation)} is not an AWS response",
                hint=self._endpoint_hint(),
            ) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise AwsError(f"{operation} failed: {exc}", resource=resource) from exc

    def _endpoint_hint(self) -> str:
        if self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL"):
            return (
                "check --endpoint-url (or AWS_ENDPOINT_URL): it must be AWS or a running AWS "
                "emulator (iotpipe local serve)"
            )
        return "check the network connection and the region"

    def wait_for(
        self,
        check: Callable[[], T | None],
        *,
        resource: str,
        what: str,
        timeout_seconds: float | None = None,
    ) -> T:
        """Poll `check` with backoff until it returns something other than None/False."""
        timeout = timeout_seconds if timeout_seconds is not None else max(5.0, 600 * self._scale)
        clock = self.policy.clock
        deadline = clock() + timeout
        attempt = 0
        while True:
            result = check()
            if result is not None and result is not False:
                return result
            if clock() >= deadline:
                raise AwsError(f"timed out after {timeout:.0f} s waiting {what}", resource=resource)
            attempt += 1
            self.policy.sleep(min(self.policy.backoff_seconds(attempt), 10 * self._scale))

    def gather(self, *thunks: Callable[[], Any]) -> list[Any]:
        """Run independent read calls side by side: observing is on every plan's critical path."""
        futures = [self._readers.submit(thunk) for thunk in thunks]
        return [future.result() for future in futures]

    def pages(
        self,
        service: str,
        operation: str,
        *,
        resource: str,
        missing: Iterable[str] = (),
        **params: Any,
    ) -> Iterator[dict[str, Any]]:
        """Yield each page of a paginated operation, each fetched under the retry policy.

        Paging follows botocore's pagination model for the operation: its input and output tokens
        (several for some, e.g. S3's KeyMarker and VersionIdMarker), and the "more results" flag
        where a service has one (S3's IsTruncated). An error whose code is in `missing` (see
        `call`) ends the listing: there is nothing (more) to list.
        """
        client = self.client(service)
        api_name = client.meta.method_to_api_mapping.get(operation, operation)
        config = self._pagination_config(service, api_name)
        first_page_only = _FIRST_PAGE_ONLY.get((service, operation), ())

        def fetch(**kwargs: Any) -> Any:
            if first_page_only and any(kwargs.get(t) for t in config.get("input_token", ())):
                kwargs = {k: v for k, v in kwargs.items() if k not in first_page_only}
            page = self.call(service, operation, resource=resource, missing=missing, **kwargs)
            if page is None:
                raise _Absent
            return page

        model = client.meta.service_model.operation_model(api_name)
        try:
            yield from botocore.paginate.Paginator(fetch, config, model).paginate(**params)
        except _Absent:
            return

    def paginate(
        self,
        service: str,
        operation: str,
        *,
        resource: str,
        key: str | tuple[str, ...] | None = None,
        missing: Iterable[str] = (),
        **params: Any,
    ) -> Iterator[Any]:
        """Yield every item under `key` across all pages (see `pages`).

        `key` defaults to the operation's result key; an operation with several (S3's Contents
        and CommonPrefixes, CloudWatch's MetricAlarms and CompositeAlarms) needs it named.
        """
        if key is None:
            api_name = self.client(service).meta.method_to_api_mapping.get(operation, operation)
            result_keys = self._pagination_config(service, api_name)["result_key"]
            if isinstance(result_keys, list):
                if len(result_keys) != 1:
                    raise TypeError(f"{service}.{operation} has result keys {result_keys}")
                result_keys = result_keys[0]
            key = str(result_keys)
        keys = (key,) if isinstance(key, str) else key
        for page in self.pages(service, operation, resource=resource, missing=missing, **params):
            for name in keys:
                # A result key may be a path into the page (Athena's "ResultSet.Rows").
                items = jmespath.search(name, page) if "." in name else page.get(name)
                yield from items or []

    def _pagination_config(self, service: str, api_name: str) -> dict[str, Any]:
        try:
            config = self.session._session.get_paginator_model(service).get_paginator(api_name)
        except (ValueError, botocore.exceptions.UnknownServiceError) as exc:
            raise TypeError(f"{service}.{api_name} is not paginated: {exc}") from None
        config = dict(config)
        for name in ("input_token", "output_token"):
            if isinstance(config.get(name), str):
                config[name] = [config[name]]
        return config


class _Absent(Exception):
    """A page answered with a `missing` code: the listing ends."""


# Operations that take their filters on the first page only, while botocore's paginator sends
# them on every page. Kinesis ListShards (API reference): StreamName and ExclusiveStartShardId
# "You cannot specify this parameter if you specify the NextToken parameter"; "Don't specify
# StreamName or StreamCreationTimestamp if you specify NextToken because the latter unambiguously
# identifies the stream." The stream's ARN and the shard filter go with the first page too.
_FIRST_PAGE_ONLY: dict[tuple[str, str], tuple[str, ...]] = {
    ("kinesis", "list_shards"): (
        "StreamName",
        "StreamARN",
        "ShardFilter",
        "ExclusiveStartShardId",
        "StreamCreationTimestamp",
    ),
}


class _stop_after_seconds(stop_base):
    """Stop once `seconds` have passed on `clock` since the call began (tenacity's own
    stop_after_delay reads the real clock only)."""

    def __init__(self, clock: Callable[[], float], seconds: float) -> None:
        self.clock = clock
        self.seconds = seconds
        self.started = clock()

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.clock() - self.started >= self.seconds


def _stop_after_connect_attempts(state: RetryCallState) -> bool:
    outcome = state.outcome
    failure = outcome.exception() if outcome is not None and outcome.failed else None
    return is_connect_failure(failure) and state.attempt_number >= CONNECT_ATTEMPTS


def _not_an_aws_error(exc: botocore.exceptions.ClientError) -> bool:
    """An error page (a web server's 404, 501), not an AWS error: AWS names an error code, or,
    where a response has no body (S3's HEAD), sends a request id; botocore then falls back on
    the HTTP status as the code."""
    code, _, status = error_code(exc)
    request_id = exc.response.get("ResponseMetadata", {}).get("RequestId")
    return not code or (code == str(status) and not request_id)


def _raised_in_parser(exc: BaseException) -> bool:
    """Did botocore's response parser fail on an answer of the wrong shape (valid XML or JSON
    that is not what the operation returns)? It raises what the shape's lookup met."""
    frame = None
    tb = exc.__traceback__
    while tb is not None:
        frame, tb = tb.tb_frame, tb.tb_next
    return frame is not None and frame.f_globals.get("__name__") == "botocore.parsers"


def _reason(exc: botocore.exceptions.BotoCoreError) -> str:
    """The socket's own words ("Connection refused"), without urllib3's wrapping."""
    error: BaseException = exc.kwargs.get("error") or exc
    while error.__cause__ is not None:
        error = error.__cause__
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)


def api_name(client: Any, operation: str) -> str:
    """`get_caller_identity` as AWS names it: GetCallerIdentity."""
    return client.meta.method_to_api_mapping.get(operation, operation)


def _note_retry(aws: Aws, service: str, operation: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        aws.retries[f"{service}:{operation}"] += 1

    return before_sleep
