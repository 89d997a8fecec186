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
from iotpipe.engine.model import STACK_TAG, Action, Change, Resource
from iotpipe.engine.reconcile import execute, plan_down, plan_up, status
from iotpipe.errors import AwsError

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


class Machine(Resource):
    """A resource whose create call cannot set its tags (as many AWS create calls cannot), and
    whose shape AWS cannot change in place."""

    kind = "fake.machine"
    replace_on = frozenset({"shape"})

    def desired(self) -> dict[str, Any]:
        return {**self.ctx.settings[self.name], "tags": {STACK_TAG: self.ctx.stack}}

    def observe(self, aws: Account) -> dict[str, Any] | None:
        aws.record("read", self.key)
        if aws.lagging_reads.get(self.key):
            aws.lagging_reads[self.key] -= 1
            raise AwsError("not found", resource=self.label, code="ResourceNotFoundException")
        return deepcopy(aws.state.get(self.key))

    def create(self, aws: Account) -> None:
        aws.record("create", self.key)
        aws.state[self.key] = {**deepcopy(self.ctx.settings[self.name]), "tags": {}}

    def update(self, aws: Account, changes: list[Change]) -> None:
        for change in changes:
            aws.record(f"set {change.field}", self.key)
            state = aws.state[self.key]
            if change.subset:
                state[change.field] = {**state[change.field], **change.new}
            else:
                state[change.field] = change.new

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
        ("set tags", "fake.machine/press"),
        ("create", "fake.machine/line"),
        ("set tags", "fake.machine/line"),
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
    assert _mutations(account) == [("set size", "fake.machine/press")]
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
        ("set tags", "fake.machine/press"),
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


# The engine imports nothing of the pipeline --------------------------------------------------

ENGINE = Path(iotpipe.engine.__file__).parent
# At run time: the standard library, the engine itself and the errors every layer shares.
RUNTIME_ALLOWED = ("iotpipe.engine", "iotpipe.errors")
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
from iotpipe.errors import AwsError
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
        "iotpipe.engine.model",
        "iotpipe.engine.reconcile",
        "iotpipe.errors",
    ]
