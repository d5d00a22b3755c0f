"""What every benchmark prints about where and when it ran, and the percentile it reports."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def header(name: str) -> str:
    """``# name  date  arch  nproc N  CPU  python X`` for BENCHMARKS.md."""
    return (f"# {name}  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  {platform.machine()}  nproc {os.cpu_count()}  "
            f"{cpu_model()}  python {platform.python_version()}")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
