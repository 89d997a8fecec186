"""`iotpipe local serve`: the emulator on a fixed port, and the data plane of the stack in it.

The server follows the stack through its life, looking every CHECK_SECONDS: it starts the data
plane once `up` has created the pipeline, takes up what a later `up` changes (buffering hints,
batch size, the function's settings), stops the plane when `down` removes the pipeline and starts
it again after the next `up`. A data-plane loop that fails is reported and restarted. Readings
wait in Firehose's buffer as they would on AWS, so the server says how many wait and when they
are delivered. It follows the config file too (the stack's name), and runs on the defaults while
there is none.
"""

from __future__ import annotations

import errno
import queue
import socket
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from iotpipe.errors import AwsError, ConfigError, IotpipeError

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.config import Config
    from iotpipe.local.plane import LocalDataPlane
    from iotpipe.naming import Names

CHECK_SECONDS = 1.0
# While readings keep arriving, the buffer is reported again at most this often.
BUFFER_REPORT_SECONDS = 30.0

# What another terminal runs, in order, once the exports are set.
NEXT_STEPS = (
    "iotpipe up --yes",
    "iotpipe devices register --prefix sensor- --count 5 --out-dir devices --yes",
    "iotpipe simulate --devices-dir devices --readings 100",
    'iotpipe local query "SELECT device_id, count(*) AS readings FROM readings GROUP BY 1"',
)


def next_steps(*, config_exists: bool) -> list[str]:
    """The commands that take a new user from a running server to rows in the archive."""
    return ([] if config_exists else ["iotpipe init"]) + list(NEXT_STEPS)


def follow_config_file(path: Path) -> Callable[[], Config]:
    """The config as `path` holds it at each call; the defaults while there is no file."""
    from iotpipe.config import load_config, parse_config

    def read() -> Config:
        if not path.exists():
            return parse_config({}, source="the default config")
        return load_config(path)

    return read


