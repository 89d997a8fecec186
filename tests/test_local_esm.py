"""The local Kinesis event source mapping: Lambda's event, batching, partial failures, bisect,
retry limits, record age and the on-failure destination."""

from __future__ import annotations

import base64
import io
import json
import textwrap
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from iotpipe.aws import IAM_PROPAGATION, Aws
from iotpipe.local.esm import KinesisPoller

STREAM = "readings"
FUNCTION = "processor"
QUEUE = "processor-dlq"

HANDLER = textwrap.dedent(
    '''
    """A test function: records say how often they fail ("fail": partial, "boom": raise)."""
    import base64
    import json
    import os
    from collections import Counter

    seen = Counter()


    def lambda_handler(event, context):
        records = []
        for record in event["Records"]:
            data = json.loads(base64.b64decode(record["kinesis"]["data"]))
            records.append((record["kinesis"]["sequenceNumber"], data))
        with open(os.environ["CALLS_FILE"], "a") as calls:
            call = {
                "ns": [d["n"] for _, d in records],
                "remaining_ms": context.get_remaining_time_in_millis(),
                "request_id": context.aws_request_id,
                "event": event,
            }
            calls.write(json.dumps(call) + "\\n")
        print("invoked with", len(records), "records")
        failures = []
        for sequence, data in records:
            seen[data["n"]] += 1
            if seen[data["n"]] <= data.get("boom", 0):
                raise RuntimeError(f"record {data['n']} is poison")
            if seen[data["n"]] <= data.get("fail", 0):
                failures.append({"itemIdentifier": data.get("identifier", sequence)})
        return {"batchItemFailures": failures}
    '''
)


@pytest.fixture
def aws(endpoint: str) -> Aws:
    return Aws(endpoint_url=endpoint, region="us-east-1")


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    package = tmp_path / "code" / "testfn"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "handler.py").write_text(HANDLER)
    return tmp_path / "code"


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("testfn/__init__.py", "")
    return buffer.getvalue()


