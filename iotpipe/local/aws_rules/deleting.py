"""DELETING states that last: a deleted resource stays visible, in DELETING, for a while.

moto forgets a stream, table or delivery stream the moment it is deleted; AWS keeps it, in
DELETING state, for seconds to minutes, and refuses to create another under its name meanwhile.
The service modules put the deleted object back into moto's backend and take it out again once
its emulated deletion time has passed (`sweep`, run before the service's requests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from iotpipe.local.aws_rules import Call, clock, lock


@dataclass
class Lingering:
    until: float
    resource: Any


def linger(call: Call, store: dict[str, Any], name: str, resource: Any, seconds: float) -> None:
    """Keep `resource` in moto's `store` under `name` for `seconds` more emulated seconds."""
    with lock():
        store[name] = resource
        call.state.setdefault("deleting", {})[name] = Lingering(clock.now() + seconds, resource)


def sweep(call: Call, store: dict[str, Any]) -> None:
    """Remove the resources whose deletion has finished from moto's `store`."""
    now = clock.now()
    with lock():
        pending: dict[str, Lingering] = call.state.get("deleting", {})
        for name, entry in list(pending.items()):
            if now >= entry.until:
                del pending[name]
                if store.get(name) is entry.resource:
                    del store[name]


def is_deleting(call: Call, name: str) -> bool:
    with lock():
        return name in call.state.get("deleting", {})
