"""Tabletop speed: simulated time over wall time for every scenario in the library.

Each scenario runs on its own time-skipping server (server start included in the wall time); the wall time is
the median of ``--repeat`` runs. ``--write`` replaces this benchmark's table in BENCHMARKS.md.

    ./dev bench tabletop_speed [--repeat 3] [--write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import command_line, header, table
from tabletop.runner import run_time_skipping
from tabletop.scenarios import discover_scenarios, load_scenario, scenario_folder


def _simulated(seconds: float) -> str:
    hours = seconds / 3600
    return f"{seconds:.0f} s" + (f" ({hours:.1f} h)" if hours >= 1 else "")


async def measure(args: argparse.Namespace) -> str:
    scenarios = [load_scenario(p) for p in discover_scenarios([scenario_folder()])]
    rows = []
    total_sim = total_wall = 0.0
    for loaded in scenarios:
        walls, sim = [], 0.0
        for _ in range(args.repeat):
            start = time.perf_counter()
            [result] = await run_time_skipping([loaded])
            walls.append(time.perf_counter() - start)
            sim = result.simulated_s
        wall = statistics.median(walls)
        total_sim += sim
        total_wall += wall
        rows.append((loaded.name, _simulated(sim), f"{wall:.2f}", f"{sim / wall:.0f}x"))
    rows.append(("**library**", _simulated(total_sim), f"{total_wall:.2f}", f"{total_sim / total_wall:.0f}x"))
    return "\n".join([header("tabletop_speed"), "", f"`./dev bench tabletop_speed --repeat {args.repeat}`", "",
                      table(["scenario", "simulated", "wall p50 (s)", "speed-up"], rows)])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--write", action="store_true", help="replace this benchmark's table in BENCHMARKS.md")
    return p


RECORD = ["--repeat", "3"]
"""The arguments ``./dev bench all`` records with."""


if __name__ == "__main__":
    command_line("tabletop_speed", parser(), measure)