def check_port_free(port: int) -> None:
    """Fail at once, naming the port, when nothing could listen on it (the emulator would wait
    for its server thread forever)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the emulator's HTTP server binds: a port left in TIME_WAIT is free to it.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            why = (
                "it is in use (another `iotpipe local serve`, or another program, listens there)"
                if exc.errno == errno.EADDRINUSE
                else exc.strerror or str(exc)
            )
            raise IotpipeError(
                f"cannot listen on 127.0.0.1:{port}: {why}",
                hint="stop the other server, or pick another port: iotpipe local serve "
                "--port 4567 (0 picks a free one), then export the AWS_ENDPOINT_URL it prints",
            ) from None


def _clock_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S UTC")


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    minutes, rest = divmod(seconds, 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


class LocalServer:
    """The emulator plus, as soon as the stack exists in it, its data plane in the background.

    Other processes reach it with AWS_ENDPOINT_URL: `up`, `devices register`, and `simulate`,
    whose HTTPS publishes the emulator hands to the local rules engine. `config` is the config,
    or a function that reads it afresh (the server follows changes of the stack's name).
    """

    def __init__(
        self,
        config: Config | Callable[[], Config],
        *,
        port: int,
        on_event: Callable[[str], None],
    ) -> None:
        from iotpipe.local.emulator import Emulator

        self._read_config: Callable[[], Config] = (
            config if callable(config) else lambda: config  # type: ignore[assignment]
        )
        self.config = self._read_config()
        self.port = port
        self.on_event = on_event
        self.emulator = Emulator(port=port)
        self.plane: LocalDataPlane | None = None
        self._aws: Aws | None = None
        self._names: Names | None = None
        self._stack = ExitStack()
        # What devices publish from the start, kept until the data plane runs: a `simulate`
        # right after `up` may come before this server has noticed the stack.
        self._inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        # Problems already reported, by topic: each is said once, and again only if it changes.
        self._said: dict[str, str] = {}
        self._objects_seen = 0
        self._readings_seen = 0
        self._buffer_said = 0
        self._buffer_said_at = 0.0

    @property
    def endpoint_url(self) -> str:
        return self.emulator.endpoint_url

    def exports(self) -> dict[str, str]:
        """The environment another terminal needs: the endpoint, dummy credentials, the region."""
        from iotpipe.local.demo import EMULATOR_CREDENTIALS

        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            **EMULATOR_CREDENTIALS,
            "AWS_DEFAULT_REGION": self.config.stack.region,
        }

    def __enter__(self) -> LocalServer:
        from iotpipe.aws import Aws
        from iotpipe.local.demo import emulator_credentials
        from iotpipe.local.plane import listen_to_iot_data

        if self.port:
            check_port_free(self.port)
        self._stack.enter_context(emulator_credentials())
        self._stack.enter_context(self.emulator)
        self._aws = Aws(endpoint_url=self.endpoint_url, region=self.config.stack.region)
        self._stack.callback(listen_to_iot_data(self._aws, self._inbox))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_plane()
        self._stack.close()

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set (or Ctrl-C)."""
        self.on_event(
            f"waiting for `iotpipe up` of stack {self.config.stack.name!r} against "
            f"{self.endpoint_url}"
        )
        while not stop.is_set():
            self.check()
            stop.wait(CHECK_SECONDS)

    def check(self) -> None:
        """One look: the config, the stack in the emulator, the data plane and its buffer."""
        self._follow_config()
        if self.plane is None:
            self._start_plane()
        else:
            self._watch_plane(self.plane)

    # ------------------------------------------------------------------------------------------
    def _say(self, topic: str, text: str | None) -> None:
        """Report `text` under `topic` unless it was the last thing said there; None clears."""
        if text is None:
            self._said.pop(topic, None)
        elif self._said.get(topic) != text:
            self._said[topic] = text
            self.on_event(text)

    def _stack_names(self) -> Names:
        stack = self.config.stack
        if self._names is None or (self._names.stack, self._names.app) != (stack.name, stack.app):
            from iotpipe.context import StackContext

            assert self._aws is not None, "enter the server first"
            self._names = StackContext(self.config, self._aws).names
        return self._names

    def _follow_config(self) -> None:
        try:
            config = self._read_config()
        except ConfigError as exc:
            self._say("config", f"{exc.message}\n  still serving stack {self.config.stack.name!r}")
            return
        self._say("config", None)
        if config == self.config:
            return
        old = self.config
        if config.stack.region != old.stack.region:
            self._say(
                "region",
                f"the config's stack.region is now {config.stack.region}; this server serves "
                f"{old.stack.region}: restart `iotpipe local serve` to serve the new region",
            )
            return
        self._say("region", None)
        self.config = config
        if config.stack.name != old.stack.name:
            if self.plane is not None:
                self.on_event(f"data plane of stack {old.stack.name!r} stopped")
                self._stop_plane()
            self.on_event(
                f"the config names stack {config.stack.name!r} now: waiting for `iotpipe up`"
            )

    def _start_plane(self) -> None:
        from iotpipe.local.plane import LocalDataPlane

        assert self._aws is not None, "enter the server first"
        names = self._stack_names()
        plane: LocalDataPlane | None = None
        try:
            plane = LocalDataPlane(self._aws, names)
            plane.start()
        except Exception as exc:
            if plane is not None:
                plane.close()
            if not isinstance(exc, AwsError):  # an AwsError: the stack is not (all) up yet
                why = _why(exc)
                self._say("plane", f"the data plane of stack {names.stack!r} cannot run: {why}")
            return
        self._say("plane", None)
        plane.receive_emulator_publishes(self._inbox)
        plane.run_in_background()
        self.plane = plane
        self._objects_seen = self._readings_seen = self._buffer_said = 0
        delivery = plane.delivery.config
        self.on_event(f"data plane running for stack {names.stack!r}")
        self.on_event(
            f"archive: Firehose stream {delivery.stream} buffers readings {delivery.buffering} "
            f"before it writes them to {delivery.destination}; `iotpipe local query` sees them "
            "after that ([archive] buffer_seconds = 0 and `iotpipe up` deliver them at once)"
        )

    def _watch_plane(self, plane: LocalDataPlane) -> None:
        failure = plane.failure
        try:
            changes = plane.refresh()
        except Exception as exc:
            self._stop_plane()
            if isinstance(exc, AwsError):
                self.on_event(
                    f"stack {plane.names.stack!r} is no longer complete in the emulator "
                    f"({exc.message}), after `iotpipe down`?: data plane stopped; it starts "
                    "again once `iotpipe up` has run"
                )
            else:
                self._say(
                    "plane",
                    f"the data plane of stack {plane.names.stack!r} cannot run: {_why(exc)}",
                )
            return
        if failure is not None:
            # Said once while it recurs the same way (each restart would meet it again).
            self._say("crash", f"data plane crashed: {_why(failure)}; restarting it")
            plane.restart()
        else:
            self._say("crash", None)
        if changes:
            self.on_event("took up what `iotpipe up` changed: " + "; ".join(changes))
        self._report_archive(plane)

    def _report_archive(self, plane: LocalDataPlane) -> None:
        delivery = plane.delivery
        objects, readings = len(delivery.objects), delivery.lines_delivered
        if objects > self._objects_seen:
            self.on_event(
                f"archive: delivered {readings - self._readings_seen:,} reading(s) in "
                f"{objects - self._objects_seen} object(s) to {delivery.config.destination}; "
                "`iotpipe local query` sees them now"
            )
            self._objects_seen, self._readings_seen = objects, readings
        buffered, due = delivery.buffered_lines, delivery.next_delivery_at()
        if not buffered or due is None:
            self._buffer_said = 0
            return
        now = time.time()
        again = now - self._buffer_said_at >= BUFFER_REPORT_SECONDS
        if buffered != self._buffer_said and (self._buffer_said == 0 or again):
            size = delivery.config.buffer_bytes // 1024**2
            self.on_event(
                f"archive: {buffered:,} reading(s) buffered in Firehose stream "
                f"{delivery.config.stream}; next delivery at {_clock_time(due)} (in "
                f"{_duration(due - now)}), or as soon as {size} MiB are buffered"
            )
            self._buffer_said, self._buffer_said_at = buffered, now

    def _stop_plane(self) -> None:
        if self.plane is not None:
            self.plane.close()
            self.plane = None


def _why(exc: BaseException) -> str:
    if isinstance(exc, IotpipeError):
        return exc.message + (f" ({exc.hint})" if exc.hint else "")
    return f"{type(exc).__name__}: {exc}"
