"""Reproducible packaging of the processor's code: the same source always gives the same zip bytes.

Lambda reports the SHA-256 of the deployed zip (CodeSha256), so a byte-identical zip lets `up`
see that nothing changed and skip the upload. Zip entries carry timestamps, permissions and an
order, so all three are fixed here: entries sorted by path, a constant date, mode 0644.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import sys
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

from iotpipe.errors import IotpipeError

# The handler package lives next to the iotpipe package in the source tree.
PROCESSOR_SOURCE = Path(__file__).resolve().parent.parent / "lambda_src" / "processor"
# Where the processor states what iotpipe must agree with (the tests deploy other bundles).
PROCESSOR_CONTRACTS = PROCESSOR_SOURCE

# The earliest date a zip entry can hold; any constant works, this one says "not a real time".
_FIXED_DATE = (1980, 1, 1, 0, 0, 0)
_FILE_MODE = 0o100644  # regular file, rw-r--r--
_UNIX = 3  # the "created on" system recorded in each entry


@dataclass(frozen=True)
class CodeBundle:
    zip_bytes: bytes

    @property
    def sha256(self) -> str:
        """Base64 of the SHA-256 digest: the form Lambda reports as CodeSha256."""
        return base64.b64encode(hashlib.sha256(self.zip_bytes).digest()).decode()


def source_files(package_dir: Path) -> list[Path]:
    """The package's Python files, sorted; caches and compiled files are never shipped."""
    return sorted(
        (
            path
            for path in package_dir.rglob("*.py")
            if path.is_file() and "__pycache__" not in path.relative_to(package_dir).parts
        ),
        key=lambda path: path.relative_to(package_dir).as_posix(),
    )


def build_zip(package_dir: Path) -> CodeBundle:
    """Zip `package_dir` as a top-level package of the same name, byte-for-byte reproducibly."""
    files = source_files(package_dir) if package_dir.is_dir() else []
    if not files:
        raise IotpipeError(
            f"no Python source to package in {package_dir}",
            hint="the processor's code (lambda_src/processor) ships with iotpipe's source tree; "
            "run iotpipe from a checkout or an editable install",
        )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in files:
            name = f"{package_dir.name}/{path.relative_to(package_dir).as_posix()}"
            info = zipfile.ZipInfo(name, date_time=_FIXED_DATE)
            info.external_attr = _FILE_MODE << 16
            info.create_system = _UNIX
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes(), compresslevel=9)
    return CodeBundle(buffer.getvalue())


def processor_bundle() -> CodeBundle:
    return build_zip(PROCESSOR_SOURCE)


@cache
def processor_module(name: str) -> ModuleType:
    """One of the processor's self-contained modules (`contract`, `settings`: they import
    nothing of the processor), loaded from its source. What iotpipe and the processor must agree
    on (the archive's columns, the function's environment) is stated there once, and read here."""
    path = PROCESSOR_CONTRACTS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"iotpipe._processor.{name}", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise IotpipeError(
            f"the processor's {name}.py is not in {PROCESSOR_CONTRACTS}",
            hint="the processor's code (lambda_src/processor) ships with iotpipe's source tree; "
            "run iotpipe from a checkout or an editable install",
        )
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up by name while building the class.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
