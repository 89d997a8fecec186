"""The simulator's MQTT path against a real MQTT broker on loopback: TLS, client certificates,
QoS 1, client id = thing name, the device's own topic."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from iotpipe.cli import run

amqtt_broker = pytest.importorskip("amqtt.broker")
from amqtt.plugins.base import BasePlugin  # noqa: E402

THING = "sensor-0001"
TOPIC = f"dt/sensors/{THING}/telemetry"
RECEIVED: list[tuple[str, str, bytes, int]] = []


class RecordingPlugin(BasePlugin):
    """Records (client id, topic, payload, qos) of every message the broker receives."""

    async def on_broker_message_received(self, *, client_id: str, message: Any) -> None:
        RECEIVED.append((client_id, message.topic, bytes(message.data), message.qos))


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    subject: str,
    key: Any,
    issuer: tuple[str, Any] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: Any | None = None) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a device certificate, as files."""
    ca_key, server_key = _key(), _key()
    ca = _cert("test root CA", ca_key, None, ca=True)
    _write(tmp_path / "ca.pem", ca)
    _write(
        tmp_path / "server.pem",
        _cert("localhost", server_key, ("test root CA", ca_key), server=True),
        server_key,
    )
    return {"dir": tmp_path, "ca": tmp_path / "ca.pem", "ca_key_obj": ca_key}  # type: ignore[dict-item]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def broker(pki: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """An amqtt broker on loopback that requires a client certificate signed by the test CA."""
    create = amqtt_broker.Broker._create_ssl_context

    def require_client_certificates(listener: Any) -> ssl.SSLContext:
        context = create(listener)
        context.verify_mode = ssl.CERT_REQUIRED  # AWS IoT Core refuses a device without one
        return context

    monkeypatch.setattr(
        amqtt_broker.Broker, "_create_ssl_context", staticmethod(require_client_certificates)
    )
    port = _free_port()
    config = {
        "listeners": {
            "default": {
                "type": "tcp",
                "bind": f"127.0.0.1:{port}",
                "ssl": True,
                "cafile": str(pki["ca"]),
                "certfile": str(pki["dir"] / "server.pem"),
                "keyfile": str(pki["dir"] / "server.key"),
            }
        },
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            f"{__name__}.RecordingPlugin": {},
        },
    }
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)
        holder["broker"] = amqtt_broker.Broker(config, loop=loop)
        loop.run_until_complete(holder["broker"].start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(15), "the MQTT broker did not start"
    RECEIVED.clear()
    yield port
    asyncio.run_coroutine_threadsafe(holder["broker"].shutdown(), loop).result(15)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def _device(pki: dict[str, Any], port: int, *, signed_by_ca: bool = True) -> Path:
    """A devices directory as `devices register` writes it, with a certificate for THING."""
    devices = pki["dir"] / "devices"
    directory = devices / THING
    directory.mkdir(parents=True)
    key = _key()
    issuer = ("test root CA", pki["ca_key_obj"]) if signed_by_ca else None
    cert = _cert(THING, key, issuer)
    _write(directory / "certificate.pem.crt", cert, key)
    (directory / "certificate.pem.key").rename(directory / "private.pem.key")
    info = {
        "thing_name": THING,
        "client_id": THING,
        "endpoint": "127.0.0.1",
        "port": port,
        "topic": TOPIC,
        "certificate_file": "certificate.pem.crt",
        "private_key_file": "private.pem.key",
    }
    (directory / "device.json").write_text(json.dumps(info))
    return devices


def test_readings_reach_the_broker_on_the_device_topic_from_the_device_client_id(
    pki: dict[str, Any], broker: int, capsys: pytest.CaptureFixture[str]
) -> None:
    devices = _device(pki, broker)

    code = run(
        ["simulate", "--devices-dir", str(devices), "--readings", "5", "--ca-file", str(pki["ca"])]
    )

    assert code == 0, capsys.readouterr()
    captured = capsys.readouterr()
    # Without a pipeline to ask, the summary says what the broker acknowledged.
    summary = next(
        line for line in (captured.out + captured.err).splitlines() if line.startswith("sent 5 ")
    )
    assert "; AWS IoT Core accepted all; none stamped in the future" in summary
    assert summary.endswith("; 5 well-formed readings for the processor")
    # The broker's plugins hear of a message just after it is acknowledged.
    deadline = time.monotonic() + 10
    while len(RECEIVED) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [(c, t, q) for c, t, _, q in RECEIVED] == [(THING, TOPIC, 1)] * 5
    payloads = [json.loads(p) for _, _, p, _ in RECEIVED]
    assert [p["seq"] for p in payloads] == [1, 2, 3, 4, 5]
    assert max(p["ts"] for p in payloads) <= int(time.time() * 1000), "never in the future"
    assert set(payloads[0]["metrics"]) == {"temperature", "humidity", "battery"}


def test_a_certificate_the_broker_does_not_trust_is_refused_with_a_clear_error(
    pki: dict[str, Any], broker: int, capsys: pytest.CaptureFixture[str]
) -> None:
    devices = _device(pki, broker, signed_by_ca=False)

    code = run(
        ["simulate", "--devices-dir", str(devices), "--readings", "2", "--ca-file", str(pki["ca"])]
    )

    assert code == 1
    assert f"device {THING}" in capsys.readouterr().err
    assert RECEIVED == []
