"""Metrics and traces of the unship processes themselves.

``serve_metrics`` puts unship's ``/metrics`` on ``UNSHIP_METRICS_ADDR`` for processes without the HTTP app
(``unship worker``, ``unship demo``); ``unship up`` and ``unship gateway`` serve it on the HTTP app as well.
The Temporal SDK's own metrics are configured with the client (``workers.runtime.client.temporal_runtime``).

Traces: with ``OTEL_EXPORTER_OTLP_ENDPOINT`` set, ``configure_tracing`` exports OTLP spans of the HTTP app,
outgoing httpx calls (flag, signal and chat systems) and Temporal (client calls, workflows, activities) as one
trace per request; without it, no tracing code runs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from wsgiref.simple_server import WSGIServer

from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import start_http_server
from temporalio.contrib.opentelemetry import TracingInterceptor

from activities import metrics
from workers.runtime.settings import Settings, split_host_port


def serve_metrics(settings: Settings) -> WSGIServer | None:
    """Serve unship's metrics on ``UNSHIP_METRICS_ADDR`` in a background thread (None when unset)."""
    if not settings.metrics_addr:
        return None
    host, port = split_host_port(settings.metrics_addr)
    try:
        server, _ = start_http_server(port, addr=host, registry=metrics.REGISTRY)
    except OSError as exc:
        raise ValueError(f"UNSHIP_METRICS_ADDR={settings.metrics_addr}: cannot listen there: {exc.strerror}") from exc
    return server


def stop_metrics(server: WSGIServer | None) -> None:
    if server is not None:
        threading.Thread(target=server.shutdown, daemon=True).start()
        server.server_close()


# --- traces ----------------------------------------------------------------------------------------------------


class Tracing:
    """OpenTelemetry for one process: the Temporal client interceptor (client calls, workflows and activities,
    with the context carried in Temporal headers), the FastAPI app and httpx, all on one tracer provider."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("unship")
        self._httpx = False

    def interceptors(self) -> list[TracingInterceptor]:
        return [TracingInterceptor(self.tracer)]

    def instrument_app(self, app: FastAPI) -> None:
        FastAPIInstrumentor.instrument_app(app, tracer_provider=self.provider, excluded_urls="healthz,readyz,metrics")

    def instrument_httpx(self) -> None:
        if not self._httpx:
            HTTPXClientInstrumentor().instrument(tracer_provider=self.provider)
            self._httpx = True


_TRACING: list[Tracing] = []


def tracing() -> Tracing | None:
    """The process's tracing, once ``configure_tracing`` or ``use_tracing`` set it up (None: traces are off)."""
    return _TRACING[0] if _TRACING else None


def use_tracing(provider: TracerProvider) -> Tracing:
    """Trace with ``provider`` from now on in this process (the tests hand in an in-memory exporter)."""
    _TRACING[:] = [Tracing(provider)]
    _TRACING[0].instrument_httpx()
    return _TRACING[0]


def configure_tracing(environ: Mapping[str, str] | None = None) -> Tracing | None:
    """OTLP export (http/protobuf) when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
    is set, configured by the standard ``OTEL_*`` variables (headers, service name, sampler ...); off otherwise."""
    environ = os.environ if environ is None else environ
    if not (environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return None
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    resource = Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME", "unship")})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return use_tracing(provider)
