"""Property: whatever arrives and however the sinks fail, the handler answers, and every record is
written, quarantined, or reported in batchItemFailures. Sinks are answered in memory (the real
handler, real botocore requests and responses, no network) so a thousand batches run in seconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.processor_events import (
    SERVICES,
    LambdaContext,
    MemoryAws,
    environment,
    kinesis_record,
    now_ms,
    outcomes,
)

from processor import clients, handler, retry  # isort: skip

NOW = now_ms()
HOUR = 3_600_000


@pytest.fixture(scope="module")
def memory() -> Iterator[MemoryAws]:
    aws = MemoryAws()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment("http://sinks.invalid").items():
            patch.setenv(name, value)
        patch.setattr(retry, "BASE_SECONDS", 0.00001)
        clients.CLIENTS.clear()
        for service in SERVICES:
            aws.attach(service, clients.client(service))
        yield aws
        clients.CLIENTS.clear()


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
device_ids = st.one_of(
    st.sampled_from(["pump-1", "valve:7", "meter_3", "dev-A"]),
    st.from_regex(r"[a-zA-Z0-9:_-]{1,12}", fullmatch=True),
    st.text(max_size=6),
    json_leaf,
)
timestamps = st.one_of(
    st.integers(min_value=NOW - 23 * HOUR, max_value=NOW + 10 * 60_000),
    # Late: past the memory store, and past the magnetic store too.
    st.integers(min_value=NOW - 400 * 24 * HOUR, max_value=NOW - 25 * HOUR),
    st.integers(),
    st.just(NOW // 1000),
    st.sampled_from(["2020-01-01T00:00:00Z", "not a time", "2026-01-01T00:00:00"]),
    json_leaf,
)
metric_values = st.one_of(
    st.floats(min_value=-1e6, max_value=1e6),
    st.floats(),
    st.integers(),
    json_leaf,
)
metric_names = st.one_of(
    st.sampled_from(["temperature", "rpm", "kwh", "time", "ts_x"]),
    st.from_regex(r"[A-Za-z][A-Za-z0-9_.-]{0,10}", fullmatch=True),
    st.text(max_size=5),
)


@st.composite
def device_message(draw: st.DrawFn) -> bytes:
    """Mostly near the contract, with every field sometimes wrong, missing or extra."""
    body: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        body["device_id"] = draw(device_ids)
    if draw(st.integers(0, 9)):
        body["ts"] = draw(timestamps)
    if draw(st.booleans()):
        body["seq"] = draw(st.one_of(st.integers(min_value=-2, max_value=2**64), json_leaf))
    if draw(st.integers(0, 9)):
        body["received_at"] = draw(st.one_of(st.just(NOW), st.integers(), json_leaf))
    if draw(st.integers(0, 9)):
        body["metrics"] = draw(
            st.one_of(st.dictionaries(metric_names, metric_values, max_size=4), json_value)
        )
    body.update(draw(st.dictionaries(st.text(max_size=6), json_value, max_size=2)))
    return json.dumps(body, allow_nan=True).encode()


payloads = st.one_of(
    device_message(),
    st.binary(max_size=64),
    json_value.map(lambda v: json.dumps(v).encode()),
)


def _partition_key(data: bytes, seed: int) -> str:
    """What the rule sets: the topic's device id, which the body's `device_id` names too unless
    the device claims to be another (every seventh batch: the partition key differs)."""
    try:
        body = json.loads(data)
    except ValueError:
        return "p"
    claimed = body.get("device_id") if isinstance(body, dict) else None
    if not isinstance(claimed, str) or seed % 7 == 0:
        return "p"
    return claimed


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    batch=st.lists(payloads, max_size=12),
    fault_rate=st.sampled_from([0.0, 0.0, 0.2, 0.6]),
    seed=st.integers(0, 2**16),
)
def test_every_record_is_written_quarantined_or_reported(
    memory: MemoryAws, batch: list[bytes], fault_rate: float, seed: int
) -> None:
    memory.reset(seed, fault_rate)
    event = {"Records": [kinesis_record(data, _partition_key(data, seed)) for data in batch]}

    response = handler.lambda_handler(event, LambdaContext())

    fates = outcomes(event, json.loads(json.dumps(response)), memory.contents())
    assert fates["lost"] == 0, fates
    assert sum(fates.values()) == len(batch)
    if fault_rate == 0:
        assert fates["failed"] == 0
    identifiers = [f["itemIdentifier"] for f in response["batchItemFailures"]]
    assert len(identifiers) == len(set(identifiers)) and all(identifiers)
