"""The engine on its own: a fake resource in a fake account, planned and executed without AWS.

The engine (iotpipe/engine/) imports nothing of the pipeline, so it can be driven by any resource
and any context; the last tests prove the imports by reading them.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

import iotpipe.engine
from iotpipe.engine.fields import REPLACE, Field, Settled, State, Tagging, Write, call
from iotpipe.engine.model import STACK_TAG, Action, Change, Resource, desired_problems
from iotpipe.engine.reconcile import execute, plan_down, plan_up, status
from iotpipe.errors import AwsError, IotpipeError

T = TypeVar("T")
STACK = "plant-7"


@dataclass
class Context:
    """What the fake resources read: the stack's name and each resource's settings."""

    stack: str
    settings: dict[str, dict[str, Any]]


@dataclass
class Account:
    """A fake AWS account: each resource's state as `observe` reads it, and every call made."""

    state: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    # Reads of a resource that answer "not found" right after its creation.
    lagging_reads: dict[str, int] = field(default_factory=dict)
    # Reads that still show a settling status (e.g. WARMING) before it turns READY.
    lagging_status: int = 0
    tag_reads: int = 0
    on_write: Callable[[str, str], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, call: str, key: str) -> None:
        with self._lock:
            self.calls.append((call, key))

    def wait_for(self, check: Callable[[], T | None], *, resource: str, what: str) -> T:
        for _ in range(10):
            result = check()
            if result is not None and result is not False:
                return result
        raise AwsError(f"never came {what}", resource=resource)

    def call(self, service: str, operation: str, *, resource: str, **params: Any) -> Any:
        """The fake service: list_tags, tag_resource and set_<field>, by the resource's key."""
        key = params.pop("Key")
        params.pop("missing", None)
        if operation == "list_tags":
            self.tag_reads += 1
            aws_state = self.state[key]
            return {"Tags": dict(aws_state["tags"])}
        self.record(operation, key)
        if self.on_write is not None:
            self.on_write(operation, key)
        if operation == "tag_resource":
            self.state[key]["tags"].update(params["Tags"])
        elif operation.startswith("set_"):  # set_size(Size=...), set_heat(Heat=...)
            name = operation.removeprefix("set_")
            self.state[key][name] = params[name.capitalize()]
        return {}


def _by_key(r: Resource, raw: dict[str, Any]) -> dict[str, Any]:
    return {"Key": r.key}


class Machine(Resource):
    """A resource whose create call cannot set its tags (as many AWS create calls cannot), and
    whose shape AWS cannot change in place."""

    kind = "fake.machine"
    fields = (
        Field("size", "size", "set_size"),
        Field("shape", "shape", REPLACE),
    )
    writes = (call("fake", "set_size", lambda r, want, have: {"Key": r.key, "Size": want["size"]}),)
    tagging = Tagging("fake", "list_tags", "tag_resource", _by_key, shape="map")

    def desired(self) -> dict[str, Any]:
        return {**self.ctx.settings[self.name], "tags": {STACK_TAG: self.ctx.stack}}

    def observe(self, aws: Account) -> dict[str, Any] | None:
        aws.record("read", self.key)
        if aws.lagging_reads.get(self.key):
            aws.lagging_reads[self.key] -= 1
            raise AwsError("not found", resource=self.label, code="ResourceNotFoundException")
        state = aws.state.get(self.key)
        if state is None:
            return None
        if aws.lagging_status:
            aws.lagging_status -= 1
        elif state.get("status") == "WARMING":
            state["status"] = "READY"
        return {k: v for k, v in state.items() if k != "tags"}

    def create(self, aws: Account) -> None:
        aws.record("create", self.key)
        aws.state[self.key] = {**deepcopy(self.ctx.settings[self.name]), "tags": {}}

    def delete(self, aws: Account) -> None:
        aws.record("delete", self.key)
        del aws.state[self.key]


class Store(Machine):
    kind = "fake.store"
    data_store = True


def _mutations(account: Account) -> list[tuple[str, str]]:
    return [call for call in account.calls if call[0] != "read"]


