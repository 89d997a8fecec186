"""IAM permissions, declared next to the code that makes the calls.

A `Grant` names the IAM actions some code calls and the ARNs it calls them on. Each resource
declares its own (`Resource.grants`), and so do the modules behind the operating commands
(devices, resharding, queries, health, simulate); `iotpipe.iam_policy` assembles each job's policy
from these declarations and nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from iotpipe.engine.model import STACK_TAG


@dataclass(frozen=True)
class Grant:
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    # Observation only: the read-only job (plan, status, devices list/show) gets these.
    read: bool = False
    # An observation only `plan` (and `up`) make: what a stack needs that no stack owns.
    preflight: bool = False
    condition: str = ""  # the statement's Condition, as canonical JSON ("" for none)
    # Why a resource must be a wildcard or "*" (random ids, or no resource type in IAM).
    why: str = ""

    @property
    def condition_block(self) -> dict[str, Any] | None:
        return json.loads(self.condition) if self.condition else None


def _grant(
    read: bool,
    actions: Iterable[str],
    resources: str | Iterable[str],
    condition: Mapping[str, Any] | None,
    why: str,
    preflight: bool = False,
) -> Grant:
    listed = (resources,) if isinstance(resources, str) else tuple(resources)
    if any("*" in resource for resource in listed) and not why:
        raise ValueError(f"{sorted(actions)}: a wildcard resource needs its reason")
    return Grant(
        actions=tuple(sorted(set(actions))),
        resources=listed,
        read=read,
        condition=json.dumps(condition, sort_keys=True) if condition else "",
        why=why,
        preflight=preflight,
    )


def reads(
    actions: Iterable[str],
    resources: str | Iterable[str],
    *,
    condition: Mapping[str, Any] | None = None,
    why: str = "",
    preflight: bool = False,
) -> Grant:
    """Actions that only observe `resources` (with `preflight`, only `plan` and `up` do)."""
    return _grant(True, actions, resources, condition, why, preflight)


def writes(
    actions: Iterable[str],
    resources: str | Iterable[str],
    *,
    condition: Mapping[str, Any] | None = None,
    why: str = "",
) -> Grant:
    """Actions that create, change or delete `resources`."""
    return _grant(False, actions, resources, condition, why)


def lifecycle(
    arn: str | Iterable[str],
    stack: str,
    *,
    read: Iterable[str],
    write: Iterable[str],
    delete: Iterable[str],
    why: str = "",
) -> list[Grant]:
    """A resource's usual grants on its own ARN: `read` observes it, `write` creates and changes
    it, and `delete` removes it only while it carries the stack's tag."""
    return [
        reads(read, arn, why=why),
        writes(write, arn, why=why),
        writes(delete, arn, condition=owned(stack), why=why),
    ]


def owned(stack: str) -> dict[str, Any]:
    """Only on a resource carrying the stack's tag: what deletes one is conditioned on it, where
    the service authorizes by `aws:ResourceTag` (Service Authorization Reference)."""
    return {"StringEquals": {f"aws:ResourceTag/{STACK_TAG}": stack}}
