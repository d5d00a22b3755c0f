"""One trace from an alert webhook request through the workflow to the flag write: the FastAPI span of
``POST /v1/alerts/generic``, Temporal's signal-with-start, the workflow and the ``apply_cohort`` activity
share a trace id (an in-memory exporter stands in for the OTLP collector)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.testing import WorkflowEnvironment

from activities.chat import LogNotifier
from activities.flagd import FlagdFileProvider
from activities.rollback import RollbackActivities
from activities.routing import FlagRouter, SignalRouter
from activities.scripted import ScriptedSignalSource
from activities.store import open_store
from tests.support.playbooks import snapshot
from tests.support.stack import api_client, make_settings, serve
from workers.runtime import telemetry
from workers.runtime.client import connect
from workers.runtime.service import IncidentService
from workers.runtime.telemetry import configure_tracing, use_tracing
from workers.runtime.worker import run_worker
from workers.web.app import create_app

AUTOMATIC = {
    "trigger": {"matchers": ["alertname=GenAIQualityDegraded"], "release_label": "release"},
    "confirmation": {"window": "3s", "interval": "1s", "breaches": 1, "out_of": 2,
                     "rule": {"any_of": ["hallucinations"]}},
    "decision": {"mode": "automatic"},
    "rollback": {"targets": [{"kind": "flag", "provider": "flagd", "key": "trace-model"}],
                 "stages": [{"percent": 100, "bake": "1s"}]},
}


def test_tracing_is_off_without_an_otlp_endpoint() -> None:
    assert configure_tracing({}) is None
    assert configure_tracing({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
                              "OTEL_SDK_DISABLED": "true"}) is None


async def test_one_trace_from_the_alert_request_to_the_flag_write(local_env: WorkflowEnvironment,
                                                                  tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    saved = list(telemetry._TRACING)
    use_tracing(provider)
    try:
        settings = make_settings(tmp_path, local_env)
        settings.state_dir.mkdir(parents=True)
        client = await connect(settings)  # with the tracing interceptor
        snap = snapshot(name="trace-test", **AUTOMATIC)
        flags = FlagdFileProvider(settings.resolved_flagd_path)
        await flags.ensure_flag(snap.playbook.rollback.targets[0])
        activities = RollbackActivities(
            FlagRouter({"flagd": flags}),
            SignalRouter({"scripted": ScriptedSignalSource({"hallucinations": [80.0], "latency_p95": [1.0],
                                                             "fairness_gap": [0.01]})}),
            LogNotifier(), open_store(settings.resolved_database_url))
        service = IncidentService(client, settings, {"trace-test": snap})
        stop = asyncio.Event()
        worker = asyncio.create_task(run_worker(client, settings, activities, stop))
        try:
            async with serve(create_app(service, settings)) as url, api_client(url) as http:
                sent = await http.post("/v1/alerts/generic", json={
                    "alerts": [{"name": "GenAIQualityDegraded", "status": "firing",
                                "labels": {"alertname": "GenAIQualityDegraded", "release": "traced-v1"}}]})
                assert sent.status_code == 202, sent.text
                assert sent.json()["accepted"] == 1, sent.text
            deadline = time.monotonic() + 60
            while not any(s.name == "RunActivity:apply_cohort" for s in exporter.get_finished_spans()):
                assert time.monotonic() < deadline, [s.name for s in exporter.get_finished_spans()]
                await asyncio.sleep(0.2)
        finally:
            stop.set()
            await worker
            await client.get_workflow_handle("unship:trace-test:traced-v1").terminate("test cleanup")
    finally:
        telemetry._TRACING[:] = saved
        HTTPXClientInstrumentor().uninstrument()
    spans = exporter.get_finished_spans()
    # the server span of the webhook request (its parent is the test client's httpx span: httpx is traced too)
    request = next(s for s in spans if s.name == "POST /v1/alerts/generic")
    trace_id = request.context.trace_id
    names = {s.name for s in spans if s.context.trace_id == trace_id}
    assert any(n.startswith("SignalWithStartWorkflow:") for n in names), names
    assert "RunWorkflow:RollbackWorkflow" in names and "RunActivity:apply_cohort" in names, names
