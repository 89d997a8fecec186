"""boto3 clients, created on first use and kept for the life of the execution environment.

botocore's own retries are off: `retry` decides what is retried, against the invocation's time
budget. Timeouts are short so that one slow call cannot eat the safety margin the budget keeps.
`AWS_ENDPOINT_URL` (an emulator) is passed explicitly: boto3 would honour it by itself, but then
Timestream's endpoint discovery would replace it with the real AWS endpoint.
"""

from __future__ import annotations

import os
from typing import Any

import boto3
from botocore.config import Config

CONNECT_TIMEOUT_SECONDS = 2
READ_TIMEOUT_SECONDS = 5

_CONFIG = Config(
    retries={"total_max_attempts": 1, "mode": "standard"},
    connect_timeout=CONNECT_TIMEOUT_SECONDS,
    read_timeout=READ_TIMEOUT_SECONDS,
)

# Module-level cache: one client per service per execution environment. Clearing it makes the
# next call build fresh clients (after an endpoint change, in tests and the local data plane).
CLIENTS: dict[str, Any] = {}


def client(service: str) -> Any:
    found = CLIENTS.get(service)
    if found is None:
        endpoint_url = os.environ.get("AWS_ENDPOINT_URL") or None
        found = boto3.client(service, endpoint_url=endpoint_url, config=_CONFIG)
        CLIENTS[service] = found
    return found
