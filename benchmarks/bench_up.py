"""API calls and wall time of a fresh `up` and of a no-op `up`, with 50 ms injected per call.

Target: a no-op `up` makes no mutating call and takes at most 30% of a fresh `up`'s time.

Each round starts from an empty account and runs a fresh `up`, then a no-op `up`; the figures are
medians over the rounds (`python bench_up.py [ROUNDS]`, 7 by default), so the first round's
one-time costs (imports, parsing the service models) count in neither. The emulator runs in its
own process, without its cyclic garbage collector: it stands in for AWS, and its collector's
pauses (100-180 ms about once a round, measured) would land at random in one run or the other.
Before each timed run the previous run's garbage is collected, as if each `up` were a process
of its own. The emulator provisions instantly, where AWS takes tens of seconds for a stream, a
delivery stream or a table to become ACTIVE, so the ratio against AWS is far smaller.
"""

from __future__ import annotations

import contextlib
import gc
import io
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from _common import Faults, emulator_process, reset

from iotpipe.aws import is_mutating
from iotpipe.cli import run

LATENCY_SECONDS = 0.05


def timed_up(config: Path, endpoint: str, faults: Faults) -> tuple[float, Counter]:
    faults.calls.clear()
    # Each `iotpipe up` is a process of its own: collect the previous run's garbage (its clients
    # are cyclic) before the clock starts, not in the middle of this run.
    gc.collect()
    time.sleep(0.2)  # the old run's reader threads exit once their pool is collected
    gc.collect()
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = run(["up", "--yes", "--config", str(config), "--endpoint-url", endpoint])
    elapsed = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"up failed with exit code {code}")
    return elapsed, Counter(op for _, op in faults.calls)


def main(rounds: int = 7) -> None:
    fresh_times, noop_times = [], []
    with emulator_process() as endpoint_url, tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "iotpipe.toml"
        config.write_text('[stack]\nname = "bench"\n')
        faults = Faults(latency_seconds=LATENCY_SECONDS)
        remove = faults.install()
        try:
            for _ in range(rounds):
                reset(endpoint_url)
                fresh_seconds, fresh_calls = timed_up(config, endpoint_url, faults)
                noop_seconds, noop_calls = timed_up(config, endpoint_url, faults)
                fresh_times.append(fresh_seconds)
                noop_times.append(noop_seconds)
        finally:
            remove()

    def mutating(calls: Counter) -> int:
        return sum(n for op, n in calls.items() if is_mutating(op))

    fresh, noop = statistics.median(fresh_times), statistics.median(noop_times)
    print("each round, fresh s:", " ".join(f"{t:.2f}" for t in fresh_times))
    print("each round, no-op s:", " ".join(f"{t:.2f}" for t in noop_times))
    print(f"latency injected per call: {LATENCY_SECONDS * 1000:.0f} ms; median of {rounds} rounds")
    print(
        f"fresh up : {sum(fresh_calls.values()):4d} calls ({mutating(fresh_calls)} mutating), "
        f"{fresh:6.2f} s"
    )
    print(
        f"no-op up : {sum(noop_calls.values()):4d} calls ({mutating(noop_calls)} mutating), "
        f"{noop:6.2f} s"
    )
    ratio = noop / fresh
    print(f"no-op / fresh wall time: {ratio:.0%} (target <= 30%)")
    verdict = mutating(noop_calls) == 0 and ratio <= 0.30
    print("target met" if verdict else "TARGET MISSED")


if __name__ == "__main__":
    import sys

    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
