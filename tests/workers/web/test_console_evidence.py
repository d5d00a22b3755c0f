"""What the console shows of an incident's evidence (on the time-skipping server, read over HTTP)."""

from __future__ import annotations

from pathlib import Path

import httpx
from temporalio.testing import WorkflowEnvironment

from tests.support.playbooks import sequential_snapshot
from tests.support.stack import make_settings, serve
from tests.support.world import running_world
from workers.runtime.service import IncidentService
from workers.web.app import create_app
from workflows.messages import Phase


async def test_the_incident_page_shows_where_the_sequential_test_stands(
        time_skipping_env: WorkflowEnvironment, tmp_path: Path) -> None:
    """A person at the gate sees why the incident was confirmed: each counted signal's evidence against what
    was needed, the pooled rate and its bound, not only the raw polls."""
    snap = sequential_snapshot()
    async with running_world(time_skipping_env, tmp_path) as world:
        world.signals.timeline = {"hallucinations": [60.0], "latency_p95": [1.0], "fairness_gap": [0.01]}
        world.signals.samples = {"hallucinations": [20_000]}
        handle = await world.start(snap)
        status = await world.at_phase(handle, Phase.AWAITING_DECISION)
        [evidence] = [e for e in status.confirmation if e.signal == "hallucinations"]
        settings = make_settings(tmp_path, time_skipping_env, task_queue=world.task_queue)
        service = IncidentService(time_skipping_env.client, settings, {snap.playbook.name: snap})
        async with serve(create_app(service, settings)) as url, httpx.AsyncClient(base_url=url) as http:
            page = await http.get(f"/incidents/{handle.id}")
    assert page.status_code == 200, page.text
    assert 'id="confirmation-h"' in page.text
    row = page.text.split('id="confirmation-h"', 1)[1].split("</section>", 1)[0]
    assert "hallucinations" in row and "cusum" in row and "confirmed" in row
    assert f"{evidence.statistic:.1f} of {evidence.needed:.1f}" in row  # evidence against what was needed
    assert "pooled rate 60.0/10k over 3 polls" in row
