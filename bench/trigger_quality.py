"""Trigger quality: false confirmations and detection delay of K-of-M and both sequential tests.

Run: ./dev bench trigger_quality [--runs 1000] [--seed 20261129]

Simulated traffic, one counter signal with threshold r0 = 30 per 10k: every poll (1 minute) draws Poisson
events for the poll's outputs at the true rate; a confirmation window of 30 polls. Per cell (traffic level x
true rate, or a scenario), ``--runs`` seeded runs through the same code the workflow uses:

* ``k_of_m``: today's default, a poll breaches when its rate is above r0, 3 breaching of the last 5 confirm
  (``workflows.confirmation.BreachTracker``);
* ``cusum`` and ``window_bound`` (out_of 10): ``workflows.sequential`` with false_alarm 0.01, detect 1.2,
  min_polls 3, Poisson model.

Scenarios at 20,000 outputs a minute: a transient spike (one poll at 10x, the rest at 0.9x), data gaps (each
poll missing with probability 0.2) at 1.0x and at 1.2x, and a slow drift (0.8x rising linearly to 2x over the
window; delay counted from the first poll above 1.0x, confirmations before it counted as early).

Columns: ``conf`` the share of runs that confirmed within the window (a false confirmation rate where the true
rate is at or below r0, else the detection rate); ``p50`` / ``p90`` the detection delay in polls from the
onset among the runs that confirmed (1 = the first poll of the rise).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import command_line, header, percentile
from playbooks.models import Confirmation, Sequential, SequentialTest, Signal
from workflows.confirmation import BreachTracker, PollVerdict
from workflows.sequential import Counts, signal_test

R0 = 30.0  # per 10k
PER = 10_000
POLLS = 30
SIGNAL = Signal.model_validate({"name": "hallucinations", "category": "model_quality",
                                "source": {"events": "e", "outputs": "o"}, "threshold": {"value": R0}})
K_OF_M = Confirmation.model_validate({"window": f"{POLLS}m", "interval": "1m", "breaches": 3, "out_of": 5})
METHODS = ("k_of_m", "cusum", "window_bound")


@dataclass(frozen=True)
class Cell:
    scenario: str
    outputs: int
    label: str  # true rate, as shown
    multiples: list[float]  # per poll, x r0
    gaps: float = 0.0  # probability that a poll has no data
    onset: int | None = 0  # poll index where the deterioration starts (None: nothing to detect)


def cells() -> list[Cell]:
    out = []
    for outputs in (500, 5_000, 20_000, 50_000):
        for m in (0.8, 0.9, 1.0, 1.1, 1.2, 2.0):
            out.append(Cell("steady", outputs, f"{m:g}x", [m] * POLLS, onset=0 if m > 1 else None))
    spike = [10.0] + [0.9] * (POLLS - 1)
    drift = [0.8 + (2.0 - 0.8) * i / (POLLS - 1) for i in range(POLLS)]
    out += [
        Cell("spike 10x, 1 poll", 20_000, "0.9x", spike, onset=None),
        Cell("gaps 20%", 20_000, "1x", [1.0] * POLLS, gaps=0.2, onset=None),
        Cell("gaps 20%", 20_000, "1.2x", [1.2] * POLLS, gaps=0.2, onset=0),
        Cell("drift 0.8x->2x", 20_000, "drift", drift, onset=next(i for i, m in enumerate(drift) if m > 1.0)),
    ]
    return out


def detector(method: str) -> Callable[[Counts | None], bool]:
    """A fresh confirmation for one run: feed it a poll (None = no data), it answers "confirmed"."""
    if method == "k_of_m":
        tracker = BreachTracker.for_confirmation(K_OF_M)

        def k_of_m(c: Counts | None) -> bool:
            if c is None:
                tracker.record(PollVerdict.UNKNOWN)
            else:
                tracker.record(PollVerdict.BREACH if c.rate * PER > R0 else PollVerdict.HEALTHY)
            return tracker.sustained

        return k_of_m
    settings = Sequential(test=SequentialTest(method), false_alarm=0.01, detect=1.2, min_polls=3)
    test = signal_test(SIGNAL, settings, POLLS, 1, out_of=10)

    def sequential(c: Counts | None) -> bool:
        if c is None:
            test.skipped += 1
        else:
            test.update(c)
        return test.confirmed

    return sequential


def run_cell(cell: Cell, method: str, runs: int, rng: np.random.Generator) -> tuple[float, list[int], int]:
    means = np.array(cell.multiples) * R0 / PER * cell.outputs
    events = rng.poisson(means, size=(runs, POLLS))
    missing = rng.random((runs, POLLS)) < cell.gaps
    confirmed, delays, early = 0, [], 0
    for r in range(runs):
        feed = detector(method)
        for i in range(POLLS):
            c = None if missing[r, i] else Counts(float(events[r, i]), float(cell.outputs))
            if feed(c):
                confirmed += 1
                if cell.onset is not None:
                    if i >= cell.onset:
                        delays.append(i - cell.onset + 1)
                    else:
                        early += 1
                break
    return confirmed / runs, delays, early


async def measure(args: argparse.Namespace) -> str:
    runs, seed = args.runs, args.seed
    out = [header("trigger_quality"), "",
           f"`./dev bench trigger_quality --runs {runs} --seed {seed}`: runs per cell: {runs}; window {POLLS} polls "
           f"of 1 minute; threshold {R0:g}/10k", ""]
    started = time.perf_counter()
    head = "| scenario | outputs/min | true rate |"
    rule = "|---|---:|---:|"
    for m in METHODS:
        head += f" {m} conf | p50 | p90 |"
        rule += "---:|---:|---:|"
    out += [head, rule]
    for n, cell in enumerate(cells()):
        row = f"| {cell.scenario} | {cell.outputs:,} | {cell.label} |"
        for k, method in enumerate(METHODS):
            rng = np.random.default_rng([seed, n, k])
            rate, delays, early = run_cell(cell, method, runs, rng)
            conf = f"{rate * 100:.1f}%" + (f" ({early} early)" if early else "")
            p50 = f"{statistics.median(delays):g}" if delays else "-"
            p90 = f"{percentile([float(d) for d in delays], 0.9):g}" if delays else "-"
            row += f" {conf} | {p50} | {p90} |"
        out.append(row)
    out += ["", f"Wall time {time.perf_counter() - started:.0f} s."]
    return "\n".join(out)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--seed", type=int, default=20261129)
    p.add_argument("--write", action="store_true", help="replace this benchmark's table in BENCHMARKS.md")
    return p


RECORD = ["--runs", "1000", "--seed", "20261129"]
"""The arguments ``./dev bench all`` records with."""


if __name__ == "__main__":
    command_line("trigger_quality", parser(), measure)
