"""Helpers for the processor's tests: Lambda's Kinesis event shape, a Lambda context, the sinks.

`lambda_src` is put on `sys.path` here, as Lambda puts the function's code root on it, so that
`processor.handler` imports exactly as the runtime imports it.
"""

from __future__ import annotations

import base64
import itertools
import json
import random
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from boto3.dynamodb.types import TypeDeserializer
from botocore.awsrequest import AWSResponse, HTTPHeaders

LAMBDA_SRC = Path(__file__).resolve().parent.parent / "lambda_src"
if str(LAMBDA_SRC) not in sys.path:
    sys.path.insert(0, str(LAMBDA_SRC))

from processor import clients, retry  # noqa: E402  (after lambda_src is on sys.path)

from tests import permission_audit  # noqa: E402

EXAMPLE_CONFIG = Path(__file__).resolve().parent.parent / "iotpipe" / "config.example.toml"

REGION = "us-east-1"
ACCOUNT = "123456789012"
STACK = "test"
TABLE = "test-device-state"
TS_DATABASE = "test"
TS_TABLE = "readings"
DELIVERY_STREAM = "test-archive"
BUCKET = f"test-archive-{ACCOUNT}-{REGION}"
MAGNETIC_RETENTION_DAYS = 365
STREAM_ARN = f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/test-readings"
# A shard's sequence numbers are 56-digit decimals that grow with arrival.
_FIRST_SEQUENCE = 49_590_338_271_490_256_608_559_692_538_361_571_095_921_575_989_136_588_898
_sequence = itertools.count(_FIRST_SEQUENCE, 7)


def environment(endpoint: str, *, timeseries: bool = True) -> dict[str, str]:
    """The function's environment exactly as `up` sets it, pointed at the emulator."""
    return {
        "STACK_NAME": STACK,
        "DEVICE_STATE_TABLE": TABLE,
        "DEVICE_STATE_TTL_DAYS": "30",
        "TIMESERIES_DATABASE": TS_DATABASE if timeseries else "",
        "TIMESERIES_TABLE": TS_TABLE if timeseries else "",
        "TIMESERIES_MEMORY_RETENTION_HOURS": "24",
        "TIMESERIES_MAGNETIC_STORE_WRITES": "true",
        "TIMESERIES_MAGNETIC_RETENTION_DAYS": str(MAGNETIC_RETENTION_DAYS),
        "ARCHIVE_DELIVERY_STREAM": DELIVERY_STREAM,
        "ARCHIVE_BUCKET": BUCKET,
        "QUARANTINE_PREFIX": "quarantine/",
        "POWERTOOLS_SERVICE_NAME": "iotpipe-processor",
        "POWERTOOLS_METRICS_NAMESPACE": "iotpipe",
        "LOG_LEVEL": "INFO",
        "AWS_ENDPOINT_URL": endpoint,
    }


def create_sinks(endpoint: str) -> None:
    """The resources the processor writes to, as `up` would leave them (names from the contract)."""

    def aws(service: str) -> Any:
        return boto3.client(service, endpoint_url=endpoint, region_name=REGION)

    aws("dynamodb").create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "device_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "device_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    timestream = aws("timestream-write")
    timestream.create_database(DatabaseName=TS_DATABASE)
    timestream.create_table(
        DatabaseName=TS_DATABASE,
        TableName=TS_TABLE,
        RetentionProperties={
            "MemoryStoreRetentionPeriodInHours": 24,
            "MagneticStoreRetentionPeriodInDays": MAGNETIC_RETENTION_DAYS,
        },
        MagneticStoreWriteProperties={"EnableMagneticStoreWrites": True},
    )
    aws("s3").create_bucket(Bucket=BUCKET)
    aws("firehose").create_delivery_stream(
        DeliveryStreamName=DELIVERY_STREAM,
        DeliveryStreamType="DirectPut",
        ExtendedS3DestinationConfiguration={
            "RoleARN": f"arn:aws:iam::{ACCOUNT}:role/test-firehose",
            "BucketARN": f"arn:aws:s3:::{BUCKET}",
            "Prefix": "readings/",
            "ErrorOutputPrefix": "firehose-errors/",
        },
    )


