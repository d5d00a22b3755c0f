"""Rehearsing: ``unship tabletop``, ``unship backtest`` and ``unship rehearse schedule|list|delete``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from temporalio.service import RPCError

from playbooks.loader import PlaybookError, load_playbook
from playbooks.models import human_duration, parse_duration
from tabletop.backtest import (
    OverrideError,
    advise,
    apply_overrides,
    format_advice,
    healthy_stretches,
    parse_healthy,
    parse_injection,
    parse_sweep,
    row_spacing_warning,
)
from tabletop.backtest import backtest as run_backtest
from tabletop.history import HistoryError, load_history
from tabletop.report import write_report
from tabletop.results import TabletopResult, clock, format_result, human
from tabletop.runner import Systems, load_all, run_staging, run_time_skipping
from tabletop.scenarios import LoadedScenario
from tabletop.schedule import SCHEDULE_PREFIX, create_schedule, list_schedules, schedule_id
from workers.cli.common import JsonFlag, app, err, load_settings, print_json, run
from workers.runtime.client import connect
from workers.runtime.settings import Settings
from workers.runtime.worker import build_activities

EXIT_PASSED, EXIT_FAILED, EXIT_INVALID = 0, 1, 2



@app.command()
def tabletop(
    scenarios: Annotated[list[str], typer.Argument(help="Scenario files (*.scenario.yaml) or folders of them.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per scenario.")] = False,
    report: Annotated[Path | None, typer.Option("--report", help="Write a Markdown report with charts here.")] = None,
    staging: Annotated[bool, typer.Option("--staging", help="Run against the configured Temporal/flags/chat.")] = False,
    speedup: Annotated[float, typer.Option("--speedup", min=1.0, help="Staging: how much faster than written.")] = 60.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Figures and expectations only, no timeline.")] = False,
) -> None:
    """Rehearse playbooks: run scenarios through the real workflows on simulated time (exit 1 if one fails)."""
    settings = load_settings() if staging else None
    raise typer.Exit(tabletop_command(scenarios, as_json=as_json, report=report, staging=staging, speedup=speedup,
                                      settings=settings, quiet=quiet))


def staging_systems(settings: Settings) -> Systems:
    """The configured flags, chat and store, for a staging rehearsal (``--staging``)."""
    real = build_activities(settings)
    return Systems(flags=real.flags, chat=real.chat, store=real.store, real_integrity=False)


async def _run_staging(loaded: list[LoadedScenario], settings: Settings, speedup: float,
                       on_result: Callable[[TabletopResult], None]) -> list[TabletopResult]:
    return await run_staging(loaded, await connect(settings), staging_systems(settings), speedup, on_result)


@contextlib.contextmanager
def _progress(total: int, as_json: bool, quiet: bool) -> Iterator[Callable[[TabletopResult], None]]:
    """Each finished scenario printed at once; a progress bar on a terminal, else one stderr line each."""
    done = [0]
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=err, transient=True) if err.is_terminal else None
    task = bar.add_task("scenarios", total=total) if bar else None

    def finished(result: TabletopResult) -> None:
        done[0] += 1
        if as_json:
            print(json.dumps(result.to_json()), flush=True)
        else:
            print(format_result(result, verbose=not quiet) + "\n", flush=True)
        if bar is not None and task is not None:
            bar.update(task, advance=1, description=result.scenario)
        else:
            print(f"[{done[0]}/{total}] {result.scenario}: {'passed' if result.passed else 'FAILED'} "
                  f"({human_duration(result.wall_s)})", file=sys.stderr, flush=True)

    if bar is None:
        yield finished
        return
    with bar:
        yield finished


@app.command()
def backtest(
    playbook: Annotated[str, typer.Argument(help="Playbook file.")],
    history: Annotated[str, typer.Option("--history", help="Metric history CSV (timestamp + one column per signal).")],
    sets: Annotated[list[str] | None, typer.Option("--set", help="Try a candidate, e.g. latency-p95.threshold=5.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    sweep: Annotated[str | None, typer.Option(
        "--sweep", help="Try candidates: SIGNAL.threshold=20:60:5, false_alarm=0.001,0.01, detect=..., "
                        "breaches=1:5:1, min_polls=...")] = None,
    healthy: Annotated[list[str] | None, typer.Option(
        "--healthy", help="Stretches known healthy: START:END seconds from the start, or a label column "
                          "(truthy rows); confirmations there are false.")] = None,
    inject: Annotated[list[str] | None, typer.Option(
        "--inject", help="SIGNAL=x1.3@2400: multiply SIGNAL from 2400 s on, to measure the detection delay.")] = None,
) -> None:
    """Replay recorded metric history through a playbook's trigger rules: when would it have fired?

    With --sweep/--healthy/--inject it advises: per candidate, whether and when it fires, false confirmations
    on the healthy stretches, and the delay to detect an injected rise; it recommends the most sensitive
    candidate without false confirmations.
    """
    raise typer.Exit(backtest_command(playbook, history, sets or [], as_json=as_json, sweep=sweep,
                                      healthy=healthy, inject=inject))


rehearse_app = typer.Typer(help="Scheduled rehearsals: replay a scenario on a cadence (Temporal Schedules).",
                           no_args_is_help=True)
app.add_typer(rehearse_app, name="rehearse")


@rehearse_app.command("schedule")
def rehearse_schedule(
    scenario: Annotated[str, typer.Argument(help="Scenario file to replay.")],
    every: Annotated[str, typer.Option("--every", help="Cadence, e.g. 1d, 12h, 7d.")],
    as_json: JsonFlag = False,
) -> None:
    """Create (or replace) a schedule that replays SCENARIO every DURATION and posts the result."""
    settings = load_settings()
    raise typer.Exit(run(lambda: schedule_command(settings, scenario, every, as_json)))


@rehearse_app.command("list")
def rehearse_list(as_json: JsonFlag = False) -> None:
    """List the scheduled rehearsals."""
    settings = load_settings()
    raise typer.Exit(run(lambda: list_command(settings, as_json)))


@rehearse_app.command("delete")
def rehearse_delete(name: Annotated[str, typer.Argument(help="Schedule id or scenario name.")],
                    as_json: JsonFlag = False) -> None:
    """Delete a scheduled rehearsal."""
    settings = load_settings()
    raise typer.Exit(run(lambda: delete_command(settings, name, as_json)))





def tabletop_command(paths: list[str], as_json: bool = False, report: Path | None = None, staging: bool = False,
                     speedup: float = 60.0, settings: Settings | None = None, quiet: bool = False) -> int:
    """``unship tabletop``: 0 when every expectation passed, 1 when one failed, 2 for invalid scenarios."""
    loaded, problems = load_all(paths)
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        return EXIT_INVALID
    with _progress(len(loaded), as_json, quiet) as finished:
        if staging:
            assert settings is not None
            results = asyncio.run(_run_staging(loaded, settings, speedup, finished))
        else:
            results = asyncio.run(run_time_skipping(loaded, finished))
    if report is not None:
        written = write_report(results, report)
        print(f"report written to {written}", file=sys.stderr)
    if not as_json:
        passed = sum(r.passed for r in results)
        print(f"{passed} of {len(results)} scenario(s) passed")
    return EXIT_PASSED if all(r.passed for r in results) else EXIT_FAILED


# --- backtest ----------------------------------------------------------------------------------------------------


def backtest_command(playbook_path: str, history_path: str, sets: list[str], as_json: bool = False,
                     sweep: str | None = None, healthy: list[str] | None = None,
                     inject: list[str] | None = None) -> int:
    """``unship backtest``: 0 with the answer (fired or not), 2 for an invalid playbook, history or option.

    With ``--sweep``, ``--healthy`` or ``--inject`` it is the threshold advisor: one row per candidate.
    """
    try:
        playbook = apply_overrides(load_playbook(playbook_path).playbook, sets)
        history = load_history(history_path, playbook.signals)
        marks = [parse_healthy(h) for h in healthy or []]
        stretches = healthy_stretches(history, marks)
        injections = [parse_injection(i) for i in inject or []]
        swept = parse_sweep(sweep) if sweep else None
    except (PlaybookError, HistoryError, OverrideError) as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    label_columns = {m for m in marks if isinstance(m, str)}
    ignored = [c for c in history.ignored if c not in label_columns]
    warnings = []
    if ignored:
        warnings.append(f"warning: ignoring column(s) that are not signals of {playbook.name}: {', '.join(ignored)}")
    spacing = row_spacing_warning(playbook, history)
    if spacing:
        warnings.append(spacing)
    for line in warnings:
        print(line, file=sys.stderr)
    if swept is not None or stretches or injections:
        advice = advise(playbook, history, swept, stretches, injections)
        if as_json:
            print(json.dumps({"playbook": playbook.name, "history": history_path, "sets": sets,
                              "warnings": warnings, **advice.to_json()}))
        else:
            print(f"playbook {playbook.name} over {history_path} ({human(history.end_s - history.start_s)} of "
                  f"history, polled every {human(playbook.confirmation.interval.total_seconds())}, "
                  f"{playbook.confirmation.method.value})")
            print(format_advice(advice))
        return EXIT_PASSED
    result = run_backtest(playbook, history)
    if as_json:
        print(json.dumps({"playbook": playbook.name, "history": history_path, "sets": sets, "warnings": warnings,
                          **result.to_json()}))
        return EXIT_PASSED
    print(f"playbook {playbook.name} over {history_path} ({human(history.end_s - history.start_s)} of history, "
          f"{result.polls} polls every {human(playbook.confirmation.interval.total_seconds())})")
    for name, threshold in result.thresholds.items():
        print(f"  {name:<24} breaches when {threshold}")
    if result.fired:
        print(f"WOULD FIRE at +{clock(result.fired_at_s)} ({result.kind}): {result.reason}")
    else:
        print(f"would NOT fire: {result.reason}")
    if result.first_breach_at_s is not None:
        print(f"first breaching poll at +{clock(result.first_breach_at_s)}")
    return EXIT_PASSED


async def schedule_command(settings: Settings, scenario_path: str, every_text: str, as_json: bool = False) -> int:
    try:
        every = parse_duration(every_text)
    except ValueError as exc:
        print(f"--every: {exc}", file=sys.stderr)
        return 2
    if not isinstance(every, timedelta) or every.total_seconds() < 60:
        print("--every: rehearse at most once a minute", file=sys.stderr)
        return 2
    client = await connect(settings)
    sid = await create_schedule(client, settings.task_queue, scenario_path, every)
    if as_json:
        print_json({"id": sid, "scenario": scenario_path, "every": every_text})
        return 0
    print(f"scheduled {sid}: every {every_text}, results go to the playbook's channel")
    return 0


async def list_command(settings: Settings, as_json: bool = False) -> int:
    rows = await list_schedules(await connect(settings))
    if as_json:
        print_json({"schedules": rows})
        return 0
    if not rows:
        print("no scheduled rehearsals")
    for row in rows:
        print(f"{row['id']}  every {row['every']}  next {row['next'] or '-'}  {row['scenario']}")
    return 0


async def delete_command(settings: Settings, name: str, as_json: bool = False) -> int:

    client = await connect(settings)
    sid = name if name.startswith(SCHEDULE_PREFIX) else schedule_id(name)
    try:
        await client.get_schedule_handle(sid).delete()
    except RPCError as exc:
        print(f"no schedule {sid}: {exc.message}", file=sys.stderr)
        return 4
    if as_json:
        print_json({"deleted": sid})
        return 0
    print(f"deleted {sid}")
    return 0
