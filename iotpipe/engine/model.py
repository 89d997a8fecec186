"""The reconciler's vocabulary: resources, changes, steps and plans.

A resource knows its desired spec, how to observe its current state in the same shape, and how to
create, update and delete itself. Everything else (diffing, ordering, ownership, concurrency) is the
engine's, so a service module stays a short, readable description of one AWS service.

The engine stands alone: it imports nothing of the pipeline (tests/test_engine.py proves it). The
resources, the context they read and the AWS access they call are handed in.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from iotpipe.engine.fields import REPLACE, Field, Settled, State, Tagging, Write, normal
from iotpipe.errors import AwsError, IotpipeError

if TYPE_CHECKING:
    from iotpipe.permissions import Grant

STACK_TAG = "iotpipe:stack"

T = TypeVar("T")


class AwsAccess(Protocol):
    """What the engine needs of the AWS access it is handed (iotpipe.aws.Aws in the pipeline):
    a call that retries what AWS asks to be retried, and a wait with backoff. The engine makes
    the tagging and write calls the resources declare, and passes it on to the resources."""

    def call(self, service: str, operation: str, *, resource: str, **params: Any) -> Any:
        """Call `service.operation(**params)`; errors name `resource`."""
        ...

    def wait_for(self, check: Callable[[], T | None], *, resource: str, what: str) -> T:
        """Poll `check` until it returns something other than None/False (or time out)."""
        ...


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
    # A dict field where only the new value's keys matter (tags others added are kept): a key
    # only the old value has is no difference.
    subset: bool = field(default=False, compare=False)

    def paths(self) -> list[Difference]:
        """Where inside the value the change is: one entry per differing leaf or list item."""
        old = self.old
        if self.subset and isinstance(old, dict) and isinstance(self.new, dict):
            old = {k: v for k, v in old.items() if k in self.new}
        return _differences(old, self.new, ())

    def lines(self, *, whole: bool = False) -> list[str]:
        """The change for a person: one line per path (`policy.Statement[1].Action[2]: + "x"`);
        long values are cut to what changed unless `whole`."""
        return [line for d in self.paths() for line in d.lines(self.field, whole=whole)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "old": self.old,
            "new": self.new,
            "paths": [d.to_dict() for d in self.paths()],
        }

    def __str__(self) -> str:
        return "\n".join(self.lines())


class _Absent:
    """A dict key or list item one side does not have (unlike None, a value of its own)."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()

# How many characters of a value a line shows before cutting it (`-v` shows every one), and how
# much unchanged text it keeps around a change inside a long string.
_SHOWN_CHARS = 80
_CONTEXT_CHARS = 24


@dataclass(frozen=True)
class Difference:
    """One difference inside a field's value: at `path` (keys and list indexes) `old` became
    `new`; ABSENT on one side means the key or item was added or removed."""

    path: tuple[str | int, ...]
    old: Any
    new: Any

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": list(self.path)}
        if self.old is not ABSENT:
            out["old"] = self.old
        if self.new is not ABSENT:
            out["new"] = self.new
        return out

    def path_text(self) -> str:
        """The path as it reads in a plan: `Statement[1].Action[2]`, `tags["iotpipe:stack"]`."""
        return _path_text(self.path).removeprefix(".")

    def lines(self, field_name: str, *, whole: bool = False) -> list[str]:
        label = field_name + _path_text(self.path)
        old, new = self.old, self.new
        if old is ABSENT or (old is None and _is_container(new)):
            return _listed(label, "+", new, whole)
        if new is ABSENT or (new is None and _is_container(old)):
            return _listed(label, "-", old, whole)
        if isinstance(old, str) and isinstance(new, str) and not whole:
            return [f"{label}: {' -> '.join(_excerpts(old, new))}"]
        return [f"{label}: {_shown(old, whole)} -> {_shown(new, whole)}"]


def _differences(old: Any, new: Any, path: tuple[str | int, ...]) -> list[Difference]:
    if normal(old) == normal(new):
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(old.keys() | new.keys(), key=str):
            found += _differences(old.get(key, ABSENT), new.get(key, ABSENT), (*path, key))
        return found
    if isinstance(old, list) and isinstance(new, list):
        return _list_differences(old, new, path)
    return [Difference(path, old, new)]


