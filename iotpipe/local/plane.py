"""The local data plane of one stack: rules engine -> Kinesis -> event source mapping -> processor
-> Firehose delivery, all read back from what `up` created in the emulator."""

from __future__ import annotations

import io
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iotpipe.local.esm import KinesisPoller
from iotpipe.local.firehose import LocalDelivery
from iotpipe.local.rules import RuleEngine

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.naming import Names


def processor_code_dir() -> Path:
    """The directory Lambda would unpack the processor's zip into (lambda_src/)."""
    from iotpipe.packaging import PROCESSOR_SOURCE

    return PROCESSOR_SOURCE.parent


def lambda_runtime_environment(aws: Aws) -> dict[str, str]:
    """What Lambda sets for every function: region and credentials; here also the endpoint."""
    credentials = aws.session.get_credentials()
    frozen = credentials.get_frozen_credentials() if credentials else None
    environment = {"AWS_REGION": aws.region, "AWS_DEFAULT_REGION": aws.region}
    if aws.endpoint_url:
        environment["AWS_ENDPOINT_URL"] = aws.endpoint_url
    if frozen is not None:
        environment["AWS_ACCESS_KEY_ID"] = frozen.access_key
        environment["AWS_SECRET_ACCESS_KEY"] = frozen.secret_key
        environment["AWS_SESSION_TOKEN"] = frozen.token or "local"
    return environment


class LocalDataPlane:
    def __init__(self, aws: Aws, names: Names, *, code_dir: Path | None = None) -> None:
        self.aws = aws
        self.names = names
        self.function_log = io.StringIO()
        self.rules = RuleEngine.from_emulator(aws, [names.topic_rule])
        self.delivery = LocalDelivery.from_emulator(aws, names.archive_delivery_stream)
        self.poller = KinesisPoller.from_emulator(
            aws,
            names.processor_function,
            names.readings_stream_arn,
            code_dir or processor_code_dir(),
            runtime_environment=lambda_runtime_environment(aws),
            log=self.function_log,
        )
        self._uninstall: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()

    def start(self) -> LocalDataPlane:
        self._uninstall.append(self.delivery.install())
        self._uninstall.append(self.poller.install())
        self.poller.start_positions()
        return self

    def publish(self, topic: str, payload: bytes, *, client_id: str = "") -> None:
        self.rules.publish(topic, payload, client_id=client_id)

    def drain(self) -> None:
        """Run the pipeline until everything published so far is processed and archived."""
        self._inbox.join()
        self.poller.drain()
        self.delivery.flush()

    # Background operation (local serve) ------------------------------------------------------
    def receive_emulator_publishes(self, inbox: queue.Queue[tuple[str, bytes]]) -> None:
        """Feed the rules engine what `listen_to_iot_data` puts in `inbox` (some may wait there)."""
        self._inbox = inbox
        self._spawn(self._deliver_inbox)

    def run_in_background(self, poll_seconds: float = 0.5) -> None:
        self._spawn(lambda: self._poll_loop(poll_seconds))

    def _spawn(self, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _deliver_inbox(self) -> None:
        while not self._stop.is_set():
            try:
                topic, payload = self._inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.publish(topic, payload)
            finally:
                self._inbox.task_done()

    def _poll_loop(self, poll_seconds: float) -> None:
        while not self._stop.is_set():
            self.poller.poll()
            self.delivery.flush_if_due()
            self._stop.wait(poll_seconds)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        for uninstall in reversed(self._uninstall):
            uninstall()
        self._uninstall.clear()


def listen_to_iot_data(aws: Aws, inbox: queue.Queue[tuple[str, bytes]]) -> Callable[[], None]:
    # The emulator only stores what is published to its IoT data plane; hand it to the rules
    # engine as well (from a queue, so the publisher's request returns as it would from AWS).
    from moto.iotdata.models import IoTDataPlaneBackend

    original = IoTDataPlaneBackend.publish
    account, region = aws.account_id, aws.region

    def publish(backend: Any, topic: str, payload: bytes) -> None:
        original(backend, topic, payload)
        if (backend.account_id, backend.region_name) == (account, region):
            inbox.put((topic, payload if isinstance(payload, bytes) else str(payload).encode()))

    IoTDataPlaneBackend.publish = publish

    def restore() -> None:
        IoTDataPlaneBackend.publish = original

    return restore
