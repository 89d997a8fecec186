"""The failures a user can cause or meet, each with its exit code and a hint at the fix."""

from __future__ import annotations


class IotpipeError(Exception):
    """An expected failure: printed as a message (never a traceback) and mapped to an exit code."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(IotpipeError):
    """Bad arguments: exit 2, and no AWS call has been made."""

    exit_code = 2


class ConfigError(UsageError):
    """An invalid config: the message names the field; exit 2, no AWS call."""


class AwsError(IotpipeError):
    """An AWS call failed for good: the message names the resource and quotes AWS."""

    def __init__(
        self,
        message: str,
        *,
        resource: str | None = None,
        code: str | None = None,
        hint: str | None = None,
    ) -> None:
        prefix = f"{resource}: " if resource else ""
        super().__init__(prefix + message, hint=hint)
        self.resource = resource
        self.code = code


class Cancelled(IotpipeError):
    """The user answered no at a confirmation: nothing was changed. Printed plainly, exit 1.

    Exit 1, as terraform's "Apply cancelled.": the change asked for did not happen, and a script
    must not carry on as if it had. (Without a terminal to ask on, a missing --yes is bad usage,
    a `UsageError`.)
    """

    exit_code = 1


# 128 + SIGINT, as shells report a process that Ctrl-C stopped.
INTERRUPTED_EXIT_CODE = 130
