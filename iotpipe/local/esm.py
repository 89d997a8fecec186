"""The Kinesis event source mapping, locally: poll the stream, invoke the real handler in-process.

The emulator stores event source mappings but runs none (and its Lambda needs Docker to invoke).
This poller reads the mapping and the function back from the emulator, so it honours what `up`
configured: batch size and batching window, starting position, ReportBatchItemFailures,
BisectBatchOnFunctionError, MaximumRetryAttempts, MaximumRecordAgeInSeconds and the on-failure
SQS destination. It reads each shard in order (a child shard after its parents), builds Lambda's
Kinesis event, and calls the handler from the function's code directory with the function's
environment, as Lambda's Python runtime would.

Semantics, as AWS documents them for Kinesis:
- a batch is invoked when it holds BatchSize records, or the batching window has passed since its
  first record was read (`drain()` invokes at once when the shard is read to its tip: with nothing
  publishing, waiting out the window could not add a record);
- an empty or absent `batchItemFailures` is success; otherwise the batch is retried from the lowest
  reported sequence number (records before it are done); an identifier that is empty or not in the
  batch makes the whole batch a failure;
- a raised error, a timeout or an unserialisable response is a function error: with bisect on, a
  batch of more than one record is split in two and each half retried (splitting does not use up
  retries); otherwise the batch is retried;
- a batch that failed more than MaximumRetryAttempts times (-1: no limit), or records older than
  MaximumRecordAgeInSeconds, are skipped and described to the on-failure destination in Lambda's
  invocation-record shape.
Retries within a shard block the shard, as on AWS: one shard's records stay in order.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import io
import json
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from iotpipe.errors import AwsError, UsageError
from iotpipe.local import moto_patches
from iotpipe.local.environ import scoped_environ

if TYPE_CHECKING:
    from iotpipe.aws import Aws

Handler = Callable[[dict[str, Any], Any], Any]
GET_RECORDS_LIMIT = 10_000

# (function ARN, stream ARN) of the mappings this module runs: the emulator's own trigger, which
# would try to start a Docker container per record, stands down for them.
_local_mappings: set[tuple[str, str]] = set()


def _runs_locally(function_arn: str, stream_arn: str) -> bool:
    return (function_arn, stream_arn) in _local_mappings


@dataclass(frozen=True)
class MappingConfig:
    uuid: str
    function_arn: str
    stream_arn: str
    batch_size: int
    window_seconds: int
    starting_position: str
    report_item_failures: bool
    bisect_on_error: bool
    max_retry_attempts: int
    max_record_age_seconds: int
    on_failure_destination: str | None

    @classmethod
    def from_description(cls, esm: dict[str, Any]) -> MappingConfig:
        """From a GetEventSourceMapping / ListEventSourceMappings entry (AWS's defaults applied)."""
        destination = ((esm.get("DestinationConfig") or {}).get("OnFailure") or {}).get(
            "Destination"
        )
        retries = esm.get("MaximumRetryAttempts")
        age = esm.get("MaximumRecordAgeInSeconds")
        return cls(
            uuid=esm["UUID"],
            function_arn=esm["FunctionArn"],
            stream_arn=esm["EventSourceArn"],
            batch_size=int(esm.get("BatchSize") or 100),
            window_seconds=int(esm.get("MaximumBatchingWindowInSeconds") or 0),
            starting_position=esm.get("StartingPosition") or "LATEST",
            report_item_failures="ReportBatchItemFailures"
            in (esm.get("FunctionResponseTypes") or []),
            bisect_on_error=bool(esm.get("BisectBatchOnFunctionError")),
            max_retry_attempts=-1 if retries is None else int(retries),
            max_record_age_seconds=-1 if age is None else int(age),
            on_failure_destination=destination or None,
        )

    @property
    def stream_name(self) -> str:
        return self.stream_arn.split(":stream/", 1)[1]

    @property
    def region(self) -> str:
        return self.stream_arn.split(":")[3]


@dataclass(frozen=True)
class FunctionConfig:
    name: str
    arn: str
    role: str
    handler: str
    timeout_seconds: int
    memory_mb: int
    environment: dict[str, str]

    @classmethod
    def from_description(cls, config: dict[str, Any]) -> FunctionConfig:
        """From a GetFunctionConfiguration response."""
        return cls(
            name=config["FunctionName"],
            arn=config["FunctionArn"],
            role=config.get("Role", ""),
            handler=config["Handler"],
            timeout_seconds=int(config.get("Timeout") or 3),
            memory_mb=int(config.get("MemorySize") or 128),
            environment=dict((config.get("Environment") or {}).get("Variables") or {}),
        )


class LambdaContext:
    """The context object Lambda's Python runtime passes to a handler."""

    def __init__(self, function: FunctionConfig, deadline: float) -> None:
        self.function_name = function.name
        self.function_version = "$LATEST"
        self.invoked_function_arn = function.arn
        self.memory_limit_in_mb = function.memory_mb
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function.name}"
        self.log_stream_name = f"{datetime.now(UTC):%Y/%m/%d}/[$LATEST]{uuid.uuid4().hex}"
        self._deadline = deadline

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class FunctionRuntime:
    """Loads a handler from a code directory and calls it the way Lambda's runtime does.

    The function's environment (plus what Lambda itself sets) is in `os.environ` while the handler
    module is imported and while it runs, and its stdout/stderr go to `log` (its CloudWatch log
    stream, locally) instead of the terminal.
    """

    def __init__(
        self,
        function: FunctionConfig,
        code_dir: Path,
        *,
        runtime_environment: dict[str, str],
        log: TextIO | None = None,
    ) -> None:
        self.function = function
        self.code_dir = code_dir
        self.environment = {
            **runtime_environment,
            "AWS_LAMBDA_FUNCTION_NAME": function.name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(function.memory_mb),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function.name}",
            "AWS_EXECUTION_ENV": "AWS_Lambda_python3.11",
            "LAMBDA_TASK_ROOT": str(code_dir),
            **function.environment,
        }
        self.log = log or io.StringIO()
        self._handler: Handler | None = None

    @contextlib.contextmanager
    def _inside(self) -> Iterator[None]:
        with (
            scoped_environ(self.environment),
            contextlib.redirect_stdout(self.log),
            contextlib.redirect_stderr(self.log),
        ):
            yield

    def _load(self) -> Handler:
        module_name, _, attribute = self.function.handler.rpartition(".")
        if not module_name:
            raise UsageError(
                f"function {self.function.name}: bad handler {self.function.handler!r}"
            )
        package = module_name.split(".", 1)[0]
        # A fresh import: module-level clients must see this emulator's endpoint and environment.
        for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            del sys.modules[name]
        # First on the path, even if it is already further down: another directory holding a
        # package of the same name (an earlier function's code) must not win.
        code_dir = str(self.code_dir)
        sys.path[:] = [code_dir, *(entry for entry in sys.path if entry != code_dir)]
        try:
            with self._inside():
                module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UsageError(
                f"function {self.function.name}: cannot import {module_name} from "
                f"{self.code_dir.name}/: {exc}",
                hint="the local data plane runs the processor from the project's lambda_src/",
            ) from None
        handler = getattr(module, attribute, None)
        if not callable(handler):
            raise UsageError(f"function {self.function.name}: {self.function.handler} not found")
        return handler

    def invoke(self, event: dict[str, Any]) -> Invocation:
        """Call the handler once; a raised error, a timeout or a bad response is an error."""
        if self._handler is None:
            self._handler = self._load()
        started = time.monotonic()
        context = LambdaContext(self.function, started + self.function.timeout_seconds)
        try:
            with self._inside():
                response = self._handler(event, context)
        except Exception as exc:
            return Invocation(context.aws_request_id, None, f"{type(exc).__name__}: {exc}")
        if time.monotonic() - started > self.function.timeout_seconds:
            return Invocation(context.aws_request_id, None, "Task timed out")
        try:
            # Lambda returns the handler's result serialised as JSON.
            response = json.loads(json.dumps(response))
        except (TypeError, ValueError) as exc:
            return Invocation(context.aws_request_id, None, f"Runtime.MarshalError: {exc}")
        return Invocation(context.aws_request_id, response, None)