@pytest.fixture
def ctx() -> Context:
    return Context(
        STACK,
        {"press": {"size": 1, "shape": "round"}, "line": {"size": 3, "shape": "flat"}},
    )


@pytest.fixture
def machines(ctx: Context) -> list[Resource]:
    # Declared after the machine it depends on: the engine orders by dependency.
    line = Machine(ctx, "line", depends_on=("fake.machine/press",))
    return [line, Machine(ctx, "press")]


def test_up_creates_in_dependency_order_and_converges_what_create_could_not_set(
    ctx, machines
) -> None:
    account = Account()
    plan = plan_up(account, machines, STACK)
    assert [(s.action, s.resource.key) for s in plan.steps] == [
        (Action.CREATE, "fake.machine/press"),
        (Action.CREATE, "fake.machine/line"),
    ]
    execute(account, plan)
    assert _mutations(account) == [
        ("create", "fake.machine/press"),
        ("tag_resource", "fake.machine/press"),
        ("create", "fake.machine/line"),
        ("tag_resource", "fake.machine/line"),
    ]
    assert account.state["fake.machine/line"] == {
        "size": 3,
        "shape": "flat",
        "tags": {STACK_TAG: STACK},
    }
    # Converged: a second plan changes nothing, and executing it makes no call that changes.
    account.calls.clear()
    again = plan_up(account, machines, STACK)
    assert again.is_empty
    assert {s.action for s in again.steps} == {Action.NOOP}
    execute(account, again)
    assert _mutations(account) == []


def test_a_changed_field_is_an_update_of_that_field_only(ctx, machines) -> None:
    account = Account()
    execute(account, plan_up(account, machines, STACK))
    ctx.settings["press"]["size"] = 2
    account.calls.clear()
    plan = plan_up(account, machines, STACK)
    assert [(s.action, s.resource.name, s.changes) for s in plan.changes] == [
        (Action.UPDATE, "press", [Change("size", 1, 2)])
    ]
    execute(account, plan)
    assert _mutations(account) == [("set_size", "fake.machine/press")]
    assert status(account, machines)[0].state == "in sync"


def test_a_field_aws_cannot_change_in_place_replaces_the_resource(ctx, machines) -> None:
    account = Account()
    execute(account, plan_up(account, machines, STACK))
    ctx.settings["press"]["shape"] = "square"
    account.calls.clear()
    plan = plan_up(account, machines, STACK)
    assert [(s.action, s.resource.name) for s in plan.changes] == [(Action.REPLACE, "press")]
    execute(account, plan)
    assert _mutations(account) == [
        ("delete", "fake.machine/press"),
        ("create", "fake.machine/press"),
        ("tag_resource", "fake.machine/press"),
    ]
    assert account.state["fake.machine/press"]["shape"] == "square"


def test_tags_others_added_are_no_difference(ctx, machines) -> None:
    account = Account()
    execute(account, plan_up(account, machines, STACK))
    account.state["fake.machine/press"]["tags"]["team"] = "ops"
    assert plan_up(account, machines, STACK).is_empty
    del account.state["fake.machine/press"]["tags"][STACK_TAG]
    lines = status(account, machines)
    assert [(line.resource.name, line.state) for line in lines] == [
        ("press", "drifted"),
        ("line", "in sync"),
    ]


def test_drift_is_reported_and_repaired(ctx, machines) -> None:
    account = Account()
    execute(account, plan_up(account, machines, STACK))
    account.state["fake.machine/line"]["size"] = 30
    [_, line] = status(account, machines)
    assert (line.state, line.changes) == ("drifted", [Change("size", 30, 3)])
    execute(account, plan_up(account, machines, STACK))
    assert account.state["fake.machine/line"]["size"] == 3


def test_not_found_right_after_create_is_read_again(ctx, machines) -> None:
    account = Account(lagging_reads={})
    plan = plan_up(account, machines, STACK)
    account.lagging_reads["fake.machine/press"] = 2
    execute(account, plan)
    assert account.state["fake.machine/press"]["tags"] == {STACK_TAG: STACK}
    reads = [call for call in account.calls if call == ("read", "fake.machine/press")]
    assert len(reads) == 1 + 2 + 1  # the plan's, two "not found", the one that sees it


