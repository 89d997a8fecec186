"""Retries within the invocation's time budget: exponential backoff with full jitter.

The budget is the function's remaining time minus a safety margin that covers one call in flight
(the clients' connect + read timeouts) and the final writes of the invocation, so the handler
always returns its partial batch response before Lambda's timeout would discard it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import botocore.exceptions

from processor import clients

BASE_SECONDS = 0.05
CAP_SECONDS = 2.0
MAX_ATTEMPTS = 8
SAFETY_MARGIN_MS = (clients.CONNECT_TIMEOUT_SECONDS + clients.READ_TIMEOUT_SECONDS + 1) * 1000
# Without a Lambda context (a local invocation) the budget is one minute.
DEFAULT_REMAINING_MS = 60_000

RETRYABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "SlowDown",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalServerError",
        "InternalServerException",
        "InternalFailure",
        "InternalError",
        "RequestTimeout",
        "RequestTimeoutException",
        "TransactionConflictException",
    }
)


def is_retryable(exc: BaseException) -> bool:
    """Throttling, server-side errors and dropped connections; anything else fails fast."""
    if isinstance(exc, botocore.exceptions.ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code in RETRYABLE_CODES or int(status or 0) >= 500
    return isinstance(
        exc,
        botocore.exceptions.ConnectionError
        | botocore.exceptions.HTTPClientError
        | botocore.exceptions.ReadTimeoutError,
    )


def error_code(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", "ClientError"))
    return type(exc).__name__


class Budget:
    """Time left for this invocation's AWS calls and retries; counts the retries taken."""

    def __init__(
        self,
        remaining_ms: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        margin = min(SAFETY_MARGIN_MS, remaining_ms / 3)
        self._clock = clock
        self._sleep = sleep
        self.deadline = clock() + max(0.0, remaining_ms - margin) / 1000
        self.retries = 0

    @classmethod
    def from_context(cls, context: Any) -> Budget:
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        return cls(float(remaining()) if callable(remaining) else DEFAULT_REMAINING_MS)

    def has_time(self) -> bool:
        return self._clock() < self.deadline

    def backoff(self, attempt: int) -> bool:
        """Sleep before retry number `attempt` (0-based); False when no retry fits the budget."""
        if attempt + 1 >= MAX_ATTEMPTS:
            return False
        delay = random.uniform(0, min(CAP_SECONDS, BASE_SECONDS * 2**attempt))
        if self._clock() + delay >= self.deadline:
            return False
        self._sleep(delay)
        self.retries += 1
        return True
