"""Simulated sensor readings, and publishing them as devices do.

`ReadingGenerator` makes realistic series per device: temperature following the day (plus noise),
humidity moving against it, a battery draining slowly, one reading a minute ending at the present
(never in the future: the processor quarantines a reading stamped ahead of its clock); it can mix
in malformed messages (bad JSON, missing metrics, non-finite values, timestamps in the future) for
the quarantine to catch. A device may send its readings one a message, or several a message
(`{"readings": [...]}`, the message contract's batched shape); malformed ones always go alone.

Publishers:
- `MqttPublisher`, for AWS: one MQTT connection per device over TLS on port 8883, authenticated
  by the device's own certificate and key written by `iotpipe devices register`, client id = the
  thing name (the device policy allows nothing else), QoS 1 (each publish waits for PUBACK).
- `HttpPublisher`, for an emulator endpoint: the IoT data plane's HTTPS Publish API, which the
  emulator (and `iotpipe local serve`'s rules engine behind it) receives.
This module does not depend on the local data plane.
"""

from __future__ import annotations

import json
import math
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from iotpipe.errors import AwsError, UsageError
from iotpipe.permissions import Grant, reads

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.naming import Names

DAY_MS = 86_400_000
MALFORMED_KINDS = ("bad_json", "missing_metrics", "non_finite", "future_ts")


@dataclass(frozen=True)
class Device:
    """A registered device as `devices register` left it in `<dir>/<thing>/device.json`."""

    thing_name: str
    client_id: str
    topic: str
    endpoint: str
    port: int
    certificate: Path
    private_key: Path
    certificate_id: str | None = None

    @classmethod
    def load(cls, directory: Path) -> Device:
        path = directory / "device.json"
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                thing_name=info["thing_name"],
                client_id=info.get("client_id") or info["thing_name"],
                topic=info["topic"],
                endpoint=info["endpoint"],
                port=int(info.get("port", 8883)),
                certificate=directory / info.get("certificate_file", "certificate.pem.crt"),
                private_key=directory / info.get("private_key_file", "private.pem.key"),
                certificate_id=info.get("certificate_id"),
            )
        except (OSError, ValueError, KeyError) as exc:
            raise UsageError(
                f"cannot read device file {path}: {exc}",
                hint="register devices with `iotpipe devices register --out-dir DIR`",
            ) from None


def load_devices(devices_dir: Path) -> list[Device]:
    """Every device under `devices_dir` (one sub-directory per thing with a device.json)."""
    if not devices_dir.is_dir():
        raise UsageError(
            f"devices directory {devices_dir} not found",
            hint="register devices with `iotpipe devices register --out-dir DIR`",
        )
    devices = [
        Device.load(d) for d in sorted(devices_dir.iterdir()) if (d / "device.json").is_file()
    ]
    if not devices:
        raise UsageError(
            f"no device.json under {devices_dir}",
            hint="register devices with `iotpipe devices register --out-dir DIR`",
        )
    return devices


def active_devices(aws: Aws, devices: list[Device]) -> tuple[list[Device], list[str]]:
    """The devices whose certificate is ACTIVE, and why each other one is left out: a revoked
    or deleted device's credentials are never used."""
    usable: list[Device] = []
    left_out: list[str] = []
    for device in devices:
        reply = None
        if device.certificate_id:
            reply = aws.call(
                "iot",
                "describe_certificate",
                resource=f"device {device.thing_name}",
                missing=("ResourceNotFoundException",),
                certificateId=device.certificate_id,
            )
        status = (reply or {}).get("certificateDescription", {}).get("status", "deleted")
        if status == "ACTIVE":
            usable.append(device)
        else:
            left_out.append(f"{device.thing_name} (certificate {status.lower()})")
    return usable, left_out


@dataclass(frozen=True)
class Reading:
    thing: str
    payload: bytes
    malformed: str | None = None  # which kind of malformed message, or None
    ts: int = 0  # epoch ms the payload is stamped with (for a malformed one, the intended time)