def test_another_error_after_create_is_not_waited_out(ctx, machines) -> None:
    class Broken(Machine):
        def observe(self, aws: Account) -> dict[str, Any] | None:
            if self.key in aws.state:
                raise AwsError("access denied", resource=self.label, code="AccessDenied")
            return None

    account = Account()
    with pytest.raises(AwsError, match="access denied"):
        execute(account, plan_up(account, [Broken(ctx, "press")], STACK))


def test_up_refuses_a_resource_another_stack_owns(ctx, machines) -> None:
    account = Account()
    account.state["fake.machine/press"] = {"size": 1, "shape": "round", "tags": {STACK_TAG: "b"}}
    with pytest.raises(AwsError) as refused:
        plan_up(account, machines, STACK)
    assert "belongs to stack 'b'" in str(refused.value)
    assert refused.value.hint is not None


def test_down_deletes_dependents_first_and_keeps_what_it_does_not_own(ctx) -> None:
    press, line = Machine(ctx, "press"), Machine(ctx, "line", depends_on=("fake.machine/press",))
    other = Machine(Context("other-stack", {"belt": {"size": 1, "shape": "long"}}), "belt")
    account = Account()
    execute(account, plan_up(account, [press, line], STACK))
    execute(account, plan_up(account, [other], "other-stack"))
    account.calls.clear()
    plan = plan_down(account, [press, line, Machine(ctx, "belt")], STACK, delete_data=True)
    assert [(s.action, s.resource.name, s.note) for s in plan.steps] == [
        (Action.KEEP, "belt", f"not owned by stack {STACK!r}"),
        (Action.DELETE, "line", None),
        (Action.DELETE, "press", None),
    ]
    execute(account, plan, reverse=True)
    assert _mutations(account) == [
        ("delete", "fake.machine/line"),
        ("delete", "fake.machine/press"),
    ]
    assert list(account.state) == ["fake.machine/belt"]


def test_down_keeps_a_data_store_and_what_it_needs_unless_asked(ctx) -> None:
    ctx.settings["archive"] = {"size": 9, "shape": "box"}
    press = Machine(ctx, "press")
    archive = Store(ctx, "archive", depends_on=(press.key,))
    account = Account()
    execute(account, plan_up(account, [press, archive], STACK))
    kept = plan_down(account, [press, archive], STACK, delete_data=False)
    assert [(s.action, s.resource.name) for s in kept.steps] == [
        (Action.KEEP, "archive"),
        (Action.KEEP, "press"),
    ]
    assert kept.is_empty
    gone = plan_down(account, [press, archive], STACK, delete_data=True)
    execute(account, gone, reverse=True)
    assert account.state == {}


# The field table -------------------------------------------------------------------------


def test_a_field_whose_write_is_not_declared_is_refused_when_the_class_is_defined() -> None:
    with pytest.raises(TypeError, match="field 'colour' has no writer"):

        class Painted(Machine):
            fields = (*Machine.fields, Field("colour", "colour", "paint"))

    with pytest.raises(TypeError, match="write 'paint' sets no field"):

        class Unused(Machine):
            writes = (*Machine.writes, Write("paint", lambda r, aws, want, have: None))


def test_a_desired_field_with_no_reader_or_writer_fails_the_plan_and_the_check(ctx) -> None:
    ctx.settings["press"]["colour"] = "red"
    press = Machine(ctx, "press")
    assert desired_problems(press) == [
        "fake.machine/press: wants 'colour' but declares no Field for it"
    ]
    account = Account()
    account.state[press.key] = {"size": 1, "shape": "round", "tags": {STACK_TAG: STACK}}
    with pytest.raises(IotpipeError, match="no reader, no writer"):
        plan_up(account, [press], STACK)


