"""Settings become the right adapters: each configured provider is routed to, an unconfigured one is refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.contracts import PollRequest
from activities.http_providers import HttpProvider
from activities.http_signals import HttpSignalSource
from activities.kserve import KServeProvider
from activities.launchdarkly import LaunchDarklyProvider
from activities.prometheus import PrometheusSignalSource
from activities.store import PostgresIncidentStore, SqliteIncidentStore
from activities.unleash import UnleashProvider
from playbooks.models import Signal, Target
from tests.support.fake_http import Answer, FakeServer, Request
from tests.support.stack import make_settings
from workers.runtime.worker import build_activities, build_worker

FLAG_TOKEN = "router-token-1234"
SIGNAL_TOKEN = "signals-token-5678"


class Router(FakeServer):
    """A model router speaking unship's generic HTTP contract, plus one JSON metric endpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.splits: dict[str, float] = {"chat-router": 0.0}

    def handle(self, request: Request) -> Answer:
        if request.path == "/metrics/r1":
            return Answer(200, {"error_rate": 0.5})
        key = request.path.removeprefix("/targets/")
        if key not in self.splits:
            return Answer(404, {"error": "unknown target"})
        if request.method == "PUT":
            self.splits[key] = request.json()["previous_percent"]
        return Answer(200, {"previous_percent": self.splits[key]})


@pytest.fixture
def router() -> Iterator[Router]:
    with Router() as server:
        yield server


def everything(tmp_path: Path, router: Router, **extra: Any) -> dict[str, Any]:
    return {
        "unleash_url": "http://127.0.0.1:4242", "unleash_api_token": "*:*.unleash-admin",
        "launchdarkly_api_token": "api-ld-0000",
        "kubernetes_api_url": "https://127.0.0.1:6443", "kubernetes_token": "k8s-token",
        "http_provider_url": router.url, "http_provider_token": FLAG_TOKEN,
        "prometheus_url": "http://127.0.0.1:9090", "http_signals_token": SIGNAL_TOKEN,
        **extra,
    }


def test_each_configured_provider_has_its_adapter(tmp_path: Path, router: Router) -> None:
    acts = build_activities(make_settings(tmp_path, **everything(
        tmp_path, router, database_url="postgresql://unship@127.0.0.1:5432/unship")))
    kinds = {name: type(p) for name, p in acts.flags.providers.items()}  # type: ignore[attr-defined]
    assert kinds == {"flagd": kinds["flagd"], "unleash": UnleashProvider, "launchdarkly": LaunchDarklyProvider,
                     "kserve": KServeProvider, "http": HttpProvider}
    assert kinds["flagd"].__name__ == "FlagdFileProvider"
    sources = {name: type(s) for name, s in acts.signals.sources.items()}  # type: ignore[attr-defined]
    assert sources == {"prometheus": PrometheusSignalSource, "http": HttpSignalSource}
    assert isinstance(acts.store, PostgresIncidentStore)
    assert acts.integrity.flags is acts.flags and acts.integrity.signals is acts.signals


async def test_targets_and_signals_reach_the_configured_systems(tmp_path: Path, router: Router,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "router-token"
    secret.write_text(FLAG_TOKEN + "\n")
    monkeypatch.setenv("UNSHIP_HTTP_PROVIDER_TOKEN_FILE", str(secret))
    settings = make_settings(tmp_path, http_provider_url=router.url, http_signals_token=SIGNAL_TOKEN)
    assert FLAG_TOKEN not in repr(settings) and SIGNAL_TOKEN not in repr(settings)
    acts = build_activities(settings)

    target = Target(provider="http", key="chat-router")
    assert await acts.flags.set_previous_percent(target, 50, "wf:revert:1")
    assert router.splits["chat-router"] == 50
    assert await acts.flags.get_previous_percent(target) == 50
    assert {r.headers["authorization"] for r in router.requests} == {f"Bearer {FLAG_TOKEN}"}

    sig = Signal.model_validate({"name": "errors", "category": "operational_health", "threshold": {"value": 1},
                                 "source": {"type": "http", "url": f"{router.url}/metrics/$release",
                                            "json_path": "error_rate"}})
    obs = await acts.signals.observe(sig, PollRequest(incident_id="i", release="r1", signals=[sig], poll=0))
    assert obs.value == 0.5
    assert router.requests[-1].headers["authorization"] == f"Bearer {SIGNAL_TOKEN}"


async def test_a_provider_that_is_not_configured_is_a_clear_non_retryable_error(tmp_path: Path) -> None:
    acts = build_activities(make_settings(tmp_path))
    assert set(acts.flags.providers) == {"flagd"}  # type: ignore[attr-defined]
    assert set(acts.signals.sources) == {"http"}  # type: ignore[attr-defined]
    assert isinstance(acts.store, SqliteIncidentStore)

    for provider in ("unleash", "launchdarkly", "kserve", "http"):
        with pytest.raises(ApplicationError) as err:
            await acts.flags.set_previous_percent(Target(provider=provider, key="chat-model"), 100, "k")
        assert err.value.non_retryable
        assert f"no flag provider {provider!r} is configured (configured: flagd)" in err.value.message

    sig = Signal.model_validate({"name": "latency", "category": "operational_health", "threshold": {"value": 1},
                                 "source": {"query": "up"}})
    with pytest.raises(ApplicationError) as err:
        await acts.signals.observe(sig, PollRequest(incident_id="i", release="r1", signals=[sig], poll=0))
    assert err.value.non_retryable and "UNSHIP_PROMETHEUS_URL" in err.value.message


def test_half_configured_providers_stop_the_worker_with_what_is_missing(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="UNSHIP_UNLEASH_API_TOKEN"):
        build_activities(make_settings(tmp_path, unleash_url="http://127.0.0.1:4242"))

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ValueError, match="not running in a Kubernetes pod"):
        build_activities(make_settings(tmp_path, kubernetes_in_cluster=True))

    with pytest.raises(ValueError, match="cannot read"):
        build_activities(make_settings(tmp_path, kubernetes_api_url="https://127.0.0.1:6443",
                                       kubernetes_ca_file=str(tmp_path / "missing-ca.crt")))


async def test_the_worker_keeps_at_most_the_configured_incidents_in_memory(tmp_path: Path,
                                                                           local_env: WorkflowEnvironment) -> None:
    """UNSHIP_WORKFLOW_CACHE bounds the incidents a worker keeps in memory (its RSS, see BENCHMARKS.md: scale)."""
    settings = make_settings(tmp_path, local_env, workflow_cache=3)
    assert build_worker(local_env.client, settings, build_activities(settings)).config()["max_cached_workflows"] == 3
    default = make_settings(tmp_path, local_env)
    assert build_worker(local_env.client, default, build_activities(default)).config()["max_cached_workflows"] == 1000
