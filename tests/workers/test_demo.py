"""`unship demo` end to end on the real embedded Temporal dev server: the README's first command."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from workers.demo import run_demo
from workers.runtime.settings import Settings

pytestmark = pytest.mark.e2e  # the demo runs twice on a real dev server: the end-to-end time limit


def run(state: Path) -> tuple[int, str]:
    console = Console(record=True, width=200, soft_wrap=True)
    code = run_demo(Settings(state_dir=state), speedup=240, console=console)
    return code, console.export_text()


def test_demo_dismisses_the_blip_reverts_the_breach_and_can_run_again(tmp_path: Path) -> None:
    code, out = run(tmp_path)
    assert code == 0, out
    assert "outcome: dismissed" in out and "outcome: reverted" in out
    assert "refused U09INTERN1: U09INTERN1 holds none of the roles" in out
    for stage in ("stage 1 (10%)", "stage 2 (50%)", "stage 3 (100%)"):
        assert f"{stage}: {stage.split('(')[1].rstrip(')')} of users on the previous model" in out
    assert "conversations-not-lost (sql): passed" in out
    review = tmp_path / "demo" / "reviews" / "unship_chat-assistant_chat-v2.4.0.md"
    assert review.exists() and "chat-v2.4.0" in review.read_text()
    assert '"unship_previous_percent": 100' in (tmp_path / "demo" / "flags.json").read_text()

    again, out = run(tmp_path)
    assert again == 0, out
    assert "outcome: reverted" in out
