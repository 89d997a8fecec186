"""Deletions AWS finishes later: a stream, table or delivery stream stays DELETING for a while.

Until it is gone AWS keeps its name: CreateStream, CreateTable and CreateDeliveryStream answer
ResourceInUseException, as for a resource that exists. So `down` waits each deletion out (as
terraform does), and `up` waits for one it finds still running (an interrupted `down`, a
deletion made elsewhere) before it creates the resource again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from iotpipe.engine.reconcile import report_wait

if TYPE_CHECKING:
    from iotpipe.aws import Aws

DELETING = "DELETING"


def wait_while_deleting(
    aws: Aws, *, resource: str, status: Callable[[], str | None], message: str
) -> str | None:
    """Wait while `status()` (None once the resource is gone) says DELETING; returns the last.

    `message` says what is waited for; it is shown on the progress line while the wait lasts.
    """
    current = status()
    if current != DELETING:
        return current
    report_wait(message)
    last: list[str | None] = [current]

    def finished() -> bool:
        last[0] = status()
        return last[0] != DELETING

    aws.wait_for(finished, resource=resource, what="for AWS to finish deleting it")
    return last[0]


def create_once_deleted(
    aws: Aws,
    *,
    resource: str,
    create: Callable[[], object | None],
    status: Callable[[], str | None],
    what: str,
) -> str | None:
    """Create the resource; should its name still be held by a deletion under way, wait that out
    and create it again.

    `create()` returns None when AWS answers ResourceInUseException. Returns None once created,
    else the status of whatever holds the name (ACTIVE: another run created it).
    """
    if create() is not None:
        return None
    held_by = wait_while_deleting(
        aws,
        resource=resource,
        status=status,
        message=f"AWS is still deleting the previous {what} of this name; waiting until it is gone",
    )
    if held_by is None:
        create()
    return held_by
