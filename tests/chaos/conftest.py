"""Chaos fixtures: one ``ChaosStack`` (dev server + ``unship worker`` process) per test, a seeded random
generator, and the seed printed with any failure (rerun with ``UNSHIP_CHAOS_SEED=<seed>``)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Generator
from pathlib import Path
from typing import Any

import pytest

from tests.support.chaos import ChaosStack, seed_from_env


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    seed = getattr(item, "chaos_seed", None)
    if seed is not None and report.failed:
        report.sections.append(("chaos seed", f"seed {seed}: rerun with UNSHIP_CHAOS_SEED={seed}"))


@pytest.fixture
async def stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ChaosStack]:
    seed = seed_from_env()
    request.node.chaos_seed = seed
    chaos = ChaosStack(tmp_path / "state", random.Random(seed), seed)
    await chaos.start()
    try:
        yield chaos
    finally:
        await chaos.stop()