class Oven(Machine):
    """A resource that must be READY to take a change, and that a resize leaves WARMING."""

    kind = "fake.oven"
    fields = (*Machine.fields, Field("heat", "heat", "set_heat"))
    writes = (
        Write("set_size", Machine.writes[0].apply, settles=True),
        call("fake", "set_heat", lambda r, want, have: {"Key": r.key, "Heat": want["heat"]}),
    )
    settled = Settled("status", frozenset({"READY"}), "for the oven to be READY")


def test_writes_get_the_latest_state_and_wait_for_the_declared_settled_state(ctx) -> None:
    ctx.settings["oven"] = {"size": 1, "shape": "box", "heat": 100}
    oven = Oven(ctx, "oven")
    account = Account()
    account.state[oven.key] = {
        "size": 1,
        "shape": "box",
        "heat": 100,
        "status": "READY",
        "tags": {STACK_TAG: STACK},
    }
    seen: list[State] = []

    def warming(operation: str, key: str) -> None:
        # A resize leaves the oven WARMING for two reads; a heat change needs it READY.
        if operation == "set_size":
            account.state[key]["status"] = "WARMING"
            account.lagging_status = 2
        if operation == "set_heat":
            assert account.state[key]["status"] == "READY"

    account.on_write = warming
    ctx.settings["oven"].update(size=2, heat=180)
    plan = plan_up(account, [oven], STACK)
    [step] = plan.changes
    seen.append(step.observed)
    account.calls.clear()
    execute(account, plan)
    assert _mutations(account) == [("set_size", oven.key), ("set_heat", oven.key)]
    # The plan's reading served the first write; only the unsettling write made it read again.
    assert [c for c in account.calls if c[0] == "read"] == [("read", oven.key)] * 3
    assert account.state[oven.key]["heat"] == 180
    assert seen[0]["size"] == 1


def test_a_write_is_skipped_when_an_earlier_write_already_brought_its_field_as_wanted(ctx) -> None:
    ctx.settings["oven"] = {"size": 1, "shape": "box", "heat": 100}
    oven = Oven(ctx, "oven")
    account = Account()
    account.state[oven.key] = {
        "size": 1,
        "shape": "box",
        "heat": 100,
        "status": "READY",
        "tags": {STACK_TAG: STACK},
    }

    def resize_heats(operation: str, key: str) -> None:
        # Resizing this oven also brings it to the heat the config wants.
        if operation == "set_size":
            account.state[key]["heat"] = 180

    account.on_write = resize_heats
    ctx.settings["oven"].update(size=2, heat=180)
    plan = plan_up(account, [oven], STACK)
    assert [c.field for c in plan.changes[0].changes] == ["size", "heat"]
    account.calls.clear()
    execute(account, plan)
    assert _mutations(account) == [("set_size", oven.key)]
    assert status(account, [oven])[0].state == "in sync"


def test_a_settling_wait_polls_the_status_and_reads_the_tags_once_settled(ctx) -> None:
    ctx.settings["oven"] = {"size": 1, "shape": "box", "heat": 100}
    oven = Oven(ctx, "oven")
    account = Account()
    account.state[oven.key] = {
        "size": 1,
        "shape": "box",
        "heat": 100,
        "status": "READY",
        "tags": {STACK_TAG: STACK},
    }

    def warming(operation: str, key: str) -> None:
        if operation == "set_size":
            account.state[key]["status"] = "WARMING"
            account.lagging_status = 3

    account.on_write = warming
    ctx.settings["oven"]["size"] = 2
    plan = plan_up(account, [oven], STACK)
    assert account.tag_reads == 1
    execute(account, plan)
    # Four polls of the status (three still WARMING), one tag read: the settled state's.
    assert [c for c in account.calls if c[0] == "read"].count(("read", oven.key)) == 1 + 4
    assert account.tag_reads == 2


def test_a_changed_field_is_dispatched_to_its_write_without_reading_again(ctx, machines) -> None:
    account = Account()
    execute(account, plan_up(account, machines, STACK))
    ctx.settings["line"]["size"] = 5
    plan = plan_up(account, machines, STACK)
    account.calls.clear()
    execute(account, plan)
    assert account.calls == [("set_size", "fake.machine/line")]


