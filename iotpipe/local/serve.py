"""`iotpipe local serve`: the emulator on a fixed port, and the data plane once `up` has run."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING

from iotpipe.errors import IotpipeError

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.config import Config
    from iotpipe.local.plane import LocalDataPlane

WAIT_FOR_STACK_SECONDS = 2.0


class LocalServer:
    """The emulator plus, as soon as the stack exists in it, its data plane in the background.

    Other processes reach it with AWS_ENDPOINT_URL: `up`, `devices register`, and `simulate`,
    whose HTTPS publishes the emulator hands to the local rules engine.
    """

    def __init__(self, config: Config, *, port: int, on_event: Callable[[str], None]) -> None:
        from iotpipe.local.emulator import Emulator

        self.config = config
        self.on_event = on_event
        self.emulator = Emulator(port=port)
        self.plane: LocalDataPlane | None = None
        self._aws: Aws | None = None
        self._stack = ExitStack()
        # What devices publish from the start, kept until the data plane runs: a `simulate`
        # right after `up` may come before this server has noticed the stack.
        self._inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()

    @property
    def endpoint_url(self) -> str:
        return self.emulator.endpoint_url

    def __enter__(self) -> LocalServer:
        from iotpipe.aws import Aws
        from iotpipe.local.demo import emulator_credentials
        from iotpipe.local.plane import listen_to_iot_data

        self._stack.enter_context(emulator_credentials())
        self._stack.enter_context(self.emulator)
        self._aws = Aws(endpoint_url=self.endpoint_url, region=self.config.stack.region)
        self._stack.callback(listen_to_iot_data(self._aws, self._inbox))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.plane is not None:
            self.plane.close()
        self._stack.close()

    def _try_start_plane(self) -> bool:
        from iotpipe.local.plane import LocalDataPlane
        from iotpipe.stack import StackContext

        aws = self._aws
        assert aws is not None, "enter the server first"
        names = StackContext(self.config, aws).names
        try:
            plane = LocalDataPlane(aws, names)
        except IotpipeError:
            return False  # the stack is not (completely) up yet
        self.plane = plane.start()
        plane.receive_emulator_publishes(self._inbox)
        plane.run_in_background()
        self.on_event(f"data plane running for stack {names.stack!r}")
        return True

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set (or Ctrl-C)."""
        self.on_event(f"waiting for `iotpipe up` against {self.endpoint_url}")
        while not stop.is_set():
            if self.plane is None and self._try_start_plane():
                continue
            stop.wait(WAIT_FOR_STACK_SECONDS)
