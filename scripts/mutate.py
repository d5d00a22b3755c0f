"""Mutation testing of unship with cosmic-ray: plant small bugs, check that a test fails for each.

Run through ``./dev mutate [--sample N] [--budget MINUTES] [GROUP ...]`` (not in CI: it is slow). Each group
pairs source files with the tests that should catch bugs in them. The tree is copied to ``build/mutate/tree``
first (cosmic-ray edits files in place), a cosmic-ray session is initialised per group, a seeded random sample
of at most ``--sample`` mutants is kept (a full run is hours), and the mutants run until ``--budget`` minutes
are spent (the session is resumable: run again to continue). The score and every surviving mutant (file, line,
operator, diff) are printed and written to ``build/mutate/report.md``; record them in BENCHMARKS.md.

Operators: comparison, boolean, ``and``/``or``, ``not``, number, break/continue, zero-iteration loop and the
arithmetic swaps that change meaning (+/-, *//); bit-shift or power replacements are left out (noise here).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "mutate"
PYTHON = ROOT / ".venv" / "bin" / "python"
COSMIC_RAY = ROOT / ".venv" / "bin" / "cosmic-ray"

KEEP_OPERATORS = re.compile(
    r"core/(ReplaceComparisonOperator_.*|ReplaceTrueWithFalse|ReplaceFalseWithTrue|ReplaceAndWithOr|"
    r"ReplaceOrWithAnd|AddNot|NumberReplacer|ReplaceBreakWithContinue|ReplaceContinueWithBreak|"
    r"ZeroIterationForLoop|ReplaceBinaryOperator_(Add_Sub|Sub_Add|Mul_Div|Div_Mul)|RemoveDecorator)$"
)


@dataclass(frozen=True)
class Group:
    name: str
    modules: tuple[str, ...]
    tests: tuple[str, ...]


GROUPS = (
    Group("workflows", ("workflows",), ("tests/workflows",)),
    Group("playbooks", ("playbooks",), ("tests/playbooks",)),
    Group("alerts", ("workers/web/alert_sources.py", "workers/web/alert_router.py"),
          ("tests/workers/web/test_gateway_sources.py",)),
    Group("slack", ("activities/slack.py", "workers/web/slack_actions.py"), ("tests/workers/web/test_slack.py",)),
    Group("flagd", ("activities/flagd.py",), ("tests/activities/test_flagd_file.py",)),
    Group("launchdarkly", ("activities/launchdarkly.py",), ("tests/activities/test_launchdarkly.py",)),
    Group("kserve", ("activities/kserve.py",), ("tests/activities/test_kserve.py",)),
    Group("http", ("activities/http_providers.py",), ("tests/activities/test_http_providers.py",)),
    Group("unleash", ("activities/unleash.py",), ("tests/activities/test_unleash.py",)),
)


def copy_tree() -> Path:
    tree = WORK / "tree"
    if tree.exists():
        shutil.rmtree(tree)
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            target = tree / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    node_modules = ROOT / "services" / "unleash" / "node_modules"
    if node_modules.exists():
        (tree / "services" / "unleash" / "node_modules").symlink_to(node_modules.resolve())
    return tree


def config(group: Group, tree: Path, timeout: float) -> Path:
    tests = " ".join(group.tests)
    text = "\n".join([
        "[cosmic-ray]",
        f"module-path = {json.dumps(list(group.modules))}",
        f"timeout = {timeout}",
        "excluded-modules = []",
        f'test-command = "{PYTHON} -m pytest -x -q -p no:cacheprovider --timeout {int(timeout)} {tests}"',
        "",
        "[cosmic-ray.distributor]",
        'name = "local"',
        "",
    ])
    path = WORK / f"{group.name}.toml"
    path.write_text(text)
    return path


def keep_sample(session: Path, sample: int, seed: int) -> int:
    with sqlite3.connect(session) as db:
        rows = db.execute("SELECT job_id, operator_name FROM mutation_specs").fetchall()
        wanted = [job for job, operator in rows if KEEP_OPERATORS.match(operator)]
        done = {job for (job,) in db.execute("SELECT job_id FROM work_results")}
        random.Random(seed).shuffle(wanted)
        keep = set(wanted[:sample]) | done
        drop = [(job,) for job, _ in rows if job not in keep]
        db.executemany("DELETE FROM mutation_specs WHERE job_id = ?", drop)
        db.executemany("DELETE FROM work_items WHERE job_id = ?", drop)
        return len(keep)


def results(session: Path) -> tuple[dict[str, int], list[dict[str, object]]]:
    with sqlite3.connect(session) as db:
        rows = db.execute(
            "SELECT s.module_path, s.operator_name, s.start_pos_row, s.definition_name, r.worker_outcome, "
            "r.test_outcome, r.diff FROM mutation_specs s LEFT JOIN work_results r ON r.job_id = s.job_id"
        ).fetchall()
    counts = {"total": len(rows), "done": 0, "killed": 0, "survived": 0, "incompetent": 0}
    survivors = []
    for module, operator, line, definition, worker, test, diff in rows:
        if worker is None:
            continue
        counts["done"] += 1
        if test == "KILLED":  # a test failed (or the tests ran past the time limit: cosmic-ray counts it killed)
            counts["killed"] += 1
        elif test == "SURVIVED":
            counts["survived"] += 1
            survivors.append({"module": module, "line": line, "operator": operator, "in": definition,
                              "diff": diff})
        else:  # the mutant could not even run (e.g. a syntax or import error): says nothing about the tests
            counts["incompetent"] += 1
    return counts, survivors


def main() -> int:
    parser = argparse.ArgumentParser(prog="./dev mutate", description=__doc__.split("\n\n")[0])
    parser.add_argument("groups", nargs="*",
                        help=f"groups to run, NAME or NAME:SAMPLE (default all): {', '.join(g.name for g in GROUPS)}")
    parser.add_argument("--sample", type=int, default=40, help="mutants per group (seeded random sample)")
    parser.add_argument("--budget", type=float, default=30, help="minutes for the whole run (resumable)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per mutant's test run")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--fresh", action="store_true", help="start new sessions instead of resuming")
    args = parser.parse_args()
    samples = {name: int(n) if n else args.sample for name, _, n in (g.partition(":") for g in args.groups)}
    chosen = [g for g in GROUPS if not samples or g.name in samples]
    unknown = set(samples) - {g.name for g in GROUPS}
    if unknown:
        parser.error(f"unknown group(s) {sorted(unknown)}")
    if not COSMIC_RAY.exists():
        print("cosmic-ray is missing: .venv/bin/pip install cosmic-ray (./dev mutate installs it)", file=sys.stderr)
        return 2
    WORK.mkdir(parents=True, exist_ok=True)
    lock = (WORK / ".lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("another ./dev mutate is running on this tree", file=sys.stderr)
        return 2
    tree = copy_tree()
    deadline = time.monotonic() + args.budget * 60
    report = ["# Mutation testing (cosmic-ray)", "",
              f"sample {args.sample} per group, seed {args.seed}, budget {args.budget:g} min", "",
              "| group | mutants run | killed | survived | incompetent | score |", "|---|---|---|---|---|---|"]
    all_survivors: list[tuple[str, dict[str, object]]] = []
    totals = {"killed": 0, "survived": 0, "done": 0}
    for group in chosen:
        session = WORK / f"{group.name}.sqlite"
        cfg = config(group, tree, args.timeout)
        if args.fresh or not session.exists():
            session.unlink(missing_ok=True)
            subprocess.run([str(COSMIC_RAY), "init", str(cfg), str(session)], cwd=tree, check=True)
        planned = keep_sample(session, samples.get(group.name, args.sample), args.seed)
        left = deadline - time.monotonic()
        if left > 0:
            print(f"==> {group.name}: {planned} mutants ({left / 60:.0f} min left)", flush=True)
            try:
                subprocess.run([str(COSMIC_RAY), "exec", str(cfg), str(session)], cwd=tree, timeout=left,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                print(f"    budget spent during {group.name}; run again to resume", flush=True)
        counts, survivors = results(session)
        caught = counts["killed"]
        score = f"{caught / (caught + counts['survived']):.0%}" if caught + counts["survived"] else "n/a"
        report.append(f"| {group.name} | {counts['done']}/{counts['total']} | {counts['killed']} | "
                      f"{counts['survived']} | {counts['incompetent']} | {score} |")
        print(f"    {group.name}: {counts['done']}/{counts['total']} run, {caught} caught, "
              f"{counts['survived']} survived, {counts['incompetent']} incompetent, score {score}", flush=True)
        for key in totals:
            totals[key] += counts[key]
        all_survivors += [(group.name, s) for s in survivors]
    caught = totals["killed"]
    overall = f"{caught / (caught + totals['survived']):.0%}" if caught + totals["survived"] else "n/a"
    report += ["", f"**Overall: {caught} of {caught + totals['survived']} mutants caught ({overall}).**", "",
               "## Surviving mutants", ""]
    for name, s in all_survivors:
        report += [f"### {name}: {s['module']}:{s['line']} in {s['in']} ({s['operator']})", "", "```diff",
                   str(s["diff"]).strip(), "```", ""]
    (WORK / "report.md").write_text("\n".join(report) + "\n")
    print(f"==> overall score {overall} ({caught}/{caught + totals['survived']}); report: {WORK / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