def now_ms() -> int:
    return int(time.time() * 1000)


def message(
    device_id: str,
    *,
    ts: int | str | None = None,
    metrics: dict[str, Any] | None = None,
    seq: int | None = None,
    received_at: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A device message as the IoT rule forwards it: plus device_id and received_at."""
    body: dict[str, Any] = {
        "ts": now_ms() - 1_000 if ts is None else ts,
        "metrics": {"temperature": 21.5} if metrics is None else metrics,
        **extra,
    }
    if seq is not None:
        body["seq"] = seq
    body["device_id"] = device_id
    body["received_at"] = now_ms() if received_at is None else received_at
    return body


def kinesis_record(data: bytes | dict[str, Any], partition_key: str = "") -> dict[str, Any]:
    """One record of a Lambda Kinesis event, in the shape Lambda delivers it."""
    if isinstance(data, dict):
        partition_key = partition_key or str(data.get("device_id", "unknown"))
        data = json.dumps(data).encode()
    sequence = str(next(_sequence))
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": partition_key or "unknown",
            "sequenceNumber": sequence,
            "data": base64.b64encode(data).decode(),
            "approximateArrivalTimestamp": round(time.time() - 0.5, 3),
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"shardId-000000000000:{sequence}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": f"arn:aws:iam::{ACCOUNT}:role/test-processor",
        "awsRegion": REGION,
        "eventSourceARN": STREAM_ARN,
    }


def kinesis_event(*items: bytes | dict[str, Any]) -> dict[str, Any]:
    return {"Records": [kinesis_record(item) for item in items]}


@dataclass
class LambdaContext:
    """What Lambda's Python runtime passes as `context`, with a controllable deadline."""

    remaining_ms: int = 60_000
    function_name: str = "test-processor"
    function_version: str = "$LATEST"
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:test-processor"
    memory_limit_in_mb: int = 256
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    _started: float = field(default_factory=time.monotonic)

    def get_remaining_time_in_millis(self) -> int:
        elapsed = (time.monotonic() - self._started) * 1000
        return max(0, int(self.remaining_ms - elapsed))


def failed_sequence_numbers(response: dict[str, Any]) -> set[str]:
    return {failure["itemIdentifier"] for failure in response["batchItemFailures"]}


# --- Wire-level answers for the processor's own clients --------------------------------------


class _Body:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any):
        yield self._data


def json_response(url: str, body: dict[str, Any]) -> AWSResponse:
    """A JSON-protocol response; a body with "__type" is an error, as AWS encodes one."""
    headers = HTTPHeaders()
    headers["Content-Type"] = "application/x-amz-json-1.1"
    status = 200
    if "__type" in body:
        headers["x-amzn-ErrorType"] = body["__type"]
        status = 400
    return AWSResponse(url, status, headers, _Body(json.dumps(body).encode()))


def request_params(request: Any) -> dict[str, Any]:
    body = request.body
    if hasattr(body, "read"):
        position = body.tell()
        data = body.read()
        body.seek(position)
        body = data
    if isinstance(body, str):
        body = body.encode()
    return json.loads(body or b"{}")


Answer = Callable[[dict[str, Any], Callable[[dict[str, Any]], dict[str, Any]]], dict[str, Any]]


@dataclass
class Interceptor:
    """Answers chosen calls of the processor's clients with crafted, AWS-shaped responses.

    An answer gets the call's parameters and `forward(params)`, which sends (possibly fewer)
    parameters to the emulator and returns its JSON answer: so a partial failure can really write
    the part AWS accepted and report the rest as AWS would (UnprocessedItems, FailedPutCount,
    RejectedRecords), states the emulator itself never produces.
    """

    answers: list[tuple[str, str, Answer, list[int]]] = field(default_factory=list)

    def answer(self, service: str, operation: str, answer: Answer, *, times: int = 1) -> None:
        self.answers.append((service, operation, answer, [times]))

    def attach(self, service: str, client: Any) -> None:
        def before_send(request: Any, event_name: str = "", **_: Any) -> AWSResponse | None:
            operation = event_name.rsplit(".", 1)[-1]
            for svc, op, answer, left in self.answers:
                if svc == service and op == operation and left[0] > 0:
                    left[0] -= 1
                    return json_response(
                        request.url, answer(request_params(request), _forwarder(request))
                    )
            return None

        client.meta.events.register("before-send", before_send)


