"""Observe, diff, plan, execute: the reconcile loop shared by plan, up, status and down.

Observation runs concurrently (read-only). Execution follows the dependency graph: a step
starts once every step it depends on has finished, independent steps run side by side, and the
first failure stops new steps from starting (running ones finish) before it is reported.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from iotpipe.engine.fields import State
from iotpipe.engine.model import (
    Action,
    AwsAccess,
    Change,
    Deferred,
    Plan,
    Resource,
    Step,
    Unavailable,
)
from iotpipe.errors import AwsError, IotpipeError

MAX_WORKERS = 8
# Observing is read-only and latency-bound: more of it runs side by side (throttling is retried).
OBSERVE_WORKERS = 48

# (step, event, detail) with event one of "start", "done", "failed", "skipped" (detail: the
# error, if any) or "waiting" (detail: what the running step waits for, as a sentence).
ProgressCallback = Callable[[Step, str, BaseException | str | None], None]

# Some describe calls answer "not found" for a moment after a create (eventual consistency):
# the error codes that mean "not visible yet" while the engine re-reads a resource it created.
NOT_YET_VISIBLE = frozenset({"ResourceNotFoundException", "NoSuchEntity"})

# The running step's way to report a long wait; one per worker thread.
_running = threading.local()


def report_wait(message: str) -> None:
    """Tell the user what the running step is waiting for (AWS finishing a deletion, say)."""
    notify = getattr(_running, "notify", None)
    if notify is not None:
        notify(message)


def _apply_reporting(aws: AwsAccess, step: Step, notify: ProgressCallback) -> None:
    _running.notify = lambda message: notify(step, "waiting", message)
    try:
        apply_step(aws, step)
    finally:
        _running.notify = None


def order(resources: Iterable[Resource]) -> list[Resource]:
    """Topological order (dependencies first), stable in declaration order; rejects cycles."""
    by_key = {r.key: r for r in resources}
    for r in by_key.values():
        for dep in r.depends_on:
            if dep not in by_key:
                raise IotpipeError(f"internal: {r.key} depends on unknown resource {dep}")
    done: dict[str, Resource] = {}
    visiting: set[str] = set()

    def visit(r: Resource) -> None:
        if r.key in done:
            return
        if r.key in visiting:
            raise IotpipeError(f"internal: dependency cycle through {r.key}")
        visiting.add(r.key)
        for dep in r.depends_on:
            visit(by_key[dep])
        visiting.discard(r.key)
        done[r.key] = r

    for r in by_key.values():
        visit(r)
    return list(done.values())


Observed = State | None | Unavailable


def _observe(aws: AwsAccess, r: Resource) -> Observed:
    try:
        return r.read(aws)
    except Unavailable as exc:
        if not r.optional:
            raise
        return exc


def observe_all(
    aws: AwsAccess, resources: list[Resource], *, preflight: bool = False
) -> dict[str, Observed]:
    """Each resource's state; an optional resource whose service is unavailable maps to why.

    With `preflight`, each resource's preflight check runs alongside (an `up` plan's checks).
    """
    with ThreadPoolExecutor(max_workers=OBSERVE_WORKERS) as pool:
        checks = [pool.submit(r.preflight, aws) for r in resources] if preflight else []
        futures = {r.key: pool.submit(_observe, aws, r) for r in resources}
        for check in checks:
            check.result()
        return {key: f.result() for key, f in futures.items()}


def _skip_reason(r: Resource, current: Observed, skipped: dict[str, str]) -> str | None:
    """Why `r` is skipped: its service is unavailable, or a resource it needs was skipped."""
    if isinstance(current, Unavailable):
        return current.reason
    for dep in r.depends_on:
        if dep in skipped:
            return f"skipped with {dep}"
    return None


def plan_up(aws: AwsAccess, resources: list[Resource], stack: str) -> Plan:
    ordered = order(resources)
    observed = observe_all(aws, ordered, preflight=True)
    steps = []
    skipped: dict[str, str] = {}
    for r in ordered:
        current = observed[r.key]
        reason = _skip_reason(r, current, skipped)
        if reason is not None:
            skipped[r.key] = reason
            steps.append(Step(Action.SKIP, r, note=reason))
            continue
        assert not isinstance(current, Unavailable)
        if current is None:
            steps.append(Step(Action.CREATE, r))
            continue
        owner = r.owner(current)
        if owner is not None and owner != stack:
            raise AwsError(
                f"exists but belongs to stack {owner!r}",
                resource=r.label,
                hint="choose another [stack] name, or remove the other stack first",
            )
        changes = r.diff(current)
        note = "; ".join(r.notes(current)) or None
        if not changes:
            steps.append(Step(Action.NOOP, r, note=note, observed=current))
        elif r.replaces(changes):
            steps.append(Step(Action.REPLACE, r, changes, note="AWS cannot change this in place"))
        else:
            steps.append(Step(Action.UPDATE, r, changes, note=note, observed=current))
    return Plan(steps)


def plan_down(aws: AwsAccess, resources: list[Resource], stack: str, *, delete_data: bool) -> Plan:
    ordered = order(resources)
    observed = observe_all(aws, ordered)
    steps = []
    for r in reversed(ordered):
        current = observed[r.key]
        if current is None or isinstance(current, Unavailable):
            continue
        owner = r.owner(current)
        if owner != stack:
            steps.append(Step(Action.KEEP, r, note=f"not owned by stack {stack!r}"))
        elif r.data_store and not delete_data:
            steps.append(Step(Action.KEEP, r, note=r.keep_note(current)))
        else:
            steps.append(Step(Action.DELETE, r, note=r.delete_note(current)))
    _keep_what_kept_resources_need(steps)
    return Plan(steps)


def _keep_what_kept_resources_need(steps: list[Step]) -> None:
    """A data store that stays keeps what it depends on (devices keep their thing type)."""
    by_key = {s.resource.key: s for s in steps}
    kept = [s for s in steps if s.action is Action.KEEP and s.resource.data_store]
    while kept:
        step = kept.pop()
        for dep in step.resource.depends_on:
            needed = by_key.get(dep)
            if needed is not None and needed.action is Action.DELETE:
                needed.action = Action.KEEP
                needed.note = f"kept: {step.resource.label} needs it"
                kept.append(needed)


@dataclass
class StatusLine:
    resource: Resource
    state: str  # "in sync", "drifted", "missing", "unavailable"
    changes: list

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.resource.kind,
            "name": self.resource.name,
            "state": self.state,
            "drift": [c.to_dict() for c in self.changes],
        }


def status(aws: AwsAccess, resources: list[Resource]) -> list[StatusLine]:
    ordered = order(resources)
    observed = observe_all(aws, ordered)
    lines = []
    for r in ordered:
        current = observed[r.key]
        if isinstance(current, Unavailable):
            lines.append(StatusLine(r, "unavailable", []))
        elif current is None:
            lines.append(StatusLine(r, "missing", []))
        else:
            changes = r.diff(current)
            lines.append(StatusLine(r, "drifted" if changes else "in sync", changes))
    return lines


def apply_step(aws: AwsAccess, step: Step) -> None:
    r = step.resource
    if step.action is Action.CREATE:
        r.create(aws)
        _converge(aws, r)
    elif step.action is Action.UPDATE:
        latest = step.observed if step.observed is not None else _read_existing(aws, r)
        update(aws, r, step.changes, latest)
    elif step.action is Action.REPLACE:
        r.delete(aws)
        r.create(aws)
        _converge(aws, r)
    elif step.action is Action.DELETE:
        r.delete(aws)


def update(aws: AwsAccess, r: Resource, changes: list[Change], latest: State) -> None:
    """Apply exactly these changes: each write call that sets a changed field, once, in the
    order the resource declares its writes, then the tags by the resource's tagging rule. Each
    write is handed the latest state (read again only after a write that unsettles it), and is
    skipped when that state shows its fields as wanted already."""
    want = r.desired()
    changed = {c.field for c in changes}
    latest = settle(aws, r, latest)
    for write in r.writes:
        # Against the latest state: an earlier write (enabling a key, say) may have brought
        # this one's fields to what is wanted already.
        if any(
            f.write == write.name and f.differs(latest.get(f.name), want[f.name])
            for f in r.fields
            if f.name in changed
        ):
            write.apply(r, aws, want, latest)
            if write.settles:
                latest = settle(aws, r, None)
    # Tags last: a resource some write brings back into use (a KMS key pending deletion, say)
    # takes them then, and a settled one takes them at all (Kinesis: ACTIVE only).
    if "tags" in changed:
        assert r.tagging is not None  # diff() refuses tags without a rule
        r.tagging.apply(r, aws, want["tags"], latest)


def settle(aws: AwsAccess, r: Resource, latest: State | None) -> State:
    """The resource's state once it is settled (declared by `Resource.settled`): `latest` if it
    already is, else read again until it is. A failed status raises its message."""
    settled = _Settling(r)
    if latest is not None and settled.accepts(latest.raw):
        return latest

    def check() -> State | None:
        # The status is in `observe`'s answer: the tags are read once it is settled, not at
        # every poll.
        raw = r.observe(aws)
        return r.state(aws, raw) if raw is not None and settled.accepts(raw) else None

    what = r.settled.what if r.settled else "to be readable"
    return aws.wait_for(check, resource=r.label, what=what)


class _Settling:
    """One wait for a resource's settled state: a failed status raises its message, and the
    first unsettled one is reported (once) with what the resource says it is doing."""

    def __init__(self, r: Resource) -> None:
        self.r = r
        self.told = False

    def accepts(self, raw: dict[str, Any]) -> bool:
        """Whether `observe`'s answer shows the resource settled."""
        settled = self.r.settled
        if settled is None:
            return True
        failure = settled.failed(raw)
        if failure:
            raise AwsError(failure, resource=self.r.label)
        if settled.status(raw) in settled.ready:
            return True
        if not self.told and settled.waiting is not None:
            self.told = True
            report_wait(settled.waiting(raw))
        return False


