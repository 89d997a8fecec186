"""The patches to moto's own code: all in one module, and checked against the moto installed."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

import iotpipe
from iotpipe.local import moto_patches
from iotpipe.local.moto_patches import MOTO_VERSIONS, MotoVersionWarning, version_problem

PACKAGE = Path(iotpipe.__file__).parent
# AWS's rules are a layer of their own (they wrap moto's request handling, and one rule replaces
# a method of moto's S3 backend): not patches that make up for moto's internals.
AWS_RULES = PACKAGE / "local" / "aws_rules"


def test_the_installed_moto_is_one_the_patches_were_written_for() -> None:
    installed = moto_patches.installed_moto_version()
    assert version_problem(installed) is None, (
        f"moto {installed}: check every patch in iotpipe/local/moto_patches.py against it, then "
        f"widen MOTO_VERSIONS {MOTO_VERSIONS}"
    )


@pytest.mark.parametrize("version", ["5.2.0", "5.2.5", "5.2.10", "5.2.6.dev3"])
def test_a_moto_in_the_range_is_accepted(version: str) -> None:
    assert version_problem(version) is None


@pytest.mark.parametrize("version", ["5.1.22", "5.3.0", "5.3.0.dev1", "6.0.0", "4.2.14"])
def test_a_moto_outside_the_range_is_named_with_the_fix(version: str) -> None:
    problem = version_problem(version)
    assert problem is not None
    assert f"moto {version} is installed" in problem
    assert "'moto[server]>=5.2,<5.3'" in problem


def test_installing_the_patches_warns_of_a_moto_outside_the_range(monkeypatch) -> None:
    monkeypatch.setattr(moto_patches, "installed_moto_version", lambda: "5.3.1")
    with pytest.warns(MotoVersionWarning, match="moto 5.3.1 is installed"):
        moto_patches.install()


def test_installing_the_patches_on_the_moto_they_were_written_for_says_nothing() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", MotoVersionWarning)
        moto_patches.install()


def moto_patches_in(source: str) -> list[str]:
    """`Class.attribute = ...` (or setattr) on a class imported from moto, in `source`."""
    tree = ast.parse(source)
    from_moto = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "moto"
        for alias in node.names
    }
    found = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr":
            targets = [ast.Attribute(node.args[0], "?")] if node.args else []
        for target in targets:
            if (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id in from_moto
            ):
                found.append(f"{target.value.id}.{target.attr}")
    return found


def test_the_patch_finder_finds_a_patch() -> None:
    source = (
        "from moto.s3.models import FakeBucket as Bucket\n"
        "def patch():\n"
        "    from moto.firehose.models import FirehoseBackend\n"
        "    FirehoseBackend.put_s3_records = lambda *a: []\n"
        "    setattr(Bucket, 'get_permission', None)\n"
        "    other = object()\n"
        "    other.x = 1\n"
    )
    assert moto_patches_in(source) == ["FirehoseBackend.put_s3_records", "Bucket.?"]


def test_every_patch_to_moto_is_in_the_patches_module() -> None:
    elsewhere = {
        str(path.relative_to(PACKAGE)): found
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != PACKAGE / "local" / "moto_patches.py" and AWS_RULES not in path.parents
        if (found := moto_patches_in(path.read_text()))
    }
    assert elsewhere == {}
    patched = set(moto_patches_in((PACKAGE / "local" / "moto_patches.py").read_text()))
    assert patched == {
        "FakeBucket.get_permission",
        "LambdaFunction._get_layers_data",
        "LambdaResponse.get_layer_version_by_arn",
        "LambdaBackend.send_kinesis_message",
        "FirehoseBackend.put_s3_records",
        "IoTDataPlaneBackend.publish",
    }
