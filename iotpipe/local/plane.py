"""The local data plane of one stack: rules engine -> Kinesis -> event source mapping -> processor
-> Firehose delivery, all read back from what `up` created in the emulator."""

from __future__ import annotations

import io
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from iotpipe.local import moto_patches
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
        self.code_dir = code_dir or processor_code_dir()
        self.function_log = io.StringIO()
        self.rules = RuleEngine.from_emulator(aws, [names.topic_rule])
        self.delivery = LocalDelivery.from_emulator(aws, names.archive_delivery_stream)
        self.poller = self._read_poller()
        # Why a background loop stopped (local serve reports it and restarts the loop).
        self.failure: Exception | None = None
        self._uninstall: list[Callable[[], None]] = []
        self._uninstall_poller: Callable[[], None] = lambda: None
        self._stop = threading.Event()
        # One pipeline step at a time, and never while `refresh` swaps a part.
        self._step = threading.Lock()
        self._loops: dict[str, threading.Thread] = {}
        self._targets: dict[str, Callable[[], None]] = {}
        self._inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()

    def _read_poller(self) -> KinesisPoller:
        return KinesisPoller.from_emulator(
            self.aws,
            self.names.processor_function,
            self.names.readings_stream_arn,
            self.code_dir,
            runtime_environment=lambda_runtime_environment(self.aws),
            log=self.function_log,
        )

    def start(self) -> LocalDataPlane:
        self._uninstall.append(self.delivery.install())
        self._uninstall_poller = self.poller.install()
        self.poller.start_positions()
        return self

    def publish(self, topic: str, payload: bytes, *, client_id: str = "") -> None:
        self.rules.publish(topic, payload, client_id=client_id)

    def drain(self) -> None:
        """Run the pipeline until everything published so far is processed and archived."""
        self._inbox.join()
        self.poller.drain()
        self.delivery.flush()

    def refresh(self) -> list[str]:
        """Take up what `up` changed in the emulator since the plane read it; returns the parts
        that changed. Raises IotpipeError when a part is gone (after `down`) or cannot run."""
        names = self.names
        rules = RuleEngine.from_emulator(self.aws, [names.topic_rule]).rules
        delivery = LocalDelivery.from_emulator(self.aws, names.archive_delivery_stream).config
        poller = self._read_poller()
        changed = []
        with self._step:
            if rules != self.rules.rules:
                self.rules.rules = rules
                changed.append(f"IoT rule {names.topic_rule}")
            if delivery != self.delivery.config:
                self.delivery.reconfigure(delivery)
                changed.append(f"delivery stream {delivery.stream} ({delivery.buffering})")
            current = self.poller
            if poller.mapping.uuid != current.mapping.uuid:
                # A mapping created anew (after `down` and `up`) reads from its own starting
                # position, as on AWS; the old one's place in the stream means nothing to it.
                self._uninstall_poller()
                self.poller = poller
                self._uninstall_poller = poller.install()
                poller.start_positions()
                changed.append(f"event source mapping {poller.mapping.uuid} (new)")
            elif (poller.mapping, poller.runtime.function) != (
                current.mapping,
                current.runtime.function,
            ):
                # Same mapping: it keeps its place in each shard and takes the new settings.
                current.mapping, current.runtime = poller.mapping, poller.runtime
                changed.append(f"event source mapping and function {names.processor_function}")
        return changed

    # Background operation (local serve) ------------------------------------------------------
    def receive_emulator_publishes(self, inbox: queue.Queue[tuple[str, bytes]]) -> None:
        """Feed the rules engine what `listen_to_iot_data` puts in `inbox` (some may wait there)."""
        self._inbox = inbox
        self._spawn("rules", self._deliver_inbox)

    def run_in_background(self, poll_seconds: float = 0.5) -> None:
        self._spawn("stream", lambda: self._poll_loop(poll_seconds))

    def restart(self) -> None:
        """Start again the background loops that stopped on a failure."""
        self.failure = None
        for name, thread in list(self._loops.items()):
            if not thread.is_alive():
                self._spawn(name, self._targets[name])

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        def guarded() -> None:
            try:
                target()
            except Exception as exc:  # reported by whoever runs the plane, not lost in a thread
                self.failure = exc

        thread = threading.Thread(target=guarded, name=f"local-{name}", daemon=True)
        self._targets[name] = target
        self._loops[name] = thread
        thread.start()

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
            with self._step:
                self.poller.poll()
                self.delivery.flush_if_due()
            self._stop.wait(poll_seconds)

    def close(self) -> None:
        self._stop.set()
        for thread in self._loops.values():
            thread.join(timeout=5)
        self._uninstall_poller()
        self._uninstall_poller = lambda: None
        for uninstall in reversed(self._uninstall):
            uninstall()
        self._uninstall.clear()


def listen_to_iot_data(aws: Aws, inbox: queue.Queue[tuple[str, bytes]]) -> Callable[[], None]:
    # The emulator only stores what is published to its IoT data plane; hand it to the rules
    # engine as well (from a queue, so the publisher's request returns as it would from AWS).
    return moto_patches.listen_to_iot_publish(
        aws.account_id, aws.region, lambda topic, payload: inbox.put((topic, payload))
    )