# The engine imports nothing of the pipeline --------------------------------------------------

ENGINE = Path(iotpipe.engine.__file__).parent
# At run time: the standard library, the engine itself and the errors every layer shares.
# jmespath reads a field from an AWS answer by its path (a dependency of its own, not the SDK).
RUNTIME_ALLOWED = ("iotpipe.engine", "iotpipe.errors", "jmespath")
# For type hints only (under TYPE_CHECKING): also the grants a resource declares.
TYPING_ALLOWED = (*RUNTIME_ALLOWED, "iotpipe.permissions")


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST, package: str, typing_only: bool = False) -> Iterator[tuple[str, bool]]:
    """(module, imported for type hints only) for every import in `node`, functions included."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for statement in child.body:
                yield from _imports(ast.Module([statement], []), package, True)
            for statement in child.orelse:
                yield from _imports(ast.Module([statement], []), package, typing_only)
        elif isinstance(child, ast.Import):
            for alias in child.names:
                yield alias.name, typing_only
        elif isinstance(child, ast.ImportFrom):
            base = package.rsplit(".", child.level - 1)[0] if child.level else ""
            module = ".".join(part for part in (base, child.module) if part)
            yield module, typing_only
        else:
            yield from _imports(child, package, typing_only)


def _allowed(module: str, allowed: tuple[str, ...]) -> bool:
    if module.split(".")[0] in sys.stdlib_module_names:
        return True
    return any(module == a or module.startswith(f"{a}.") for a in allowed)


def forbidden_imports(source: str, package: str = "iotpipe.engine") -> list[str]:
    found = []
    for module, typing_only in _imports(ast.parse(source), package):
        if not _allowed(module, TYPING_ALLOWED if typing_only else RUNTIME_ALLOWED):
            found.append(f"{module} (type hints)" if typing_only else module)
    return found


def test_the_import_check_finds_a_pipeline_import() -> None:
    source = """
from typing import TYPE_CHECKING
import boto3
from iotpipe.errors import AwsError, IotpipeError
from . import model
if TYPE_CHECKING:
    from iotpipe.permissions import Grant
    from iotpipe.stack import StackContext
def later():
    from iotpipe.aws import Aws
    from ..resources import s3
"""
    assert forbidden_imports(source) == [
        "boto3",
        "iotpipe.stack (type hints)",
        "iotpipe.aws",
        "iotpipe.resources",
    ]


@pytest.mark.parametrize("path", sorted(ENGINE.glob("*.py")), ids=lambda p: p.name)
def test_no_engine_module_imports_the_pipeline(path: Path) -> None:
    assert forbidden_imports(path.read_text()) == [], path.name


def test_importing_the_engine_loads_no_pipeline_module_and_no_aws_sdk() -> None:
    probe = (
        "import sys, iotpipe.engine.model, iotpipe.engine.reconcile; "
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('iotpipe', 'boto3', 'botocore', 'moto'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout.split()
    assert loaded == [
        "iotpipe",
        "iotpipe.engine",
        "iotpipe.engine.fields",
        "iotpipe.engine.model",
        "iotpipe.engine.reconcile",
        "iotpipe.errors",
    ]


def test_a_field_compares_exactly_as_a_subset_or_through_its_normaliser() -> None:
    exact = Field("size", "size", "set_size")
    assert not exact.differs({"a": 1, "b": 2.0}, {"b": 2, "a": 1})  # key order, number types
    assert exact.differs([1, 2], [2, 1])
    subset = Field("labels", "labels", "set_labels", compare="subset")
    assert not subset.differs({"ours": "x", "theirs": "y"}, {"ours": "x"})
    assert subset.differs({"theirs": "y"}, {"ours": "x"})
    unordered = Field("members", "members", "set_members", compare=sorted)
    assert not unordered.differs(["b", "a"], ["a", "b"])
    assert unordered.differs(["a"], ["a", "b"])
