"""The reconciler's vocabulary: resources, changes, steps and plans.

A resource knows its desired spec, how to observe its current state in the same shape, and how to
create, update and delete itself. Everything else (diffing, ordering, ownership, concurrency) is the
engine's, so a service module stays a short, readable description of one AWS service.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

from iotpipe.errors import AwsError

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.permissions import Grant
    from iotpipe.stack import StackContext

STACK_TAG = "iotpipe:stack"


class Unavailable(AwsError):
    """The service is not offered to this account or region; an optional resource is skipped."""

    def __init__(
        self, reason: str, *, resource: str, code: str | None = None, hint: str | None = None
    ) -> None:
        super().__init__(reason, resource=resource, code=code, hint=hint)
        self.reason = reason


class Deferred(AwsError):
    """AWS allows this step only later (e.g. deleting a thing type five minutes after its
    deprecation): the step is left for a later run, which the reason says how to make."""

    def __init__(self, reason: str, *, resource: str) -> None:
        super().__init__(reason, resource=resource)
        self.reason = reason


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    REPLACE = "replace"
    NOOP = "no-change"
    DELETE = "delete"
    KEEP = "keep"  # `down` leaves a data store, or a resource the stack does not own
    SKIP = "skip"  # an optional resource whose service this account cannot use
    DEFER = "deferred"  # applied as far as AWS allows now; a later run finishes it


@dataclass(frozen=True)
class Change:
    field: str
    old: Any
    new: Any

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "old": self.old, "new": self.new}

    def __str__(self) -> str:
        return f"{self.field}: {_short(self.old)} -> {_short(self.new)}"


def _short(value: Any, limit: int = 60) -> str:
    text = "(none)" if value is None else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Resource(ABC):
    """One AWS resource the stack owns."""

    kind: ClassVar[str]
    # Data stores survive `down` unless --delete-data.
    data_store: ClassVar[bool] = False
    # Fields AWS cannot change in place: a change to one of them means replace.
    replace_on: ClassVar[frozenset[str]] = frozenset()
    # Dict fields where extra observed keys are fine (tags others added), only ours must match.
    subset_fields: ClassVar[frozenset[str]] = frozenset({"tags"})
    # An optional resource that raises `Unavailable` is skipped with a warning, not a failure.
    optional: ClassVar[bool] = False

    def __init__(self, ctx: StackContext, name: str, depends_on: tuple[str, ...] = ()) -> None:
        self.ctx = ctx
        self.name = name
        self.depends_on = depends_on

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def label(self) -> str:
        """How messages name this resource."""
        return f"{self.kind} {self.name}"

    @abstractmethod
    def desired(self) -> dict[str, Any]:
        """The spec this resource should have, as plain JSON-able values."""

    @abstractmethod
    def observe(self, aws: Aws) -> dict[str, Any] | None:
        """The current state in the shape of `desired()` (plus `tags`), or None when absent."""

    @abstractmethod
    def create(self, aws: Aws) -> None:
        """Create the resource; the engine then re-observes and updates whatever still differs."""

    @abstractmethod
    def update(self, aws: Aws, changes: list[Change]) -> None:
        """Apply exactly these changes."""

    @abstractmethod
    def delete(self, aws: Aws) -> None:
        """Delete the resource (and wait until it is gone where later steps depend on that)."""

    def grants(self) -> list[Grant]:
        """The IAM permissions that observing, creating, changing and deleting this resource
        take, for the policies `iam-policy` prints (see iotpipe.permissions)."""
        return []

    def preflight(self, aws: Aws) -> None:
        """Before an `up` is planned: confirm what this resource needs from AWS that no stack
        owns (a public layer version), raising with the setting to fix. Nothing by default."""
        return None

    def notes(self, observed: dict[str, Any]) -> list[str]:
        """Facts about the observed state worth showing with the plan (none by default)."""
        return []

    def keep_note(self, observed: dict[str, Any]) -> str:
        """Why `down` without --delete-data keeps this data store."""
        return "data store (use --delete-data to remove)"

    def delete_note(self, observed: dict[str, Any]) -> str | None:
        """What deleting the observed resource takes with it, when that is worth showing."""
        return None

    def owner(self, observed: dict[str, Any]) -> str | None:
        """The stack that owns the observed resource, or None when nothing records one."""
        tags = observed.get("tags") or {}
        return tags.get(STACK_TAG)

    def diff(self, observed: dict[str, Any]) -> list[Change]:
        changes = []
        for name, want in self.desired().items():
            have = observed.get(name)
            if name in self.subset_fields and isinstance(want, dict):
                have_dict = have or {}
                if any(have_dict.get(k) != v for k, v in want.items()):
                    changes.append(Change(name, have, want))
            elif _normal(have) != _normal(want):
                changes.append(Change(name, have, want))
        return changes


def _normal(value: Any) -> Any:
    """Compare JSON-ish values without caring about key order or number types."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


@dataclass
class Step:
    action: Action
    resource: Resource
    changes: list[Change] = field(default_factory=list)
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": str(self.action),
            "kind": self.resource.kind,
            "name": self.resource.name,
            "changes": [c.to_dict() for c in self.changes],
            "note": self.note,
        }


@dataclass
class Plan:
    steps: list[Step]

    @property
    def changes(self) -> list[Step]:
        unchanged = (Action.NOOP, Action.KEEP, Action.SKIP, Action.DEFER)
        return [s for s in self.steps if s.action not in unchanged]

    @property
    def skipped(self) -> list[Step]:
        return [s for s in self.steps if s.action is Action.SKIP]

    @property
    def deferred(self) -> list[Step]:
        return [s for s in self.steps if s.action is Action.DEFER]

    @property
    def is_empty(self) -> bool:
        return not self.changes

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for step in self.steps:
            out[str(step.action)] = out.get(str(step.action), 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.counts(), "steps": [s.to_dict() for s in self.steps]}
