"""An embedded AWS emulator (moto server) on loopback, with the fixes it needs to stand in for AWS.

Two layers make moto behave as AWS: patches to moto's own code (iotpipe.local.moto_patches: a
TLS-only bucket policy evaluated as for a TLS request, AWS's public layers usable from every
account), and the AWS rules moto lacks (iotpipe.local.aws_rules).
"""

from __future__ import annotations

import logging
import urllib.request

from iotpipe.local import aws_rules, moto_patches


class Emulator:
    """A moto server on 127.0.0.1 (port 0 picks a free one); use as a context manager."""

    def __init__(self, port: int = 0) -> None:
        from moto.server import ThreadedMotoServer

        moto_patches.install()
        aws_rules.install()
        # The HTTP server would log every request; callers report their own progress.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.endpoint_url = ""

    def start(self) -> Emulator:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def reset(self) -> None:
        """Forget every resource: a fresh, empty account."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request) as response:
            response.read()

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
