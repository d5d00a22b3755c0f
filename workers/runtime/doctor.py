"""Preflight: does this configuration run the loaded playbooks? Checked by ``unship doctor`` and at the start of
``unship up`` / ``unship worker`` (which refuse to start on an error unless ``--no-preflight``).

Every finding names what to fix: the playbook and field that needs something, and the setting to set. Checks:
each playbook's signal sources, flag/serving providers, integrity checks (PromQL needs Prometheus, SQL needs its
DSN variable) and Slack settings are configured, and the configured systems answer; the incident store answers
with the schema version this release expects; Temporal answers and has the namespace.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Literal

import httpx
from pydantic import BaseModel
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.service import RPCError, RPCStatusCode

from activities.store import StoreConfigurationError, open_store, schema_status
from playbooks.models import HttpCheck, PlaybookSnapshot, PromqlCheck, SqlCheck
from workers.runtime.client import TemporalConfigError, TemporalUnreachable, connect
from workers.runtime.settings import Settings

Severity = Literal["error", "warning", "ok"]
_TIMEOUT = 5.0

SIGNAL_SETTINGS = {"prometheus": "UNSHIP_PROMETHEUS_URL"}
PROVIDER_SETTINGS = {
    "unleash": "UNSHIP_UNLEASH_URL and UNSHIP_UNLEASH_API_TOKEN",
    "launchdarkly": "UNSHIP_LAUNCHDARKLY_API_TOKEN",
    "kserve": "UNSHIP_KUBERNETES_API_URL (+ UNSHIP_KUBERNETES_TOKEN) or UNSHIP_KUBERNETES_IN_CLUSTER=true",
    "http": "UNSHIP_HTTP_PROVIDER_URL",
}


class Finding(BaseModel):
    """One result of a check: what, where, and what to set."""

    severity: Severity
    check: str
    message: str
    playbook: str | None = None
    field: str | None = None
    setting: str | None = None

    def line(self) -> str:
        where = ": ".join(p for p in (self.playbook, self.field) if p)
        fix = f" (set {self.setting})" if self.setting and self.severity != "ok" else ""
        return f"{self.severity.upper():7} {self.check}: {where + ': ' if where else ''}{self.message}{fix}"


def configured_signal_sources(settings: Settings) -> set[str]:
    return {"http", "scripted"} | ({"prometheus"} if settings.prometheus_url else set())


def configured_providers(settings: Settings) -> set[str]:
    names = {"flagd"}
    if settings.unleash_url and settings.unleash_api_token:
        names.add("unleash")
    if settings.launchdarkly_api_token:
        names.add("launchdarkly")
    if settings.kubernetes_api_url or settings.kubernetes_in_cluster:
        names.add("kserve")
    if settings.http_provider_url:
        names.add("http")
    return names


def playbook_findings(settings: Settings, playbooks: dict[str, PlaybookSnapshot],
                      environ: dict[str, str] | None = None) -> list[Finding]:
    """What the playbooks need that the settings do not configure (no network)."""
    environ = dict(os.environ) if environ is None else environ
    sources, providers = configured_signal_sources(settings), configured_providers(settings)
    found: list[Finding] = []
    for name, snapshot in sorted(playbooks.items()):
        pb = snapshot.playbook
        for i, signal in enumerate(pb.signals):
            if signal.source.type == "scripted":
                found.append(Finding(severity="warning", check="signals", playbook=name,
                                     field=f"signals.{i}.source.type",
                                     message=f"signal {signal.name!r} uses the scripted source (tests and "
                                             "rehearsals only): it never measures production"))
            elif signal.source.type not in sources:
                found.append(Finding(severity="error", check="signals", playbook=name,
                                     field=f"signals.{i}.source.type",
                                     message=f"signal {signal.name!r} reads {signal.source.type}, which is not "
                                             "configured: every poll would be 'no data'",
                                     setting=SIGNAL_SETTINGS.get(signal.source.type)))
        for i, target in enumerate(pb.rollback.targets):
            if target.provider not in providers:
                setting = PROVIDER_SETTINGS.get(target.provider)
                found.append(Finding(severity="error", check="providers", playbook=name,
                                     field=f"rollback.targets.{i}.provider",
                                     message=f"target {target.key!r} is on {target.provider}, which is not "
                                             + ("configured" if setting else "a provider unship knows"),
                                     setting=setting))
        for i, check in enumerate(pb.integrity):
            if isinstance(check, SqlCheck) and not environ.get(check.dsn_env):
                found.append(Finding(severity="error", check="integrity", playbook=name,
                                     field=f"integrity.{i}.dsn_env",
                                     message=f"check {check.name!r} reads the database URL from "
                                             f"{check.dsn_env}, which is not set", setting=check.dsn_env))
            elif isinstance(check, PromqlCheck) and "prometheus" not in sources:
                found.append(Finding(severity="error", check="integrity", playbook=name, field=f"integrity.{i}",
                                     message=f"check {check.name!r} is a PromQL query and Prometheus is not "
                                             "configured", setting="UNSHIP_PROMETHEUS_URL"))
        if settings.slack_bot_token is None:
            found.append(Finding(severity="warning", check="slack", playbook=name, field="communications.channel",
                                 message=f"messages for {pb.communications.channel} go to the log and approvals "
                                         "only through the CLI/API (no Slack bot token)",
                                 setting="UNSHIP_SLACK_BOT_TOKEN"))
    if settings.slack_bot_token is not None and settings.slack_signing_secret is None \
            and not settings.slack_socket_mode:
        found.append(Finding(severity="error", check="slack", message="Slack messages are sent but Approve/Reject "
                             "clicks cannot be verified", setting="UNSHIP_SLACK_SIGNING_SECRET "
                             "(or UNSHIP_SLACK_SOCKET_MODE=true with UNSHIP_SLACK_APP_TOKEN)"))
    return found


async def _http_probe(check: str, setting: str, url: str, headers: dict[str, str] | None = None,
                      ok: Callable[[httpx.Response], bool] = lambda r: r.status_code < 400,
                      what: str = "") -> Finding:
    try:
        async with httpx.AsyncClient(timeout=_TIMEOUT) as client:
            response = await client.get(url, headers=headers or {})
    except httpx.HTTPError as exc:
        return Finding(severity="error", check=check, setting=setting,
                       message=f"{url} does not answer: {type(exc).__name__}: {str(exc)[:160]}")
    if not ok(response):
        return Finding(severity="error", check=check, setting=setting,
                       message=f"{url} answered {response.status_code}{what}")
    return Finding(severity="ok", check=check, message=f"{url} answers")


def _bearer(secret: object) -> dict[str, str]:
    value = getattr(secret, "get_secret_value", lambda: None)()
    return {"Authorization": f"Bearer {value}"} if value else {}


async def reachability(settings: Settings, playbooks: dict[str, PlaybookSnapshot]) -> list[Finding]:
    """The configured systems answer (Prometheus, Unleash, the Kubernetes API, the HTTP provider, Slack, the
    HTTP integrity checks' hosts)."""
    probes: list[Awaitable[Finding]] = []
    if settings.prometheus_url:
        probes.append(_http_probe("prometheus", "UNSHIP_PROMETHEUS_URL",
                                  settings.prometheus_url.rstrip("/") + "/api/v1/query?query=vector(1)",
                                  _bearer(settings.prometheus_bearer_token)))
    if settings.unleash_url and settings.unleash_api_token:
        probes.append(_http_probe("unleash", "UNSHIP_UNLEASH_URL / UNSHIP_UNLEASH_API_TOKEN",
                                  settings.unleash_url.rstrip("/") + "/api/admin/projects",
                                  {"Authorization": settings.unleash_api_token.get_secret_value()}))
    if settings.kubernetes_api_url:
        probes.append(_http_probe("kserve", "UNSHIP_KUBERNETES_API_URL / UNSHIP_KUBERNETES_TOKEN",
                                  settings.kubernetes_api_url.rstrip("/") + "/version",
                                  _bearer(settings.kubernetes_token)))
    if settings.slack_bot_token:
        probes.append(_http_probe(
            "slack", "UNSHIP_SLACK_BOT_TOKEN", settings.slack_api_url.rstrip("/") + "/auth.test",
            _bearer(settings.slack_bot_token),
            ok=lambda r: r.status_code == 200 and bool(r.json().get("ok")), what=" (auth.test is not ok: is the "
            "bot token valid?)"))
    for name, snapshot in sorted(playbooks.items()):
        for i, check in enumerate(snapshot.playbook.integrity):
            if isinstance(check, HttpCheck):
                probes.append(_playbook_probe(name, f"integrity.{i}.url", check.url))
    return list(await asyncio.gather(*probes))


async def _playbook_probe(playbook: str, field: str, url: str) -> Finding:
    finding = await _http_probe("integrity", "", url, ok=lambda r: r.status_code < 500)
    # the check's host may answer only inside the cluster: a warning, not a refusal
    severity = "warning" if finding.severity == "error" else finding.severity
    return finding.model_copy(update={"playbook": playbook, "field": field, "setting": None, "severity": severity})


async def store_findings(settings: Settings) -> list[Finding]:
    """The incident store answers and has (or can be migrated to) this release's schema."""
    try:
        store = open_store(settings.resolved_database_url)
        status = await asyncio.wait_for(schema_status(store), timeout=_TIMEOUT * 2)
    except StoreConfigurationError as exc:
        return [Finding(severity="error", check="store", message=str(exc), setting="UNSHIP_DATABASE_URL")]
    except Exception as exc:  # noqa: BLE001 - any failure to answer is the finding
        return [Finding(severity="error", check="store", setting="UNSHIP_DATABASE_URL",
                        message=f"the incident store does not answer: {type(exc).__name__}: {str(exc)[:200]}")]
    if status.current > status.expected:
        return [Finding(severity="error", check="store", setting="UNSHIP_DATABASE_URL",
                        message=f"the store has schema version {status.current}, newer than this release's "
                                f"{status.expected}: run the newer unship, or point at another database")]
    if status.current < status.expected:
        return [Finding(severity="ok", check="store",
                        message=f"schema version {status.current}; migrations to {status.expected} run at start")]
    return [Finding(severity="ok", check="store", message=f"schema version {status.current} (current)")]


async def temporal_findings(settings: Settings) -> list[Finding]:
    """Temporal answers at the configured address and the namespace exists."""
    try:
        client = await connect(settings, timeout=_TIMEOUT)
    except (TemporalUnreachable, TemporalConfigError) as exc:
        return [Finding(severity="error", check="temporal", message=str(exc),
                        setting="TEMPORAL_ADDRESS (or TEMPORAL_PROFILE / TEMPORAL_CONFIG_FILE)")]
    try:
        await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=client.namespace), timeout=timedelta(seconds=_TIMEOUT))
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return [Finding(severity="error", check="temporal", setting="UNSHIP_TEMPORAL_NAMESPACE / "
                            "TEMPORAL_NAMESPACE", message=f"namespace {client.namespace!r} does not exist on "
                                                          f"{settings.temporal_target}")]
        return [Finding(severity="error", check="temporal", setting="TEMPORAL_API_KEY / TEMPORAL_TLS*",
                        message=f"{settings.temporal_target} refused: {exc.message}")]
    return [Finding(severity="ok", check="temporal",
                    message=f"{settings.temporal_target} answers, namespace {client.namespace!r}")]


async def preflight(settings: Settings, playbooks: dict[str, PlaybookSnapshot], *,
                    temporal: bool = True) -> list[Finding]:
    """Every check; ``temporal=False`` when the caller starts the embedded server itself."""
    found = playbook_findings(settings, playbooks)
    tasks: list[Awaitable[list[Finding]]] = [reachability(settings, playbooks), store_findings(settings)]
    if temporal:
        tasks.append(temporal_findings(settings))
    for group in await asyncio.gather(*tasks):
        found.extend(group)
    return found


def has_errors(findings: list[Finding]) -> bool:
    return any(f.severity == "error" for f in findings)