def make_pipeline(aws: Aws, tmp_path: Path, **mapping: Any) -> tuple[str, str]:
    """A stream, a DLQ and a function with a Kinesis mapping; returns (stream ARN, calls file)."""
    calls = tmp_path / "calls.jsonl"
    aws.call("kinesis", "create_stream", resource="s", StreamName=STREAM, ShardCount=1)
    stream_arn = aws.call("kinesis", "describe_stream_summary", resource="s", StreamName=STREAM)[
        "StreamDescriptionSummary"
    ]["StreamARN"]
    queue_url = aws.call("sqs", "create_queue", resource="q", QueueName=QUEUE)["QueueUrl"]
    queue_arn = aws.call(
        "sqs", "get_queue_attributes", resource="q", QueueUrl=queue_url, AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    role = aws.call(
        "iam",
        "create_role",
        resource="r",
        RoleName="processor",
        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
    )["Role"]["Arn"]
    # A role created a moment ago is not yet assumable by Lambda (the emulator holds it to that).
    aws.call(
        "lambda",
        "create_function",
        resource="f",
        retry_on=IAM_PROPAGATION,
        FunctionName=FUNCTION,
        Runtime="python3.11",
        Role=role,
        Handler="testfn.handler.lambda_handler",
        Code={"ZipFile": _zip()},
        Timeout=30,
        Environment={"Variables": {"CALLS_FILE": str(calls)}},
    )
    settings = {
        "BatchSize": 100,
        "MaximumBatchingWindowInSeconds": 0,
        "StartingPosition": "TRIM_HORIZON",
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
        "BisectBatchOnFunctionError": True,
        "MaximumRetryAttempts": 2,
        "MaximumRecordAgeInSeconds": 3600,
        "DestinationConfig": {"OnFailure": {"Destination": queue_arn}},
        **mapping,
    }
    aws.call(
        "lambda",
        "create_event_source_mapping",
        resource="esm",
        retry_on=IAM_PROPAGATION,
        FunctionName=FUNCTION,
        EventSourceArn=stream_arn,
        **settings,
    )
    return stream_arn, str(calls)


def put(aws: Aws, *records: dict[str, Any], key: str = "dev-1") -> list[str]:
    sequences = []
    for record in records:
        response = aws.call(
            "kinesis",
            "put_record",
            resource="s",
            StreamName=STREAM,
            PartitionKey=key,
            Data=json.dumps(record).encode(),
        )
        sequences.append(response["SequenceNumber"])
    return sequences


def poller(aws: Aws, stream_arn: str, code_dir: Path, **kwargs: Any) -> KinesisPoller:
    return KinesisPoller.from_emulator(
        aws,
        FUNCTION,
        stream_arn,
        code_dir,
        runtime_environment={"AWS_REGION": "us-east-1"},
        **kwargs,
    )


def calls(path: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def dlq_messages(aws: Aws) -> list[dict[str, Any]]:
    url = aws.call("sqs", "get_queue_url", resource="q", QueueName=QUEUE)["QueueUrl"]
    received = aws.call(
        "sqs", "receive_message", resource="q", QueueUrl=url, MaxNumberOfMessages=10
    )
    return [json.loads(m["Body"]) for m in received.get("Messages", [])]


def test_the_handler_gets_lambdas_kinesis_event_and_context(
    aws: Aws, tmp_path: Path, code_dir: Path
) -> None:
    stream_arn, calls_file = make_pipeline(aws, tmp_path)
    (sequence,) = put(aws, {"n": 0, "metrics": {"t": 1.5}})
    local = poller(aws, stream_arn, code_dir)

    assert local.drain() == 1

    (call,) = calls(calls_file)
    (record,) = call["event"]["Records"]
    assert record["eventSource"] == "aws:kinesis"
    assert record["eventName"] == "aws:kinesis:record"
    assert record["eventVersion"] == "1.0"
    assert record["eventID"] == f"shardId-000000000000:{sequence}"
    assert record["eventSourceARN"] == stream_arn
    assert record["awsRegion"] == "us-east-1"
    assert record["invokeIdentityArn"].endswith(":role/processor")
    kinesis = record["kinesis"]
    assert kinesis["partitionKey"] == "dev-1" and kinesis["sequenceNumber"] == sequence
    assert kinesis["kinesisSchemaVersion"] == "1.0"
    assert json.loads(base64.b64decode(kinesis["data"])) == {"n": 0, "metrics": {"t": 1.5}}
    assert abs(kinesis["approximateArrivalTimestamp"] - time.time()) < 60
    assert 0 < call["remaining_ms"] <= 30_000
    assert call["request_id"]
    # The function's output goes to its log, not the terminal.
    assert "invoked with 1 records" in local.runtime.log.getvalue()


def test_batches_follow_the_batch_size(aws: Aws, tmp_path: Path, code_dir: Path) -> None:
    stream_arn, calls_file = make_pipeline(aws, tmp_path, BatchSize=3)
    put(aws, *({"n": n} for n in range(7)))

    poller(aws, stream_arn, code_dir).drain()

    assert [c["ns"] for c in calls(calls_file)] == [[0, 1, 2], [3, 4, 5], [6]]


def test_a_partial_batch_waits_for_the_batching_window(
    aws: Aws, tmp_path: Path, code_dir: Path
) -> None:
    stream_arn, calls_file = make_pipeline(
        aws, tmp_path, BatchSize=10, MaximumBatchingWindowInSeconds=30
    )
    put(aws, {"n": 0}, {"n": 1})
    now = [time.time()]
    local = poller(aws, stream_arn, code_dir, clock=lambda: now[0])

    assert local.poll() == 0
    now[0] += 31
    assert local.poll() == 2
    assert [c["ns"] for c in calls(calls_file)] == [[0, 1]]


def test_a_partial_failure_is_retried_from_the_lowest_failed_sequence_number(
    aws: Aws, tmp_path: Path, code_dir: Path
) -> None:
    stream_arn, calls_file = make_pipeline(aws, tmp_path)
    put(aws, {"n": 0}, {"n": 1}, {"n": 2, "fail": 1}, {"n": 3}, {"n": 4, "fail": 1})
    local = poller(aws, stream_arn, code_dir)

    local.drain()

    assert [c["ns"] for c in calls(calls_file)] == [[0, 1, 2, 3, 4], [2, 3, 4]]
    assert local.stats["records_succeeded"] == 5 and dlq_messages(aws) == []


def test_an_unknown_item_identifier_fails_the_whole_batch(
    aws: Aws, tmp_path: Path, code_dir: Path
) -> None:
    stream_arn, calls_file = make_pipeline(aws, tmp_path, BisectBatchOnFunctionError=False)
    put(aws, {"n": 0}, {"n": 1, "fail": 1, "identifier": "not-a-sequence-number"})

    poller(aws, stream_arn, code_dir).drain()

    assert [c["ns"] for c in calls(calls_file)] == [[0, 1], [0, 1]]


def test_an_error_bisects_the_batch_until_the_poison_record_goes_to_the_dlq(
    aws: Aws, tmp_path: Path, code_dir: Path
) -> None:
    stream_arn, calls_file = make_pipeline(aws, tmp_path, MaximumRetryAttempts=2)
    records = [{"n": n} for n in range(8)]
    records[5]["boom"] = 1000
    sequences = put(aws, *records)
    local = poller(aws, stream_arn, code_dir)

    local.drain()

    assert [c["ns"] for c in calls(calls_file)] == [
        [0, 1, 2, 3, 4, 5, 6, 7],
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [4, 5],
        [4],
        [5],
        [5],
        [5],
        [6, 7],
    ]
    (message,) = dlq_messages(aws)
    assert message["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert message["requestContext"]["functionArn"].endswith(f":function:{FUNCTION}")
    assert message["requestContext"]["approximateInvokeCount"] == 6
    assert message["responseContext"] == {
        "statusCode": 200,
        "executedVersion": "$LATEST",
        "functionError": "Unhandled",
    }
    assert message["version"] == "1.0"
    info = message["KinesisBatchInfo"]
    assert info["shardId"] == "shardId-000000000000"
    assert info["startSequenceNumber"] == info["endSequenceNumber"] == sequences[5]
    assert info["batchSize"] == 1
    assert info["streamArn"] == stream_arn
    assert info["approximateArrivalOfFirstRecord"].endswith("Z")
    assert local.stats["records_succeeded"] == 7 and local.stats["records_discarded"] == 1


def test_without_bisect_the_whole_batch_goes_to_the_dlq_after_the_retries(
    aws: Aws, tmp_path: Path, code_dir: Path
) -> None:
    stream_arn, calls_file = make_pipeline(
        aws, tmp_path, BisectBatchOnFunctionError=False, MaximumRetryAttempts=1
    )
    sequences = put(aws, {"n": 0}, {"n": 1, "boom": 1000}, {"n": 2})

    poller(aws, stream_arn, code_dir).drain()

    assert [c["ns"] for c in calls(calls_file)] == [[0, 1, 2], [0, 1, 2]]
    (message,) = dlq_messages(aws)
    info = message["KinesisBatchInfo"]
    assert (info["startSequenceNumber"], info["endSequenceNumber"]) == (sequences[0], sequences[2])
    assert info["batchSize"] == 3
    assert message["requestContext"]["approximateInvokeCount"] == 2


def test_records_older_than_the_maximum_age_are_discarded_to_the_dlq(
    aws: Aws, tmp_path: Path, code_dir: Path
) -> None:
    stream_arn, calls_file = make_pipeline(aws, tmp_path, MaximumRecordAgeInSeconds=60)
    put(aws, {"n": 0}, {"n": 1})
    later = time.time() + 120
    local = poller(aws, stream_arn, code_dir, clock=lambda: later)

    local.drain()

    assert not Path(calls_file).exists()
    (message,) = dlq_messages(aws)
    assert message["requestContext"]["condition"] == "RecordAgeExceeded"
    assert message["requestContext"]["approximateInvokeCount"] == 0
    assert message["KinesisBatchInfo"]["batchSize"] == 2


def test_latest_starts_after_the_records_already_in_the_stream(
    aws: Aws, tmp_path: Path, code_dir: Path
) -> None:
    stream_arn, calls_file = make_pipeline(aws, tmp_path, StartingPosition="LATEST")
    put(aws, {"n": 0})
    local = poller(aws, stream_arn, code_dir)
    local.start_positions()
    put(aws, {"n": 1})

    local.drain()

    assert [c["ns"] for c in calls(calls_file)] == [[1]]


def test_the_code_directory_wins_over_a_same_named_package_elsewhere_on_the_path(
    aws: Aws, tmp_path: Path, code_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An earlier function's code, with a package of the same name, put first on the path.
    other = tmp_path / "other"
    (other / "testfn").mkdir(parents=True)
    (other / "testfn" / "__init__.py").write_text("")
    (other / "testfn" / "handler.py").write_text("def lambda_handler(event, context):\n    1 / 0\n")
    monkeypatch.syspath_prepend(str(code_dir))
    monkeypatch.syspath_prepend(str(other))
    stream_arn, calls_file = make_pipeline(aws, tmp_path)
    put(aws, {"n": 0, "metrics": {"t": 1.5}})
    assert poller(aws, stream_arn, code_dir).drain() == 1
    assert len(calls(calls_file)) == 1