def _read_existing(aws: AwsAccess, r: Resource) -> State:
    state = r.read(aws)
    if state is None:
        raise AwsError("disappeared while being updated", resource=r.label)
    return state


def _converge(aws: AwsAccess, r: Resource) -> None:
    """After a create, wait until the resource is visible and settled, then set whatever the
    create call could not (tags, policies, settings)."""
    latest = _observe_after_create(aws, r)
    changes = r.diff(latest)
    if changes:
        update(aws, r, changes, latest)


def _observe_after_create(aws: AwsAccess, r: Resource) -> State:
    settled = _Settling(r)

    def visible() -> State | None:
        try:
            raw = r.observe(aws)
            return r.state(aws, raw) if raw is not None and settled.accepts(raw) else None
        except AwsError as exc:
            if exc.code not in NOT_YET_VISIBLE:
                raise
            return None

    what = r.settled.what if r.settled else "to become visible after create"
    return aws.wait_for(visible, resource=r.label, what=what)


def execute(
    aws: AwsAccess,
    plan: Plan,
    *,
    on_progress: ProgressCallback | None = None,
    reverse: bool = False,
) -> None:
    """Run the plan's changing steps in dependency order (reverse order for deletions).

    An optional resource that turns out to be unavailable while applying becomes a SKIP step
    (and so do the steps that wait for it) instead of failing the run.
    """
    steps = {s.resource.key: s for s in plan.changes}
    if not steps:
        return
    # Edges: a step waits for the steps it depends on (or, when deleting, for its dependents).
    waits_for: dict[str, set[str]] = {key: set() for key in steps}
    for key, step in steps.items():
        for dep in step.resource.depends_on:
            if dep in steps:
                if reverse:
                    waits_for[dep].add(key)
                else:
                    waits_for[key].add(dep)
    notify = on_progress or (lambda *_: None)
    pending = dict(waits_for)
    finished: set[str] = set()
    failure: tuple[Step, BaseException] | None = None
    running: dict[Future, Step] = {}
    with ThreadPoolExecutor(max_workers=MAX_WORKERS) as pool:
        while pending or running:
            if failure is None:
                ready = [k for k, deps in pending.items() if deps <= finished]
                for key in ready:
                    del pending[key]
                    step = steps[key]
                    blocked = next(
                        (d for d in waits_for[key] if steps[d].action is Action.SKIP), None
                    )
                    if blocked is not None:
                        _skip(step, f"skipped with {blocked}")
                        finished.add(key)
                        notify(step, "skipped", None)
                        continue
                    notify(step, "start", None)
                    running[pool.submit(_apply_reporting, aws, step, notify)] = step
                if not running and pending and any(d <= finished for d in pending.values()):
                    continue
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                step = running.pop(future)
                error = future.exception()
                if error is None:
                    finished.add(step.resource.key)
                    notify(step, "done", None)
                elif isinstance(error, Deferred):
                    # Done as far as AWS allows now; what depends on it goes ahead.
                    step.action = Action.DEFER
                    step.note = error.reason
                    finished.add(step.resource.key)
                    notify(step, "skipped", error)
                elif isinstance(error, Unavailable) and step.resource.optional:
                    _skip(step, error.reason)
                    finished.add(step.resource.key)
                    notify(step, "skipped", error)
                else:
                    notify(step, "failed", error)
                    failure = failure or (step, error)
    if failure is not None:
        step, error = failure
        if isinstance(error, IotpipeError):
            raise error
        raise AwsError(f"{step.action} failed: {error}", resource=step.resource.label) from error


def _skip(step: Step, reason: str) -> None:
    step.action = Action.SKIP
    step.changes = []
    step.note = reason
