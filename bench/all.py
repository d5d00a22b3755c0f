"""Re-run every benchmark with the arguments it is recorded with and rewrite its tables in BENCHMARKS.md.

Each table states the commit, date, machine and load it was measured at, so a stale number is one command away
from correction. Benchmarks run one after another (each starts its own servers); a benchmark that fails its own
checks still has its table written (saying FAILED) and makes the exit code 1.

    ./dev bench all [--only alert_to_revert,api_open_rate] [--dry-run]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import write_section

BENCHMARKS = ("alert_to_revert", "api_open_rate", "incident_store", "tabletop_speed", "console", "trigger_quality")
"""Every benchmark, in the order BENCHMARKS.md lists them."""


async def main(names: list[str], dry_run: bool) -> int:
    failed = 0
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        print(f"==> {name} {' '.join(module.RECORD)}", flush=True)
        started = time.perf_counter()
        text = await module.measure(module.parser().parse_args(list(module.RECORD)))
        print(text)
        print(f"({time.perf_counter() - started:.0f} s)", flush=True)
        if not dry_run:
            write_section(name, text)
        failed += "FAILED" in text or "NOT met" in text
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    parser.add_argument("--dry-run", action="store_true", help="print the tables, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    chosen = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    raise SystemExit(asyncio.run(main(chosen, args.dry_run)))
