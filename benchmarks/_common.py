"""Shared set-up for the benchmark scripts: credentials, the fault/latency injector, and an
embedded emulator in a process of its own."""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import sys
import urllib.request
from collections.abc import Callable, Iterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "benchmark",
        "AWS_SECRET_ACCESS_KEY": "benchmark",
        "AWS_DEFAULT_REGION": "us-east-1",
        "IOTPIPE_RETRY_SCALE": "0.002",
    }
)
os.environ.pop("AWS_PROFILE", None)

from tests.faults import Faults  # noqa: E402

__all__ = ["ROOT", "Faults", "emulator_process", "reset"]


def _serve(setup: Callable[[], None] | None, endpoint: Queue, stop: Event) -> None:
    from iotpipe.local import aws_rules
    from iotpipe.local.emulator import Emulator

    logging.getLogger("werkzeug").setLevel(logging.CRITICAL)
    # The emulator stands in for AWS. Its own garbage collector pauses every request for
    # 100-180 ms about once per `up` (gen2 over moto's state, measured), which AWS does not do
    # and which lands at random in one timed run or another; the process is short-lived.
    gc.disable()
    if setup is not None:
        setup()
    # The clients' waits are shortened by IOTPIPE_RETRY_SCALE in another process: AWS's delays
    # in the emulator's rules are shortened alike, so the figures keep AWS's proportions.
    aws_rules.clock.run_faster(1 / float(os.environ["IOTPIPE_RETRY_SCALE"]))
    with Emulator() as emulator:
        endpoint.put(emulator.endpoint_url)
        stop.wait()


@contextlib.contextmanager
def emulator_process(setup: Callable[[], None] | None = None) -> Iterator[str]:
    """An emulator in its own process, yielding its URL.

    AWS does its work on its own servers: in its own process the emulator's CPU work does not
    compete with the client's for one interpreter, so the figures measure the client.
    """
    context = multiprocessing.get_context("spawn")
    endpoint: Queue = context.Queue()
    stop = context.Event()
    server = context.Process(target=_serve, args=(setup, endpoint, stop), daemon=True)
    server.start()
    try:
        yield endpoint.get(timeout=60)
    finally:
        stop.set()
        server.join(timeout=30)


def reset(endpoint_url: str) -> None:
    """Forget every resource in the emulator: a fresh account."""
    request = urllib.request.Request(f"{endpoint_url}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request) as response:
        response.read()