def _list_differences(
    old: list[Any], new: list[Any], path: tuple[str | int, ...]
) -> list[Difference]:
    """Items aligned as a text diff aligns lines: an inserted Action is one addition, not a
    change of every item after it; an item changed in place (a statement that gained an
    Action) is diffed inside."""
    matcher = SequenceMatcher(a=[_key(v) for v in old], b=[_key(v) for v in new], autojunk=False)
    found: list[Difference] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        pairs = _pair_similar(old, range(i1, i2), new, range(j1, j2))
        paired_old = {i for i, _ in pairs}
        paired_new = {j: i for i, j in pairs}
        found += [
            Difference((*path, i), old[i], ABSENT) for i in range(i1, i2) if i not in paired_old
        ]
        for j in range(j1, j2):
            if j in paired_new:
                found += _differences(old[paired_new[j]], new[j], (*path, j))
            else:
                found.append(Difference((*path, j), ABSENT, new[j]))
    return found


# Two list items this alike (difflib's ratio of their JSON) are one item changed, not a removal
# and an addition.
_SAME_ITEM_RATIO = 0.6


def _pair_similar(
    old: list[Any], old_range: range, new: list[Any], new_range: range
) -> list[tuple[int, int]]:
    """Pairs (old index, new index) of items that are one item changed, in order."""
    if len(old_range) == len(new_range):
        return list(zip(old_range, new_range, strict=True))
    pairs: list[tuple[int, int]] = []
    next_new = new_range.start
    for i in old_range:
        scored = [
            (SequenceMatcher(a=_key(old[i]), b=_key(new[j]), autojunk=False).ratio(), j)
            for j in range(next_new, new_range.stop)
        ]
        ratio, j = max(scored, default=(0.0, 0))
        if ratio >= _SAME_ITEM_RATIO:
            pairs.append((i, j))
            next_new = j + 1
    return pairs


def _is_container(value: Any) -> bool:
    return isinstance(value, dict | list)


def _key(value: Any) -> str:
    return json.dumps(normal(value), sort_keys=True)


def _path_text(path: tuple[str | int, ...]) -> str:
    parts = []
    for step in path:
        if isinstance(step, int):
            parts.append(f"[{step}]")
        elif step.isidentifier():
            parts.append(f".{step}")
        else:
            parts.append(f"[{json.dumps(step, ensure_ascii=False)}]")
    return "".join(parts)


def _text(value: Any) -> str:
    if value is None:
        return "(none)"
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)


def _shown(value: Any, whole: bool) -> str:
    text = _text(value)
    if whole or len(text) <= _SHOWN_CHARS:
        return text
    return f"{text[:_SHOWN_CHARS]}... ({len(text) - _SHOWN_CHARS} more characters; -v shows all)"


def _listed(label: str, sign: str, value: Any, whole: bool) -> list[str]:
    """An added (+) or removed (-) value; a long dict or list is listed leaf by leaf, so every
    Action of an added policy statement can be read."""
    if whole or not _is_container(value) or len(_text(value)) <= _SHOWN_CHARS:
        return [f"{label}: {sign} {_shown(value, whole)}"]
    items = value.items() if isinstance(value, dict) else enumerate(value)
    return [
        line
        for key, item in items
        for line in _listed(label + _path_text((key,)), sign, item, whole)
    ]


def _excerpts(old: str, new: str) -> tuple[str, str]:
    """Two long strings cut to where they differ, with some unchanged text either side."""
    if max(len(_text(old)), len(_text(new))) <= _SHOWN_CHARS:
        return _text(old), _text(new)
    start = _common_prefix_length(old, new)
    end = _common_prefix_length(old[start:][::-1], new[start:][::-1])

    def excerpt(text: str) -> str:
        lead = "..." if start > _CONTEXT_CHARS else ""
        before = text[max(start - _CONTEXT_CHARS, 0) : start]
        middle = text[start : len(text) - end]
        if len(middle) > _SHOWN_CHARS:
            more = len(middle) - _SHOWN_CHARS
            shown = json.dumps(before + middle[:_SHOWN_CHARS], ensure_ascii=False)
            return f"{lead}{shown}... ({more} more characters; -v shows all)"
        after = text[len(text) - end : len(text) - end + _CONTEXT_CHARS]
        tail = "..." if end > _CONTEXT_CHARS else ""
        return lead + json.dumps(before + middle + after, ensure_ascii=False) + tail

    return excerpt(old), excerpt(new)


