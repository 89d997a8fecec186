"""Environment variables set for a scope and put back afterwards, as they were."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping


@contextlib.contextmanager
def scoped_environ(values: Mapping[str, str], *, unset: Iterable[str] = ()) -> Iterator[None]:
    removed = list(unset)
    saved = {key: os.environ.get(key) for key in [*values, *removed]}
    for key in removed:
        os.environ.pop(key, None)
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
