"""Figures for docs/RELIABILITY.md: the size of the crash sweep and what a fault storm costs.

Prints the mutating calls of a fresh `up` and of `down --delete-data` (the crash points the
exhaustive sweep covers), and, for `up` under a seeded 30% throttling/5xx storm, the calls made,
the faults injected, and the wall time against a calm `up`.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from pathlib import Path

from _common import Faults

from iotpipe.cli import run
from iotpipe.local.emulator import Emulator
from tests.faults import Rule


def cli(*args: str) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return run(list(args))


def main() -> None:
    with Emulator() as emulator, tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "iotpipe.toml"
        config.write_text('[stack]\nname = "rel"\n')
        common = ["--config", str(config), "--endpoint-url", emulator.endpoint_url]
        faults = Faults(seed=2026)
        remove = faults.install()
        try:
            assert cli("up", "--yes", *common) == 0
            up_mutating = len(faults.mutating_calls)
            faults.calls.clear()
            assert cli("down", "--yes", "--delete-data", *common) == 0
            down_mutating = len(faults.mutating_calls)

            # Timed on a warm process: a fresh account, calm, then a fresh account in a storm.
            emulator.reset()
            started = time.perf_counter()
            assert cli("up", "--yes", *common) == 0
            calm_seconds = time.perf_counter() - started
            emulator.reset()
            faults.calls.clear()
            faults.throttle(0.2)
            faults.rules.append(
                Rule(
                    match=lambda s, o: True, code="ServiceUnavailable", status=503, probability=0.1
                )
            )
            started = time.perf_counter()
            code = cli("up", "--yes", *common)
            storm_seconds = time.perf_counter() - started
            storm_calls, injected = len(faults.calls), faults.injected
            faults.rules.clear()
            faults.calls.clear()
            assert cli("up", "--yes", *common) == 0
            after_storm = len(faults.mutating_calls)
        finally:
            remove()

    print(
        f"crash points: fresh up {up_mutating} mutating calls, down --delete-data {down_mutating}"
    )
    print(
        f"storm (20% throttling + 10% 503, seeded): up exit {code}, {storm_calls} calls, "
        f"{injected} faults injected ({injected / storm_calls:.0%}), {storm_seconds:.1f} s "
        f"vs {calm_seconds:.1f} s calm; next up: {after_storm} mutating calls"
    )


if __name__ == "__main__":
    main()