class ReadingGenerator:
    """Deterministic (seeded) sensor series for a fleet, one reading per device per interval."""

    def __init__(
        self,
        things: list[str],
        *,
        seed: int = 7,
        start_ms: int | None = None,
        interval_ms: int = 60_000,
        malformed_every: int = 0,
    ) -> None:
        if not things:
            raise UsageError("no devices to simulate")
        self.things = things
        self.random = random.Random(seed)
        self.interval_ms = interval_ms
        self.malformed_every = malformed_every
        now = int(time.time() * 1000)
        self.start_ms = start_ms if start_ms is not None else now
        # Each device has its own climate and battery.
        self._base = {t: self.random.uniform(17.0, 24.0) for t in things}
        self._battery = {t: self.random.uniform(3.7, 4.2) for t in things}
        self._seq = dict.fromkeys(things, 0)

    def _metrics(self, thing: str, ts: int) -> dict[str, float]:
        hour_angle = 2 * math.pi * ((ts % DAY_MS) / DAY_MS - 0.375)  # warmest mid-afternoon
        temperature = self._base[thing] + 4.0 * math.sin(hour_angle) + self.random.gauss(0, 0.3)
        humidity = 55.0 - 2.5 * (temperature - self._base[thing]) + self.random.gauss(0, 1.5)
        self._battery[thing] = max(3.0, self._battery[thing] - self.random.uniform(0.0, 0.002))
        return {
            "temperature": round(temperature, 2),
            "humidity": round(min(100.0, max(0.0, humidity)), 1),
            "battery": round(self._battery[thing], 3),
        }

    def readings(self, count: int) -> Iterator[Reading]:
        """`count` readings, devices in turn, time advancing one interval per round.

        The series ends no later than now: a start that would put the last round in the future
        is moved back (and `start_ms` says where the series really starts)."""
        rounds = -(-count // len(self.things))
        latest_start = int(time.time() * 1000) - max(0, rounds - 1) * self.interval_ms
        self.start_ms = min(self.start_ms, latest_start)
        for i in range(count):
            thing = self.things[i % len(self.things)]
            ts = self.start_ms + (i // len(self.things)) * self.interval_ms
            self._seq[thing] += 1
            message = {"ts": ts, "seq": self._seq[thing], "metrics": self._metrics(thing, ts)}
            if self.malformed_every and i % self.malformed_every == self.malformed_every - 1:
                kind = MALFORMED_KINDS[(i // self.malformed_every) % len(MALFORMED_KINDS)]
                yield Reading(thing, malformed_payload(kind, message), kind, ts)
            else:
                yield Reading(thing, json.dumps(message).encode(), ts=ts)


def malformed_payload(kind: str, message: dict[str, Any]) -> bytes:
    """A message a faulty device could send, of one of MALFORMED_KINDS."""
    if kind == "bad_json":
        return json.dumps(message).encode()[:-7]  # cut off mid-document
    if kind == "missing_metrics":
        return json.dumps({"ts": message["ts"], "seq": message["seq"]}).encode()
    if kind == "non_finite":
        # 1e999 is valid JSON text, but no finite double.
        return (
            json.dumps(message)
            .replace(f'"temperature": {message["metrics"]["temperature"]}', '"temperature": 1e999')
            .encode()
        )
    if kind == "future_ts":
        return json.dumps({**message, "ts": message["ts"] + 30 * DAY_MS}).encode()
    raise UsageError(f"unknown malformed kind {kind!r}")


class Publisher(Protocol):
    def publish(self, thing: str, topic: str, payload: bytes) -> None: ...

    def close(self) -> None: ...


class Pacer:
    """Spaces calls `1/rate` seconds apart (no limit when rate is None)."""

    def __init__(self, rate: float | None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.sleep = sleep
        self._next = time.monotonic()

    def wait(self) -> None:
        if not self.interval:
            return
        delay = self._next - time.monotonic()
        if delay > 0:
            self.sleep(delay)
        self._next = max(self._next, time.monotonic()) + self.interval


class HttpPublisher:
    """IoT data-plane Publish over HTTPS (SigV4): what an emulator endpoint receives."""

    def __init__(self, aws: Aws) -> None:
        self.aws = aws

    def publish(self, thing: str, topic: str, payload: bytes) -> None:
        self.aws.call(
            "iot-data", "publish", resource=f"device {thing}", topic=topic, qos=1, payload=payload
        )

    def close(self) -> None:
        return None


class MqttPublisher:
    """MQTT over TLS with each device's certificate: how devices reach AWS IoT Core."""

    def __init__(
        self,
        devices: list[Device],
        *,
        ca_file: Path | None = None,
        timeout_seconds: float = 30.0,
    ) -> None:
        try:
            import paho.mqtt.client as mqtt
        except ImportError:
            raise UsageError(
                "publishing over MQTT needs paho-mqtt",
                hint="pip install 'iotpipe[mqtt]'",
            ) from None
        self._mqtt = mqtt
        self.devices = {d.thing_name: d for d in devices}
        self.ca_file = ca_file
        self.timeout = timeout_seconds
        self._clients: dict[str, Any] = {}

    def _context(self, device: Device) -> ssl.SSLContext:
        # Without --ca-file the system store verifies the endpoint (it holds Amazon Root CA 1).
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        try:
            context.load_cert_chain(str(device.certificate), str(device.private_key))
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(
                f"device {device.thing_name}: cannot load its certificate/key: {exc}"
            ) from None
        return context

    def _client(self, thing: str) -> Any:
        client = self._clients.get(thing)
        if client is not None:
            return client
        device = self.devices.get(thing)
        if device is None:
            raise UsageError(f"device {thing} has no device.json")
        mqtt = self._mqtt
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=device.client_id,
            protocol=mqtt.MQTTv311,
        )
        client.tls_set_context(self._context(device))
        connected = threading.Event()
        outcome: dict[str, Any] = {}

        def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            outcome["reason"] = reason
            connected.set()

        def on_disconnect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
            # The broker closed the connection before CONNACK (e.g. it refused the certificate).
            outcome.setdefault("reason", reason)
            connected.set()

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        try:
            client.connect(device.endpoint, device.port, keepalive=60)
        except (OSError, ssl.SSLError) as exc:
            raise AwsError(
                f"cannot connect to {device.endpoint}:{device.port}: {exc}",
                resource=f"device {thing}",
                hint="check the endpoint in device.json and that the certificate is active",
            ) from None
        client.loop_start()
        reason = outcome.get("reason") if connected.wait(self.timeout) else None
        if reason is None or reason.is_failure or not client.is_connected():
            client.loop_stop()
            raise AwsError(
                f"MQTT connection refused: {reason or 'timed out'}",
                resource=f"device {thing}",
                hint="is the certificate active and attached to the device policy?",
            )
        self._clients[thing] = client
        return client

    def publish(self, thing: str, topic: str, payload: bytes) -> None:
        info = self._client(thing).publish(topic, payload, qos=1)
        info.wait_for_publish(self.timeout)
        if not info.is_published():
            raise AwsError(
                f"no PUBACK within {self.timeout:.0f} s on {topic}",
                resource=f"device {thing}",
                hint="the device policy may not allow publishing to this topic",
            )

    def close(self) -> None:
        for client in self._clients.values():
            client.disconnect()
            client.loop_stop()
        self._clients.clear()


@dataclass
class SimulationResult:
    sent: int = 0  # readings, each in a message the endpoint acknowledged (PUBACK, HTTP answer)
    messages: int = 0  # messages published: fewer than `sent` when devices batch readings
    malformed: int = 0
    seconds: float = 0.0
    # Readings stamped after the moment they were sent: the processor would quarantine them.
    future: int = 0
    # Each device's newest well-formed reading sent (epoch ms), to look for in its device state.
    newest: dict[str, int] = field(default_factory=dict)
    # Devices whose device state shows that newest reading, where the pipeline could be asked.
    confirmed: int | None = None
    confirm_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "sent": self.sent,
            "messages": self.messages,
            "malformed": self.malformed,
            "future": self.future,
            "seconds": round(self.seconds, 2),
            "devices": len(self.newest),
        }
        if self.confirmed is not None:
            found["devices_confirmed"] = self.confirmed
        return found

    def summary(self, target: str) -> str:
        """One line: what was sent, what the endpoint took, and what the pipeline showed."""
        valid = self.sent - self.malformed
        batched = f" in {self.messages:,} messages" if self.messages != self.sent else ""
        line = (
            f"sent {self.sent:,} readings{batched} in {self.seconds:.1f} s; {target} accepted all"
        )
        if self.malformed:
            line += f" ({self.malformed:,} malformed on purpose, for the quarantine)"
        line += f"; {'none' if not self.future else f'{self.future:,}'} stamped in the future"
        if self.confirmed is None:
            return line + f"; {valid:,} well-formed readings for the processor"
        line += (
            f"; device state shows the newest reading of {self.confirmed} of "
            f"{len(self.newest)} device(s) after {self.confirm_seconds:.0f} s"
        )
        if self.confirmed < len(self.newest):
            line += " (the rest are not processed yet, or were refused: see the quarantine)"
        return line


def simulate(
    devices: list[Device],
    publisher: Publisher,
    *,
    readings: int,
    rate: float | None = None,
    seed: int = 7,
    on_sent: Callable[[int], None] | None = None,
    readings_per_message: int = 1,
) -> SimulationResult:
    """Publish `readings` readings from `devices`, at most `rate` per second, each device
    `readings_per_message` of them in one message (its last message may hold fewer)."""
    by_name = {d.thing_name: d for d in devices}
    generator = ReadingGenerator(list(by_name), seed=seed)
    pacer = Pacer(rate)
    result = SimulationResult()
    waiting: dict[str, list[Reading]] = {}
    started = time.monotonic()

    def send(thing: str, batch: list[Reading]) -> None:
        if readings_per_message == 1 or batch[0].malformed is not None:
            payload = batch[0].payload
        else:
            payload = json.dumps({"readings": [json.loads(r.payload) for r in batch]}).encode()
        publisher.publish(thing, by_name[thing].topic, payload)
        result.messages += 1
        for reading in batch:
            result.sent += 1
            result.malformed += reading.malformed is not None
            result.future += reading.ts > int(time.time() * 1000)
            if reading.malformed is None:
                result.newest[thing] = max(reading.ts, result.newest.get(thing, 0))
            if on_sent is not None:
                on_sent(result.sent)

    try:
        for reading in generator.readings(readings):
            pacer.wait()
            if readings_per_message == 1 or reading.malformed is not None:
                send(reading.thing, [reading])
                continue
            batch = waiting.setdefault(reading.thing, [])
            batch.append(reading)
            if len(batch) == readings_per_message:
                send(reading.thing, waiting.pop(reading.thing))
        for thing, batch in list(waiting.items()):
            send(thing, batch)
    finally:
        publisher.close()
    result.seconds = time.monotonic() - started
    return result


CONFIRM_POLL_SECONDS = 0.5
# The device state's read capacity is small (one unit by default, the processor reads nothing):
# keys DynamoDB leaves unprocessed are asked again after a pause, not at once.
UNPROCESSED_WAIT_SECONDS = 0.2


def confirm_device_state(
    aws: Aws,
    table: str,
    result: SimulationResult,
    *,
    timeout_seconds: float,
    on_poll: Callable[[int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """How many devices' state shows the newest reading sent, waiting up to `timeout_seconds`
    for the pipeline to process them; sets `result.confirmed`. A missing table counts none."""
    started = time.monotonic()
    keys = [{"device_id": {"S": thing}} for thing in result.newest]
    confirmed = 0
    while True:
        confirmed = 0
        for start in range(0, len(keys), 100):  # BatchGetItem takes 100 keys
            pending: dict[str, Any] = {
                table: {"Keys": keys[start : start + 100], "ProjectionExpression": "device_id, ts"}
            }
            while pending:
                found = aws.call(
                    "dynamodb",
                    "batch_get_item",
                    resource=f"table {table}",
                    missing=("ResourceNotFoundException",),
                    RequestItems=pending,
                )
                if found is None:
                    break
                for item in found.get("Responses", {}).get(table, []):
                    thing, ts = item["device_id"]["S"], int(item.get("ts", {}).get("N", 0))
                    confirmed += ts >= result.newest.get(thing, 0)
                pending = found.get("UnprocessedKeys") or {}
                if pending:
                    sleep(UNPROCESSED_WAIT_SECONDS)
        if on_poll is not None:
            on_poll(confirmed)
        elapsed = time.monotonic() - started
        if confirmed == len(keys) or elapsed >= timeout_seconds:
            break
        sleep(CONFIRM_POLL_SECONDS)
    result.confirmed = confirmed
    result.confirm_seconds = time.monotonic() - started
    return confirmed


def grants(names: Names) -> list[Grant]:
    """`simulate`: which devices may still publish, and which readings reached device state.
    The readings themselves are published with each device's certificate, not IAM."""
    return [
        reads(
            ["iot:DescribeCertificate"],
            names.arn("iot", "cert/*"),
            why="certificate ids are random; IAM offers no stack scope for them",
        ),
        reads(["dynamodb:BatchGetItem"], names.device_state_table_arn),
    ]
