"""Devices registered per second by `devices register --count N`, with 50 ms injected per call,
at the default concurrency and at --concurrency 1.

Target: the default concurrency registers at least 8x faster than one device at a time.

The embedded emulator runs in a process of its own, as AWS runs apart from its clients, so its
work does not compete with the client's threads for one interpreter. It makes a fresh 2048-bit
RSA key for every certificate (~80 ms of CPU), work AWS does on its own servers, in parallel,
inside the latency of CreateKeysAndCertificate. By default the emulator draws keys from a small
pre-made pool so the figures measure the client; --emulator-keygen keeps its own key generation.
The emulator's IoT backend is not thread-safe: a request racing another now and then fails with
a 500, which the client's retry policy retries like any AWS 5xx (the calls beyond 6 per device).
Usage: bench_devices.py [DEVICES] [--emulator-keygen]   (DEVICES defaults to 500)
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import sys
import tempfile
import threading
import time
import types
from collections import Counter
from pathlib import Path

import boto3
from _common import Faults, emulator_process, reset

from iotpipe.cli import run
from iotpipe.devices import DEFAULT_CONCURRENCY

LATENCY_SECONDS = 0.05
STACK = "bench"


def pool_emulator_keys(size: int = 16) -> None:
    """Make the emulator hand out keys from a pre-made pool instead of generating one per call."""
    import moto.iot.models
    from cryptography.hazmat.primitives.asymmetric import rsa

    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(size)]
    pool = itertools.cycle(keys)
    lock = threading.Lock()

    def next_key(**_: object) -> rsa.RSAPrivateKey:
        with lock:
            return next(pool)

    moto.iot.models.rsa = types.SimpleNamespace(  # type: ignore[attr-defined]
        generate_private_key=next_key, RSAPrivateKey=rsa.RSAPrivateKey
    )


def prepare(endpoint_url: str) -> None:
    """A fresh account holding what `up` provides for devices: the thing type and the policy."""
    reset(endpoint_url)
    iot = boto3.client("iot", endpoint_url=endpoint_url)
    iot.create_thing_type(thingTypeName=f"{STACK}-sensor")
    iot.create_policy(
        policyName=f"{STACK}-device",
        policyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
    )


def timed_register(
    endpoint_url: str, work: Path, devices: int, concurrency: int, faults: Faults
) -> tuple[float, Counter]:
    prepare(endpoint_url)
    faults.calls.clear()
    argv = [
        "devices", "register", "--count", str(devices), "--prefix", "bench-", "--yes",
        "--concurrency", str(concurrency), "--out-dir", str(work / f"creds-{concurrency}"),
        "--config", str(work / "iotpipe.toml"), "--endpoint-url", endpoint_url,
    ]  # fmt: skip
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = run(argv)
    elapsed = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"devices register failed with exit code {code}")
    return elapsed, Counter(op for _, op in faults.calls)


def main() -> None:
    args = sys.argv[1:]
    emulator_keygen = "--emulator-keygen" in args
    numbers = [a for a in args if a.isdigit()]
    devices = int(numbers[0]) if numbers else 500
    setup = None if emulator_keygen else pool_emulator_keys
    with emulator_process(setup) as endpoint_url, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "iotpipe.toml").write_text(f'[stack]\nname = "{STACK}"\n')
        faults = Faults(latency_seconds=LATENCY_SECONDS)
        remove = faults.install()
        try:
            parallel_seconds, calls = timed_register(
                endpoint_url, work, devices, DEFAULT_CONCURRENCY, faults
            )
            serial_seconds, _ = timed_register(endpoint_url, work, devices, 1, faults)
        finally:
            remove()

    parallel_rate = devices / parallel_seconds
    serial_rate = devices / serial_seconds
    print(f"latency injected per call: {LATENCY_SECONDS * 1000:.0f} ms")
    # The parallel run is bound by CPU once latency is overlapped: say how busy the machine was.
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"CPU cores: {os.cpu_count()}, load average (1/5/15 min): {load}")
    print(f"devices registered per run: {devices}")
    keys = "generated per certificate" if emulator_keygen else "drawn from a pre-made pool"
    print(f"emulator's device keys: {keys}")
    print(f"AWS calls per run: {sum(calls.values())} ({sum(calls.values()) / devices:.1f}/device)")
    for operation, count in sorted(calls.items()):
        print(f"  {operation}: {count}")
    print(
        f"--concurrency {DEFAULT_CONCURRENCY} (default): {parallel_seconds:7.1f} s  "
        f"{parallel_rate:6.1f} devices/s"
    )
    print(f"--concurrency 1:            {serial_seconds:7.1f} s  {serial_rate:6.1f} devices/s")
    ratio = parallel_rate / serial_rate
    print(f"speed-up: {ratio:.1f}x (target >= 8x): {'met' if ratio >= 8 else 'NOT met'}")


if __name__ == "__main__":
    main()
