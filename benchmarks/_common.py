"""Shared set-up for the benchmark scripts: an embedded emulator and the fault/latency injector."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "benchmark",
        "AWS_SECRET_ACCESS_KEY": "benchmark",
        "AWS_DEFAULT_REGION": "us-east-1",
        "IOTPIPE_RETRY_SCALE": "0.002",
    }
)
os.environ.pop("AWS_PROFILE", None)

from tests.faults import Faults  # noqa: E402

__all__ = ["ROOT", "Faults"]
