"""Tabletop speed: simulated time over wall time for every scenario in the library.

Run: /tmp/venv/bin/python bench/tabletop_speed.py [--repeat N]
Each scenario runs on its own time-skipping server (server start included in the wall time).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tabletop.runner import run_time_skipping
from tabletop.scenarios import discover_scenarios, load_scenario, scenario_folder


async def main(repeat: int) -> None:
    scenarios = [load_scenario(p) for p in discover_scenarios([scenario_folder()])]
    print(f"{'scenario':<28} {'simulated':>10} {'wall p50 (s)':>13} {'speed-up':>10}")
    total_sim = total_wall = 0.0
    for loaded in scenarios:
        walls, sim = [], 0.0
        for _ in range(repeat):
            start = time.perf_counter()
            [result] = await run_time_skipping([loaded])
            walls.append(time.perf_counter() - start)
            sim = result.simulated_s
        wall = statistics.median(walls)
        total_sim += sim
        total_wall += wall
        print(f"{loaded.name:<28} {sim:>9.0f}s {wall:>13.2f} {sim / wall:>9.0f}x")
    print(f"{'library':<28} {total_sim:>9.0f}s {total_wall:>13.2f} {total_sim / total_wall:>9.0f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    asyncio.run(main(parser.parse_args().repeat))
