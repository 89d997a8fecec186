"""A resource's field table: where each managed field is read, how it is compared, what sets it.

A resource declares its fields once (`Resource.fields`) and the write calls that set them
(`Resource.writes`); the engine reads every field from the resource's latest observation, diffs,
and dispatches the write calls of the fields that changed, in the order the writes are declared,
each once. A desired field with no `Field`, or a `Field` whose write is not declared, is refused
(at class definition for the writes, in `check_fields` for the desired spec), so no field can be
compared without also being written.

Tags are the engine's too: a resource declares its service's `Tagging` rule and never reads or
writes a tag itself. A resource that must settle before it takes a change (ACTIVE, say) declares
`Settled`, and the engine waits for it before the first write and after each write that unsettles.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import jmespath

if TYPE_CHECKING:
    from iotpipe.engine.model import AwsAccess, Resource

# A field AWS cannot change in place: a change to it means replace.
REPLACE = "replace"


class State(dict[str, Any]):
    """A resource's latest observation: its fields by name (and `tags`), with the AWS answers
    they were read from in `raw`, for the write calls that need more (a version id, a URL)."""

    def __init__(self, values: Mapping[str, Any], raw: Mapping[str, Any]) -> None:
        super().__init__(values)
        self.raw: dict[str, Any] = dict(raw)


Reader = str | Callable[[dict[str, Any]], Any]


def _reader(read: Reader) -> Callable[[dict[str, Any]], Any]:
    """A function of the raw observation: `read` itself, or its JMESPath expression compiled."""
    if callable(read):
        return read
    return jmespath.compile(read).search


Compare = Literal["exact", "subset"] | Callable[[Any], Any]


@dataclass(frozen=True)
class Field:
    """One managed field.

    `read`: a JMESPath expression into the resource's raw observation, or a function of it.
    `write`: the name of the `Write` that sets it, or REPLACE when AWS cannot change it in place.
    `compare`: "exact" (JSON-equal, key order and number types aside), "subset" (a dict where
    only the desired keys matter), or a normaliser applied to both sides before comparing.
    """

    name: str
    read: Reader
    write: str
    compare: Compare = "exact"

    def __post_init__(self) -> None:
        # A path is parsed once, here (a wrong one fails when the class is defined).
        object.__setattr__(self, "_reader", _reader(self.read))

    def value(self, raw: dict[str, Any]) -> Any:
        return self._reader(raw)  # type: ignore[attr-defined]

    def differs(self, have: Any, want: Any) -> bool:
        if self.compare == "subset":
            have_dict = have if isinstance(have, dict) else {}
            return any(normal(have_dict.get(k)) != normal(v) for k, v in (want or {}).items())
        if callable(self.compare):
            return normal(self.compare(have)) != normal(self.compare(want))
        return normal(have) != normal(want)


# (resource, aws, desired spec, latest observed state)
WriteCall = Callable[[Any, "AwsAccess", dict[str, Any], State], None]


@dataclass(frozen=True)
class Write:
    """A write call that sets one or more fields. `settles`: the resource leaves its settled
    state while AWS applies it (the engine waits again before the next write)."""

    name: str
    apply: WriteCall
    settles: bool = False


def call(
    service: str,
    operation: str,
    params: Callable[[Any, dict[str, Any], State], dict[str, Any]],
    *,
    name: str | None = None,
    settles: bool = False,
    **options: Any,
) -> Write:
    """The common write: one AWS call whose parameters `params(resource, want, have)` builds;
    `options` (retry_on, missing) go to the call as they are."""

    def apply(r: Resource, aws: AwsAccess, want: dict[str, Any], have: State) -> None:
        aws.call(service, operation, resource=r.label, **options, **params(r, want, have))

    return Write(name or operation, apply, settles)


@dataclass(frozen=True)
class Settled:
    """The state a resource must be in before it takes a change: `read` gives its status from
    the raw observation; `ready` are the statuses that take one; `failed` gives the message to
    raise for a status that will never settle (None: not failed); `waiting`, what to tell the
    user, once, when a wait begins (the resource's own account of what AWS is doing)."""

    read: Reader
    ready: frozenset[str]
    what: str
    failed: Callable[[dict[str, Any]], str | None] = field(default=lambda raw: None)
    waiting: Callable[[dict[str, Any]], str] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "_reader", _reader(self.read))

    def status(self, raw: dict[str, Any]) -> Any:
        return self._reader(raw)  # type: ignore[attr-defined]


# How a service's tagging API writes a tag set: a Key/Value list, a TagKey/TagValue list, or a map.
TagShape = Literal["list", "tagkey-list", "map"]


def tags_from(shape: TagShape, value: Any) -> dict[str, str]:
    if not value:
        return {}
    if shape == "map":
        return dict(value)
    key, val = ("TagKey", "TagValue") if shape == "tagkey-list" else ("Key", "Value")
    return {t[key]: t[val] for t in value}


def tags_as(shape: TagShape, tags: Mapping[str, str]) -> Any:
    if shape == "map":
        return dict(tags)
    key, val = ("TagKey", "TagValue") if shape == "tagkey-list" else ("Key", "Value")
    return [{key: k, val: v} for k, v in tags.items()]


@dataclass(frozen=True)
class Tagging:
    """One service's tagging API.

    `read` lists the tags (found at `found` in its answer); `write` adds them under the parameter
    `param` (in `write_shape` where that differs from how they are read, or through `wrap` where
    they nest); `target(resource, raw)` names the resource in both calls. `write=None`: the
    resource cannot be tagged itself and its tags are those of what it belongs to (a log
    stream's group), read for ownership only. `whole`: the write replaces every tag (S3), so the
    tags others added are written back with ours.
    """

    service: str
    # None: the tags come with the resource's own answer (GetRole's, say), at `found` in it.
    read: str | None
    write: str | None
    target: Callable[[Any, dict[str, Any]], dict[str, Any]]
    shape: TagShape = "list"
    found: str = "Tags"
    param: str = "Tags"
    missing: tuple[str, ...] = ()
    write_shape: TagShape | None = None
    whole: bool = False
    wrap: Callable[[Any], dict[str, Any]] | None = None

    def observe(self, r: Resource, aws: AwsAccess, raw: dict[str, Any]) -> dict[str, str]:
        if self.read is None:
            return tags_from(self.shape, jmespath.search(self.found, raw))
        answer = aws.call(
            self.service,
            self.read,
            resource=r.label,
            missing=self.missing,
            **self.target(r, raw),
        )
        if answer is None:  # the service's "no tags" answer (S3's NoSuchTagSet)
            return {}
        return tags_from(self.shape, jmespath.search(self.found, answer))

    def apply(self, r: Resource, aws: AwsAccess, want: dict[str, str], have: State) -> None:
        if self.write is None:
            raise RuntimeError(f"internal: {r.kind} tags belong to another resource")
        tags = {**(have.get("tags") or {}), **want} if self.whole else want
        value = tags_as(self.write_shape or self.shape, tags)
        params = self.wrap(value) if self.wrap else {self.param: value}
        aws.call(self.service, self.write, resource=r.label, **self.target(r, have.raw), **params)


def normal(value: Any) -> Any:
    """Compare JSON-ish values without caring about key order or number types."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))
