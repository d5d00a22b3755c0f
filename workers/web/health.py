"""``/healthz``, ``/readyz`` and ``/metrics``: liveness, readiness and Prometheus metrics, without a token."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from activities import metrics
from workers.runtime.service import ServiceError
from workers.web.guards import ServiceGetter
from workers.web.problems import problem, problem_responses


def mount_health(app: FastAPI, get_service: ServiceGetter) -> None:
    """``/healthz`` (the process is up) and ``/readyz`` (Temporal answers), without a token."""

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse, responses={200: {"content": {
        "text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text exposition format"}})
    async def prometheus_metrics() -> Response:
        """unship's metrics in the Prometheus text format (no token: scrape it from the monitoring network)."""
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.get("/readyz", tags=["health"], responses={200: {"content": {"application/json": {"schema": {
        "type": "object", "properties": {"status": {"const": "ready"}}, "required": ["status"]}}}},
        **problem_responses(503)})
    async def readyz() -> JSONResponse:
        """Temporal answers (503 otherwise)."""
        try:
            ready = await (await get_service()).ready()
        except ServiceError:
            ready = False
        if ready:
            return JSONResponse({"status": "ready"})
        return problem(503, "Temporal does not answer", instance="/readyz", headers={"Retry-After": "5"})