def _forwarder(request: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def forward(params: dict[str, Any]) -> dict[str, Any]:
        headers = {
            k: v.decode() if isinstance(v, bytes) else v
            for k, v in request.headers.items()
            if k.lower() != "content-length"
        }
        outgoing = urllib.request.Request(
            request.url, data=json.dumps(params).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(outgoing) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read() or b"{}")

    return forward


# --- What the sinks hold ---------------------------------------------------------------------


@dataclass
class SinkContents:
    state: dict[str, dict[str, Any]]  # device_id -> item
    points: list[dict[str, Any]]  # Timestream records as stored by the emulator
    archive: list[dict[str, Any]]  # archive lines
    quarantine: list[dict[str, Any]]  # quarantine lines
    quarantine_keys: list[str]


def read_sinks(endpoint: str) -> SinkContents:
    def aws(service: str) -> Any:
        return boto3.client(service, endpoint_url=endpoint, region_name=REGION)

    deserializer = TypeDeserializer()
    state = {}
    for item in aws("dynamodb").scan(TableName=TABLE)["Items"]:
        plain = {key: deserializer.deserialize(value) for key, value in item.items()}
        state[plain["device_id"]] = plain
    # moto keeps Timestream records but its query API does not return them; its own model API does.
    with urllib.request.urlopen(f"{endpoint}/moto-api/data.json") as response:
        models = json.loads(response.read())
    points = [
        record
        for table in models.get("timestreamwrite", {}).get("TimestreamTable", [])
        if table["db_name"] == TS_DATABASE and table["name"] == TS_TABLE
        for record in table["records"]
    ]
    s3 = aws("s3")

    def objects(prefix: str) -> list[tuple[str, bytes]]:
        listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
        return [
            (o["Key"], s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()) for o in listing
        ]

    def lines(blobs: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
        return [json.loads(line) for _, blob in blobs for line in blob.splitlines() if line]

    quarantined = objects("quarantine/")
    return SinkContents(
        state=state,
        points=points,
        archive=lines(objects("readings/")),
        quarantine=lines(quarantined),
        quarantine_keys=[key for key, _ in quarantined],
    )


def epoch_ms(ts: int | str) -> int:
    if isinstance(ts, int):
        return ts
    return int(datetime.fromisoformat(ts).timestamp() * 1000)


def outcomes(
    event: dict[str, Any],
    response: dict[str, Any],
    sinks: SinkContents,
    *,
    timeseries: bool = True,
    timeseries_oldest_ms: int | None = None,
    late: Collection[str] = (),
) -> dict[str, int]:
    """Each input record's fate: reported failed, quarantined, or written to every sink.

    A reading older than the time-series store takes (`timeseries_oldest_ms`, by default the
    magnetic retention of `environment()`), or one the store refused as such (sequence numbers in
    `late`), is written when the archive and the device state have it. A record that is none of
    these was lost ("lost" must stay 0).
    """
    if timeseries_oldest_ms is None:
        timeseries_oldest_ms = now_ms() - MAGNETIC_RETENTION_DAYS * 86_400_000
    failed = failed_sequence_numbers(response)
    quarantined = {line["sequence_number"] for line in sinks.quarantine}
    archived = {(line["device_id"], line["ts"], line["received_at"]) for line in sinks.archive}
    points = {
        (p["Dimensions"][0]["Value"], int(p["Time"]), int(p["Version"])) for p in sinks.points
    }
    fates = {"failed": 0, "quarantined": 0, "written": 0, "lost": 0}
    for record in event["Records"]:
        sequence = record["kinesis"]["sequenceNumber"]
        if sequence in failed:
            fates["failed"] += 1
            continue
        if sequence in quarantined:
            fates["quarantined"] += 1
            continue
        try:
            message = json.loads(base64.b64decode(record["kinesis"]["data"]))
            ts = epoch_ms(message["ts"])
            key = (message["device_id"], ts, message["received_at"])
        except (ValueError, KeyError, TypeError):
            fates["lost"] += 1  # neither reported nor quarantined, yet not a reading
            continue
        state = sinks.state.get(message["device_id"])
        written = (
            key in archived
            and (not timeseries or key in points or ts < timeseries_oldest_ms or sequence in late)
            and state is not None
            and state["ts"] >= ts
        )
        fates["written" if written else "lost"] += 1
    return fates


# --- Fixtures and helpers shared by the processor's tests ---------------------------------

SERVICES = ("dynamodb", "timestream-write", "firehose", "s3")


@pytest.fixture(name="sinks")
def sinks_fixture(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The sinks created in the emulator, the function's environment set, fresh clients."""
    for name, value in environment(endpoint).items():
        monkeypatch.setenv(name, value)
    create_sinks(endpoint)
    monkeypatch.setattr(retry, "BASE_SECONDS", 0.001)
    clients.CLIENTS.clear()
    with permission_audit.recording_processor(clients, monkeypatch) as actions:
        yield endpoint
    clients.CLIENTS.clear()
    # Every call the handler made is one its role allows (the role is built with time series on,
    # as the handler runs here).
    allowed = permission_audit.processor_role_actions(EXAMPLE_CONFIG)
    assert actions <= allowed, f"the processor's role lacks {sorted(actions - allowed)}"


@pytest.fixture(name="intercept")
def intercept_fixture(sinks: str, faults: Any) -> Interceptor:
    """The processor's clients, with the fault injector and the crafted-answer layer on them."""
    interceptor = Interceptor()
    for service in SERVICES:
        client = clients.client(service)
        # Faults installs itself through iotpipe's client hook; the processor builds its own.
        faults._attach(service, client)
        interceptor.attach(service, client)
    return interceptor


def calls(faults: Any, operation: str) -> int:
    return sum(1 for _, op in faults.calls if op == operation)


def emf_metrics(output: str) -> dict[str, float]:
    """The metric values of the last embedded-metric-format blob the handler printed."""
    blobs = [json.loads(line) for line in output.splitlines() if line.startswith('{"_aws"')]
    assert blobs, "no EMF output"
    last = blobs[-1]
    names = [m["Name"] for m in last["_aws"]["CloudWatchMetrics"][0]["Metrics"]]
    # Powertools writes each value as a list of the values added under that name.
    return {name: sum(last[name]) if isinstance(last[name], list) else last[name] for name in names}


# --- An in-memory AWS for the processor's clients (property tests) ---------------------------


@dataclass
class MemoryAws:
    """Answers the processor's sink calls from memory, on the wire, with seeded faults.

    Requests go through botocore (serialised, signed, parsed back) but never leave the process.
    With `fault_rate` > 0 a call may be throttled, and each key or item of a batch may be left
    unprocessed, fail (Firehose) or be rejected (Timestream, retryable or not) as AWS would.
    """

    rng: random.Random = field(default_factory=random.Random)
    fault_rate: float = 0.0
    state: dict[str, dict[str, Any]] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)
    archive: list[bytes] = field(default_factory=list)
    objects: dict[str, bytes] = field(default_factory=dict)

    def reset(self, seed: int, fault_rate: float) -> None:
        self.rng = random.Random(seed)
        self.fault_rate = fault_rate
        self.state.clear()
        self.points.clear()
        self.archive.clear()
        self.objects.clear()

    def attach(self, service: str, client: Any) -> None:
        def before_send(request: Any, event_name: str = "", **_: Any) -> AWSResponse:
            operation = event_name.rsplit(".", 1)[-1]
            if self._fails(0.3):
                code = "SlowDown" if service == "s3" else "ThrottlingException"
                return self._error(service, request.url, code)
            if service == "s3":
                return self._put_object(request)
            answer = getattr(self, f"_{operation}")(request_params(request))
            return json_response(request.url, answer)

        client.meta.events.register("before-send", before_send)

    def contents(self) -> SinkContents:
        deserializer = TypeDeserializer()
        state = {
            device: {key: deserializer.deserialize(value) for key, value in item.items()}
            for device, item in self.state.items()
        }

        def lines(blobs: list[bytes]) -> list[dict[str, Any]]:
            return [json.loads(line) for blob in blobs for line in blob.splitlines() if line]

        return SinkContents(
            state=state,
            points=list(self.points),
            archive=lines(self.archive),
            quarantine=lines(list(self.objects.values())),
            quarantine_keys=list(self.objects),
        )

    def _fails(self, scale: float = 1.0) -> bool:
        return self.fault_rate > 0 and self.rng.random() < self.fault_rate * scale

    def _BatchExecuteStatement(self, params: dict[str, Any]) -> dict[str, Any]:
        """The processor's two PartiQL forms: UPDATE ... WHERE device_id = ? AND ts <= ?, and
        INSERT ... VALUE {...}; a statement may be throttled on its own, as AWS answers."""
        responses = []
        for request in params["Statements"]:
            statement, values = request["Statement"], list(request["Parameters"])
            if self._fails():
                error = {"Code": "ProvisionedThroughputExceeded", "Message": "injected"}
                responses.append({"Error": error})
                continue
            if statement.startswith("INSERT"):
                item = dict(zip(re.findall(r"'([a-z_]+)': \?", statement), values, strict=True))
                if item["device_id"]["S"] in self.state:
                    responses.append({"Error": {"Code": "DuplicateItem", "Message": "exists"}})
                else:
                    self.state[item["device_id"]["S"]] = item
                    responses.append({})
                continue
            names = re.findall(r'SET "([a-z_]+)" = \?', statement)
            removed = re.findall(r'REMOVE "([a-z_]+)"', statement)
            device, newest = values[len(names)]["S"], values[len(names) + 1]
            stored = self.state.get(device)
            if stored is None or int(stored["ts"]["N"]) > int(newest["N"]):
                error = {"Code": "ConditionalCheckFailed", "Message": "condition"}
                if stored is not None:
                    error["Item"] = stored
                responses.append({"Error": error})
                continue
            changed = {k: v for k, v in stored.items() if k not in removed}
            changed.update(zip(names, values, strict=False))
            self.state[device] = changed
            responses.append({})
        return {"Responses": responses}

    def _WriteRecords(self, params: dict[str, Any]) -> dict[str, Any]:
        rejected = []
        for index, record in enumerate(params["Records"]):
            if self._fails():
                reason = self.rng.choice(
                    ["Internal error, please try again.", "Measure value is out of range."]
                )
                rejected.append({"RecordIndex": index, "Reason": reason})
            else:
                self.points.append(record)
        if rejected:
            return {"__type": "RejectedRecordsException", "RejectedRecords": rejected}
        total = len(params["Records"])
        return {"RecordsIngested": {"Total": total, "MemoryStore": total, "MagneticStore": 0}}

    def _PutRecordBatch(self, params: dict[str, Any]) -> dict[str, Any]:
        responses = []
        for record in params["Records"]:
            if self._fails():
                responses.append({"ErrorCode": "ServiceUnavailableException", "ErrorMessage": "x"})
            else:
                self.archive.append(base64.b64decode(record["Data"]))
                responses.append({"RecordId": uuid.uuid4().hex})
        failed = sum(1 for r in responses if "ErrorCode" in r)
        return {"FailedPutCount": failed, "Encrypted": False, "RequestResponses": responses}

    def _put_object(self, request: Any) -> AWSResponse:
        body = request.body
        if hasattr(body, "read"):
            body = body.read()
        key = urllib.parse.unquote(urllib.parse.urlsplit(request.url).path).split("/", 2)[2]
        self.objects[key] = body if isinstance(body, bytes) else str(body).encode()
        headers = HTTPHeaders()
        headers["ETag"] = '"0"'
        return AWSResponse(request.url, 200, headers, _Body(b""))

    def _error(self, service: str, url: str, code: str) -> AWSResponse:
        if service == "s3":
            headers = HTTPHeaders()
            headers["Content-Type"] = "application/xml"
            body = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
            return AWSResponse(url, 503, headers, _Body(body))
        return json_response(url, {"__type": code, "message": "injected"})
