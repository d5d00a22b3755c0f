"""The gateway's HTTP routes: alert webhooks in, Slack interactivity in. A thin FastAPI adapter.

- ``POST /v1/alerts/alertmanager|grafana|datadog|pagerduty|generic``: authenticate as the sender supports,
  parse (``workers.web.alert_sources``), route (``workers.web.alert_router``); 202 once Temporal holds the alerts.
  401 bad or missing credentials, 400 not JSON, 422 a field is wrong (named), 413 body over 1 MiB, 503 when
  Temporal does not accept (the sender retries). Unmatched alerts are answered 202 and recorded.
- ``GET /v1/alerts/unmatched``: the unmatched alerts, counted by reason (API token when one is set).
- ``POST /v1/slack/interactivity``: Slack's signed button clicks (``workers.web.slack_actions``).

``mount_gateway`` adds these to the API app (``unship up``); ``create_gateway_app`` serves them alone
(``unship gateway``) with ``/healthz``, ``/readyz`` and ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

from activities import metrics
from workers.runtime.service import ServiceError, TemporalUnavailable
from workers.runtime.settings import Settings
from workers.web.alert_router import AlertRouter, UnmatchedLog
from workers.web.alert_sources import (
    PARSERS,
    SOURCES,
    AuthError,
    PayloadError,
    check_basic,
    check_bearer,
    decode_form_or_json,
    decode_json,
    verify_grafana,
    verify_pagerduty,
)
from workers.web.auth import Authenticator, Scope, require
from workers.web.auth import AuthError as WebAuthError
from workers.web.guards import ServiceGetter
from workers.web.problems import problem, problem_responses
from workers.web.slack_actions import GroupResolver, SlackActions

log = logging.getLogger(__name__)


_DESCRIPTIONS = {
    "alertmanager": "Prometheus Alertmanager webhook (version 4). Auth: bearer or basic (http_config).",
    "grafana": "Grafana unified-alerting webhook (version 1). Auth: HMAC (X-Grafana-Alerting-Signature, "
               "optional timestamp header) when UNSHIP_GRAFANA_HMAC_SECRET is set, else bearer or basic.",
    "datadog": "Datadog webhook with unship's custom payload (docs/gateway.md), JSON or form-encoded. "
               "Auth: bearer (custom header) or basic.",
    "pagerduty": "PagerDuty V3 webhook. Auth: X-PagerDuty-Signature when UNSHIP_PAGERDUTY_SIGNING_SECRET is set, "
                 "else bearer (custom header).",
    "generic": "Generic JSON: {alerts: [{labels, status?, name?, annotations?, fingerprint?, group_key?, "
               "severity?, starts_at?, ends_at?}]}. Auth: bearer or basic.",
}


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


class Gateway:
    """Authentication, parsing and routing of alert webhooks, and the Slack actions, over one settings."""

    def __init__(self, settings: Settings, get_service: ServiceGetter, *, router: AlertRouter | None = None,
                 slack: SlackActions | None = None, clock: Callable[[], float] = time.time,
                 auth: Authenticator | None = None) -> None:
        self.settings = settings
        self.auth = auth or Authenticator(settings)
        self.get_service = get_service
        self.clock = clock
        self.unmatched = router.unmatched if router else UnmatchedLog()
        self._router = router
        self._router_lock = asyncio.Lock()
        self.slack = slack or self._slack_from_settings()

    def _slack_from_settings(self) -> SlackActions:
        client = None
        token = _secret(self.settings.slack_bot_token)
        if token:
            from slack_sdk.web.async_client import AsyncWebClient

            client = AsyncWebClient(token=token, base_url=self.settings.slack_api_url, timeout=10)
        return SlackActions(self.get_service, signing_secret=_secret(self.settings.slack_signing_secret),
                            client=client, groups=GroupResolver(client))

    async def router(self) -> AlertRouter:
        if self._router is None:
            async with self._router_lock:
                if self._router is None:
                    service = await self.get_service()
                    self._router = AlertRouter.for_service(
                        service, window=self.settings.alert_batch_window_ms / 1000, unmatched=self.unmatched)
        return self._router

    # --- authentication -----------------------------------------------------------------------------------

    async def authenticate(self, source: str, body: bytes, headers: Mapping[str, str]) -> None:
        """Raise ``AuthError`` unless the request carries this source's configured credentials.

        Without alert credentials (bearer, basic, Grafana HMAC, PagerDuty signature), a bearer token of an
        identity holding the ``alerts`` scope is accepted (a users-file service account, or the shared API token
        when ``UNSHIP_API_TOKEN_SCOPES`` includes ``alerts``); operator credentials never double as alert ones.
        """
        s = self.settings
        if source == "grafana" and s.grafana_hmac_secret is not None:
            verify_grafana(_secret(s.grafana_hmac_secret) or "", body, headers, self.clock(), s.alert_signature_window)
            return
        if source == "pagerduty" and s.pagerduty_signing_secret is not None:
            verify_pagerduty(_secret(s.pagerduty_signing_secret) or "", body, headers)
            return
        bearer = _secret(s.alert_bearer_token)
        password = _secret(s.alert_basic_password)
        basic = (s.alert_basic_user, password) if s.alert_basic_user and password else None
        if bearer is None and basic is None:
            # No alert credentials: an identity with the alerts scope (anonymous only when nothing is configured,
            # and then the server is loopback-only).
            authorization = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
            try:
                identity = await self.auth.identify(authorization)
            except WebAuthError as exc:
                raise AuthError(exc.detail) from None
            if Scope.ALERTS not in identity.scopes:
                raise AuthError(f"{identity.label} may not send alerts (no 'alerts' scope): configure "
                                "UNSHIP_ALERT_BEARER_TOKEN for alert senders, or give them their own token with "
                                "`unship users add ID --scope alerts`")
            return
        if bearer is not None and check_bearer(headers, bearer):
            return
        if basic is not None and check_basic(headers, *basic):
            return
        raise AuthError("missing or wrong credentials: send the bearer token (UNSHIP_ALERT_BEARER_TOKEN) or the "
                        "basic-auth user and password configured for alert senders")

    # --- receiving -----------------------------------------------------------------------------------------

    async def receive(self, source: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """The HTTP status and JSON answer for one alert webhook request."""
        try:
            await self.authenticate(source, body, headers)
        except AuthError as exc:
            return 401, {"detail": str(exc)}
        content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        try:
            data = decode_form_or_json(body, content_type) if source == "datadog" else decode_json(body)
            alerts = PARSERS[source](data, datetime.now(UTC))
        except PayloadError as exc:
            return (400 if exc.field == "body" else 422), {"detail": str(exc), "field": exc.field}
        if not alerts:
            return 202, {"accepted": 0, "incidents": [], "unmatched": 0, "detail": "no alert in this event"}
        try:
            router = await self.router()
            result = await router.route(alerts)
        except TemporalUnavailable as exc:
            return 503, {"detail": str(exc)}
        except ServiceError as exc:
            log.error("alerts from %s could not be delivered: %s", source, exc)
            return 503, {"detail": str(exc)}
        except Exception as exc:
            log.exception("alerts from %s could not be delivered", source)
            return 503, {"detail": f"alerts could not be delivered: {type(exc).__name__}"}
        return 202, result.model_dump()


def mount_gateway(app: FastAPI, get_service: ServiceGetter, settings: Settings,
                  gateway: Gateway | None = None) -> Gateway:
    """Add the alert and Slack routes to ``app``; the gateway is also kept in ``app.state.gateway``."""
    gw = gateway or Gateway(settings, get_service, auth=getattr(app.state, "authenticator", None))
    app.state.gateway = gw
    metrics.initialise(tuple(SOURCES))
    if not hasattr(app.state, "authenticator"):
        app.state.authenticator = gw.auth

    for source in SOURCES:
        app.router.add_api_route(
            f"/v1/alerts/{source}", _alert_route(gw, source), methods=["POST"], status_code=202,
            tags=["alerts"], summary=f"Receive {source} alerts", description=_DESCRIPTIONS[source],
            responses=problem_responses(400, 401, 413, 422, 503),
            openapi_extra={"requestBody": {"required": True, "content": _content_types(source)}},
            route_class_override=DirectRoute,
        )

    @app.get("/v1/alerts/unmatched", tags=["alerts"], responses=problem_responses(401, 403, 422))
    async def unmatched(request: Request, limit: int = Query(default=100, ge=0, le=500)) -> JSONResponse:
        """Alerts that matched no playbook (or named no usable release), counted by reason, newest first."""
        try:
            await require(Scope.READ)(request)
        except WebAuthError as exc:
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            metrics.AUTH_FAILURES.labels(endpoint="alerts").inc()
            return problem(exc.status, exc.detail, instance="/v1/alerts/unmatched", headers=headers)
        return JSONResponse(gw.unmatched.summary(limit))

    @app.post("/v1/slack/interactivity", tags=["slack"], responses=problem_responses(400, 401, 413, 503),
              openapi_extra={"requestBody": {"required": True, "content": {
        "application/x-www-form-urlencoded": {"schema": {"type": "object", "properties": {
            "payload": {"type": "string"}}}}}}})
    async def slack_interactivity(request: Request) -> Response:
        """Slack's signed interactivity requests (Approve / Reject clicks); answered at once."""
        reply = await gw.slack.handle_http(await request.body(), dict(request.headers))
        if reply.body is None:
            return Response(status_code=reply.status)
        if reply.status == 401:
            metrics.AUTH_FAILURES.labels(endpoint="slack").inc()
        if reply.status >= 400:
            return problem(reply.status, instance="/v1/slack/interactivity", **reply.body)
        return JSONResponse(reply.body, status_code=reply.status)

    return gw