@dataclass(frozen=True)
class Invocation:
    request_id: str
    response: Any
    error: str | None


@dataclass(frozen=True)
class StreamRecord:
    shard_id: str
    sequence_number: str
    partition_key: str
    data: bytes
    arrival: float  # epoch seconds

    @property
    def sequence(self) -> int:
        return int(self.sequence_number)


@dataclass
class _Shard:
    shard_id: str
    parents: tuple[str, ...]
    closed: bool
    iterator: str | None = None
    pending: deque[StreamRecord] = field(default_factory=deque)
    first_read: float | None = None
    at_tip: bool = False
    finished: bool = False


@dataclass
class _Work:
    records: list[StreamRecord]
    invokes: int = 0
    failures: int = 0
    last: Invocation | None = None


class KinesisPoller:
    """One event source mapping: a Kinesis stream feeding one function."""

    def __init__(
        self,
        aws: Aws,
        mapping: MappingConfig,
        runtime: FunctionRuntime,
        *,
        clock: Callable[[], float] = time.time,
        retry_pause_seconds: float = 0.0,
    ) -> None:
        self.aws = aws
        self.mapping = mapping
        self.runtime = runtime
        self.clock = clock
        self.retry_pause_seconds = retry_pause_seconds
        self.stats: Counter[str] = Counter()
        self.failure_records: list[dict[str, Any]] = []
        self._shards: dict[str, _Shard] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_emulator(
        cls,
        aws: Aws,
        function_name: str,
        stream_arn: str,
        code_dir: Path,
        *,
        runtime_environment: dict[str, str],
        log: TextIO | None = None,
        **kwargs: Any,
    ) -> KinesisPoller:
        """The mapping from `stream_arn` to `function_name` exactly as the emulator holds it."""
        resource = f"event source mapping {function_name}"
        mappings = list(
            aws.paginate(
                "lambda",
                "list_event_source_mappings",
                resource=resource,
                key="EventSourceMappings",
                FunctionName=function_name,
            )
        )
        found = [m for m in mappings if m.get("EventSourceArn") == stream_arn]
        if not found:
            raise AwsError(
                f"no event source mapping from {stream_arn}",
                resource=resource,
                hint="run `iotpipe up`",
            )
        described = aws.call(
            "lambda",
            "get_function_configuration",
            resource=f"function {function_name}",
            FunctionName=function_name,
        )
        runtime = FunctionRuntime(
            FunctionConfig.from_description(described),
            code_dir,
            runtime_environment=runtime_environment,
            log=log,
        )
        return cls(aws, MappingConfig.from_description(found[0]), runtime, **kwargs)

    def install(self) -> Callable[[], None]:
        """Run this mapping instead of the emulator's own trigger; returns an uninstaller."""
        moto_patches.divert_kinesis_trigger(_runs_locally)
        key = (self.mapping.function_arn, self.mapping.stream_arn)
        _local_mappings.add(key)
        return lambda: _local_mappings.discard(key)

    # Reading the stream -----------------------------------------------------------------------
    def _refresh_shards(self) -> None:
        shards = list(
            self.aws.paginate(
                "kinesis",
                "list_shards",
                resource=f"stream {self.mapping.stream_name}",
                key="Shards",
                StreamName=self.mapping.stream_name,
            )
        )
        for shard in shards:
            if shard["ShardId"] in self._shards:
                continue
            parents = tuple(
                p for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")) if p
            )
            closed = "EndingSequenceNumber" in shard.get("SequenceNumberRange", {})
            self._shards[shard["ShardId"]] = _Shard(shard["ShardId"], parents, closed)

    def _eligible(self, shard: _Shard) -> bool:
        # A child shard is read only once its parents are fully processed (ordering per key).
        return not shard.finished and all(
            self._shards[p].finished for p in shard.parents if p in self._shards
        )

    def _iterator(self, shard: _Shard) -> str:
        if shard.iterator is None:
            # The starting position applies to the shards open when the mapping starts; shards
            # created later (after a reshard) are read from their start.
            position = self.mapping.starting_position if not shard.parents else "TRIM_HORIZON"
            shard.iterator = self.aws.call(
                "kinesis",
                "get_shard_iterator",
                resource=f"stream {self.mapping.stream_name}",
                StreamName=self.mapping.stream_name,
                ShardId=shard.shard_id,
                ShardIteratorType=position,
            )["ShardIterator"]
        return shard.iterator

    def start_positions(self) -> None:
        """Take the starting position now (LATEST means records published from now on)."""
        with self._lock:
            self._refresh_shards()
            for shard in self._shards.values():
                if self._eligible(shard):
                    self._iterator(shard)

    def _read(self, shard: _Shard) -> None:
        """Fill the shard's pending records up to a batch, if the stream has them."""
        while len(shard.pending) < self.mapping.batch_size:
            page = self.aws.call(
                "kinesis",
                "get_records",
                resource=f"stream {self.mapping.stream_name}",
                ShardIterator=self._iterator(shard),
                Limit=GET_RECORDS_LIMIT,
            )
            shard.iterator = page.get("NextShardIterator")
            records = page.get("Records", [])
            for record in records:
                arrival = record["ApproximateArrivalTimestamp"]
                shard.pending.append(
                    StreamRecord(
                        shard.shard_id,
                        record["SequenceNumber"],
                        record["PartitionKey"],
                        record["Data"],
                        arrival.timestamp() if isinstance(arrival, datetime) else float(arrival),
                    )
                )
            if records and shard.first_read is None:
                shard.first_read = self.clock()
            if not records or shard.iterator is None:
                shard.at_tip = True
                if shard.closed and not shard.pending:
                    shard.finished = True
                return
            shard.at_tip = False

    # Invoking ---------------------------------------------------------------------------------
    def poll(self, *, draining: bool = False) -> int:
        """Read every shard once and invoke the batches that are ready; returns records done."""
        with self._lock:
            self._refresh_shards()
            done = 0
            for shard in list(self._shards.values()):
                if not self._eligible(shard):
                    continue
                self._read(shard)
                while shard.pending and self._ready(shard, draining):
                    batch = [
                        shard.pending.popleft()
                        for _ in range(min(self.mapping.batch_size, len(shard.pending)))
                    ]
                    shard.first_read = self.clock() if shard.pending else None
                    self._process(batch)
                    done += len(batch)
                if shard.closed and shard.at_tip and not shard.pending:
                    shard.finished = True
            return done

    def _ready(self, shard: _Shard, draining: bool) -> bool:
        if len(shard.pending) >= self.mapping.batch_size or self.mapping.window_seconds == 0:
            return True
        if draining and shard.at_tip:
            return True
        first = shard.first_read if shard.first_read is not None else self.clock()
        return self.clock() - first >= self.mapping.window_seconds

    def drain(self, *, timeout_seconds: float = 300.0) -> int:
        """Poll until every shard is read to its tip with nothing pending; returns records done."""
        deadline = time.monotonic() + timeout_seconds
        total = 0
        while True:
            total += self.poll(draining=True)
            with self._lock:
                idle = all(
                    s.finished or (s.at_tip and not s.pending) for s in self._shards.values()
                )
            if idle:
                return total
            if time.monotonic() > deadline:
                raise AwsError(
                    f"not caught up after {timeout_seconds:.0f} s",
                    resource=f"event source mapping {self.mapping.stream_name}",
                )

    def _process(self, batch: list[StreamRecord]) -> None:
        queue: deque[_Work] = deque([_Work(batch)])
        while queue:
            work = queue.popleft()
            work.records = self._drop_expired(work)
            if not work.records:
                continue
            invocation = self.runtime.invoke(self._event(work.records))
            work.invokes += 1
            work.last = invocation
            self.stats["invocations"] += 1
            outcome = self._outcome(work.records, invocation)
            if outcome is None:
                self.stats["records_succeeded"] += len(work.records)
                continue
            complete_failure, index = outcome
            if not complete_failure:
                # Partial failure: the records before the lowest failed one are done.
                self.stats["records_succeeded"] += index
                self.stats["partial_failures"] += 1
                work = _Work(work.records[index:], work.invokes, work.failures, invocation)
            else:
                self.stats["function_errors"] += 1
                if self.mapping.bisect_on_error and len(work.records) > 1:
                    half = len(work.records) // 2
                    self.stats["bisections"] += 1
                    first, second = work.records[:half], work.records[half:]
                    queue.appendleft(_Work(second, work.invokes, work.failures, invocation))
                    queue.appendleft(_Work(first, work.invokes, work.failures, invocation))
                    continue
            work.failures += 1
            if 0 <= self.mapping.max_retry_attempts < work.failures:
                self._on_failure(work.records, "RetryAttemptsExhausted", work)
                continue
            self.stats["retries"] += 1
            queue.appendleft(work)
            self._pause(work.failures)

    def _pause(self, failures: int) -> None:
        if self.retry_pause_seconds:
            time.sleep(min(self.retry_pause_seconds * 2 ** (failures - 1), 30.0))

    def _outcome(
        self, records: list[StreamRecord], invocation: Invocation
    ) -> tuple[bool, int] | None:
        """None on success, else (whole batch failed, index of the lowest failed record)."""
        if invocation.error is not None:
            return True, 0
        response = invocation.response
        if not self.mapping.report_item_failures or not isinstance(response, dict):
            return None
        failures = response.get("batchItemFailures")
        if not failures:
            return None
        positions = {r.sequence_number: i for i, r in enumerate(records)}
        indexes = []
        for failure in failures:
            identifier = failure.get("itemIdentifier") if isinstance(failure, dict) else None
            if not identifier or identifier not in positions:
                # AWS treats an empty or unknown identifier as a failure of the whole batch.
                self.stats["invalid_item_failures"] += 1
                return True, 0
            indexes.append(positions[identifier])
        return False, min(indexes)

    def _drop_expired(self, work: _Work) -> list[StreamRecord]:
        limit = self.mapping.max_record_age_seconds
        if limit < 0:
            return work.records
        now = self.clock()
        expired = [r for r in work.records if now - r.arrival > limit]
        if expired:
            self._on_failure(expired, "RecordAgeExceeded", work)
        return [r for r in work.records if now - r.arrival <= limit]

    def _event(self, records: list[StreamRecord]) -> dict[str, Any]:
        mapping, function = self.mapping, self.runtime.function
        return {
            "Records": [
                {
                    "kinesis": {
                        "kinesisSchemaVersion": "1.0",
                        "partitionKey": r.partition_key,
                        "sequenceNumber": r.sequence_number,
                        "data": base64.b64encode(r.data).decode(),
                        "approximateArrivalTimestamp": round(r.arrival, 3),
                    },
                    "eventSource": "aws:kinesis",
                    "eventVersion": "1.0",
                    "eventID": f"{r.shard_id}:{r.sequence_number}",
                    "eventName": "aws:kinesis:record",
                    "invokeIdentityArn": function.role,
                    "awsRegion": mapping.region,
                    "eventSourceARN": mapping.stream_arn,
                }
                for r in records
            ]
        }

    # The on-failure destination ---------------------------------------------------------------
    def _on_failure(self, records: list[StreamRecord], condition: str, work: _Work) -> None:
        self.stats["records_discarded"] += len(records)
        record = failure_record(
            records,
            condition=condition,
            function_arn=self.mapping.function_arn,
            stream_arn=self.mapping.stream_arn,
            invokes=work.invokes,
            last=work.last,
            now=self.clock(),
        )
        self.failure_records.append(record)
        destination = self.mapping.on_failure_destination
        if destination is None:
            return
        if ":sqs:" not in destination:
            raise UsageError(
                f"on-failure destination {destination} does not run locally",
                hint="the local data plane delivers to SQS queues",
            )
        account, queue_name = destination.split(":")[4], destination.split(":")[5]
        resource = f"queue {queue_name}"
        url = self.aws.call(
            "sqs",
            "get_queue_url",
            resource=resource,
            QueueName=queue_name,
            QueueOwnerAWSAccountId=account,
        )["QueueUrl"]
        self.aws.call(
            "sqs", "send_message", resource=resource, QueueUrl=url, MessageBody=json.dumps(record)
        )
        self.stats["failure_destination_messages"] += 1


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def failure_record(
    records: list[StreamRecord],
    *,
    condition: str,
    function_arn: str,
    stream_arn: str,
    invokes: int,
    last: Invocation | None,
    now: float,
) -> dict[str, Any]:
    """Lambda's invocation record for discarded Kinesis records (what the DLQ receives)."""
    if last is None:
        response = {"statusCode": 0, "executedVersion": "", "functionError": ""}
    else:
        response = {"statusCode": 200, "executedVersion": "$LATEST"}
        if last.error is not None:
            response["functionError"] = "Unhandled"
    return {
        "requestContext": {
            "requestId": last.request_id if last else str(uuid.uuid4()),
            "functionArn": function_arn,
            "condition": condition,
            "approximateInvokeCount": invokes,
        },
        "responseContext": response,
        "version": "1.0",
        "timestamp": _iso(now),
        "KinesisBatchInfo": {
            "shardId": records[0].shard_id,
            "startSequenceNumber": records[0].sequence_number,
            "endSequenceNumber": records[-1].sequence_number,
            "approximateArrivalOfFirstRecord": _iso(records[0].arrival),
            "approximateArrivalOfLastRecord": _iso(records[-1].arrival),
            "batchSize": len(records),
            "streamArn": stream_arn,
        },
    }