def _common_prefix_length(a: str, b: str) -> int:
    pairs = zip(a, b, strict=False)
    return next((i for i, (x, y) in enumerate(pairs) if x != y), min(len(a), len(b)))


class Resource(ABC):
    """One AWS resource the stack owns.

    A subclass declares its field table (`fields`, `writes`), its service's `tagging` rule and,
    where AWS needs it, the `settled` state it must be in to take a change; it implements only
    what cannot be declared: how to observe, create and delete it (see iotpipe.engine.fields).
    """

    kind: ClassVar[str]
    # Data stores survive `down` unless --delete-data.
    data_store: ClassVar[bool] = False
    # An optional resource that raises `Unavailable` is skipped with a warning, not a failure.
    optional: ClassVar[bool] = False
    # The error codes its service answers when it does not exist, and when it exists already
    # (`find`, `remove` and `make` take them for "absent" and "done").
    absent: ClassVar[tuple[str, ...]] = ()
    present: ClassVar[tuple[str, ...]] = ()
    fields: ClassVar[tuple[Field, ...]] = ()
    writes: ClassVar[tuple[Write, ...]] = ()
    tagging: ClassVar[Tagging | None] = None
    settled: ClassVar[Settled | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        problems = field_table_problems(cls)
        if problems:
            raise TypeError(f"{cls.__name__}: " + "; ".join(problems))

    # How a resource named within another is written in messages (a Glue table: database.table).
    joiner: ClassVar[str] = "/"

    def __init__(
        self,
        ctx: Any,
        name: str,
        depends_on: tuple[str, ...] = (),
        *,
        within: Resource | None = None,
    ) -> None:
        # What the resource reads its desired state from (iotpipe.context.StackContext in the
        # pipeline); the engine itself never reads it.
        self.ctx = ctx
        self.name = name
        # A resource that lives in another (a table in its database) is named within it, and
        # needs it.
        self.within = within.name if within is not None else None
        self.depends_on = (*depends_on, within.key) if within is not None else depends_on

    @property
    def key(self) -> str:
        return "/".join(p for p in (self.kind, self.within, self.name) if p is not None)

    @property
    def label(self) -> str:
        """How messages name this resource."""
        if self.within is None:
            return f"{self.kind} {self.name}"
        return f"{self.kind} {self.within}{self.joiner}{self.name}"

    @property
    def service(self) -> str:
        """The AWS service its calls go to: its kind's prefix (kinesis.stream: kinesis)."""
        return self.kind.split(".", 1)[0]

    def call(self, aws: AwsAccess, operation: str, **params: Any) -> Any:
        """`aws.call` to this resource's service, its failures naming this resource."""
        return aws.call(self.service, operation, resource=self.label, **params)

    def find(self, aws: AwsAccess, operation: str, **params: Any) -> Any:
        """A read of this resource: None when AWS answers that it does not exist (`absent`)."""
        return self.call(aws, operation, missing=self.absent, **params)

    def make(self, aws: AwsAccess, operation: str, **params: Any) -> Any:
        """A create: None when AWS answers that it exists already (`present`: another run made
        it), which the engine's read after the create then sees."""
        return self.call(aws, operation, missing=self.present, **params)

    def remove(self, aws: AwsAccess, operation: str, **params: Any) -> Any:
        """A delete: done when AWS answers that the resource is gone already (`absent`)."""
        return self.call(aws, operation, missing=self.absent, **params)

    @abstractmethod
    def desired(self) -> dict[str, Any]:
        """The spec this resource should have, as plain JSON-able values, keyed by field name
        (and `tags`); it reads the context only, never AWS."""

    @abstractmethod
    def observe(self, aws: AwsAccess) -> dict[str, Any] | None:
        """AWS's answers about the resource (what its fields are read from), or None when it
        is absent. The engine reads the fields and the tags from it."""

    @abstractmethod
    def create(self, aws: AwsAccess) -> None:
        """Create the resource; the engine then re-observes and updates whatever still differs."""

    @abstractmethod
    def delete(self, aws: AwsAccess) -> None:
        """Delete the resource (and wait until it is gone where later steps depend on that)."""

    def grants(self) -> list[Grant]:
        """The IAM permissions that observing, creating, changing and deleting this resource
        take, for the policies `iam-policy` prints (see iotpipe.permissions)."""
        return []

    def preflight(self, aws: AwsAccess) -> None:
        """Before an `up` is planned: confirm what this resource needs from AWS that no stack
        owns (a public layer version), raising with the setting to fix. Nothing by default."""
        return None

    def notes(self, observed: State) -> list[str]:
        """Facts about the observed state worth showing with the plan (none by default)."""
        return []

    def keep_note(self, observed: State) -> str:
        """Why `down` without --delete-data keeps this data store."""
        return "data store (use --delete-data to remove)"

    def delete_note(self, observed: State) -> str | None:
        """What deleting the observed resource takes with it, when that is worth showing."""
        return None

    def owner(self, observed: State) -> str | None:
        """The stack that owns the observed resource, or None when nothing records one."""
        tags = observed.get("tags") or {}
        return tags.get(STACK_TAG)

    def read(self, aws: AwsAccess) -> State | None:
        """The latest state: observe, then read every field (and the tags) from the answers."""
        raw = self.observe(aws)
        return None if raw is None else self.state(aws, raw)

    def state(self, aws: AwsAccess, raw: dict[str, Any]) -> State:
        """The fields read from `observe`'s answer, and the tags by the tagging rule."""
        values = {f.name: f.value(raw) for f in self.fields}
        if self.tagging is not None:
            values["tags"] = self.tagging.observe(self, aws, raw)
        return State(values, raw)

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise IotpipeError(
            f"internal: {self.kind} wants field {name!r} but declares no Field for it "
            "(no reader, no writer)"
        )

    def diff(self, observed: State | dict[str, Any]) -> list[Change]:
        desired = self.desired()
        problems = self.problems(desired)
        if problems:
            raise IotpipeError("internal: " + "; ".join(problems) + " (no reader, no writer)")
        changes = []
        for name, want in desired.items():
            have = observed.get(name)
            f = TAGS if name == "tags" else self.field(name)
            if f.differs(have, want):
                changes.append(Change(name, have, want, subset=f.compare == "subset"))
        return changes

    def problems(self, desired: dict[str, Any]) -> list[str]:
        """Desired fields this resource cannot read or write (no Field, no tagging rule)."""
        problems = []
        declared = {f.name for f in self.fields}
        for name in desired:
            if name == "tags":
                if self.tagging is None or self.tagging.write is None:
                    problems.append(
                        f"{self.key}: wants tags but declares no Tagging rule that writes"
                    )
            elif name not in declared:
                problems.append(f"{self.key}: wants {name!r} but declares no Field for it")
        return problems

    def replaces(self, changes: list[Change]) -> bool:
        """Whether a change is to a field AWS cannot change in place."""
        return any(c.field != "tags" and self.field(c.field).write == REPLACE for c in changes)


# The engine's own tags field: only the stack's own tags must match (others' are kept).
TAGS = Field("tags", "tags", "tags", compare="subset")


def field_table_problems(cls: type[Resource]) -> list[str]:
    """What is wrong with a resource's field table: a field whose write is not declared, a
    write no field uses, a name declared twice, a write that unsettles with nothing to wait for."""
    problems = []
    writes = {w.name for w in cls.writes}
    names = [f.name for f in cls.fields]
    for name in {n for n in names if names.count(n) > 1}:
        problems.append(f"field {name!r} declared twice")
    if "tags" in names:
        problems.append("declares a tags field: tags are the engine's, declare a Tagging rule")
    for f in cls.fields:
        if f.write != REPLACE and f.write not in writes:
            problems.append(f"field {f.name!r} has no writer ({f.write!r} is not declared)")
    used = {f.write for f in cls.fields}
    for w in cls.writes:
        if w.name not in used:
            problems.append(f"write {w.name!r} sets no field")
        if w.settles and cls.settled is None:
            problems.append(f"write {w.name!r} unsettles the resource, which declares no Settled")
    if len(writes) != len(cls.writes):
        problems.append("a write declared twice")
    return problems


def desired_problems(r: Resource) -> list[str]:
    """Desired fields the resource cannot read or write (a test runs this on every resource)."""
    return r.problems(r.desired())


@dataclass
class Step:
    action: Action
    resource: Resource
    changes: list[Change] = field(default_factory=list)
    note: str | None = None
    # The latest observation the plan was made from: the update's writes start from it.
    observed: State | None = field(default=None, compare=False, repr=False)

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