class DirectRoute(APIRoute):
    """A route whose endpoint takes the ``Request`` and returns the ``Response`` itself: documented in the
    OpenAPI like any route, but called without FastAPI's dependency solving (query, header and body
    parameters), which the alert webhooks do not use and which cost as much as the rest of the route under an
    alert storm. Everything in front of the route (body limit, error handlers) still applies."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint
        if not inspect.iscoroutinefunction(endpoint):
            raise TypeError(f"{self.path}: a DirectRoute endpoint is an async function of the Request")
        return endpoint


def _content_types(source: str) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}
    if source == "datadog":  # Datadog's "Encode as form" option
        content["application/x-www-form-urlencoded"] = {"schema": {"type": "object"}}
    return content


def _count_alerts(source: str, status: int, body: Mapping[str, Any]) -> None:
    if status == 401:
        metrics.AUTH_FAILURES.labels(endpoint="alerts").inc()
    if status >= 400:
        metrics.ALERTS.labels(source=source, result="refused").inc()
        return
    metrics.ALERTS.labels(source=source, result="accepted").inc(int(body.get("accepted", 0) or 0))
    metrics.ALERTS.labels(source=source, result="unmatched").inc(int(body.get("unmatched", 0) or 0))


def _alert_route(gw: Gateway, source: str) -> Callable[[Request], Awaitable[JSONResponse]]:
    async def receive(request: Request) -> JSONResponse:
        status, body = await gw.receive(source, await request.body(), dict(request.headers))
        _count_alerts(source, status, body)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else ({"Retry-After": "5"} if status == 503 else None)
        if status >= 400:
            return problem(status, instance=request.url.path, headers=headers, **body)
        return JSONResponse(body, status_code=status, headers=headers)

    receive.__name__ = f"alerts_{source}"
    return receive
