"""The one way unship connects to Temporal: pydantic payloads, the configured address and namespace, everything
``temporalio.envconfig`` reads (a TOML profile, ``TEMPORAL_*`` variables: TLS, mTLS client certificates, API key,
gRPC metadata), and the SDK's own Prometheus metrics when ``UNSHIP_TEMPORAL_METRICS_ADDR`` is set.

Self-hosted with mTLS::

    TEMPORAL_ADDRESS=temporal.internal:7233 TEMPORAL_NAMESPACE=unship TEMPORAL_TLS=true
    TEMPORAL_TLS_CLIENT_CERT_PATH=/etc/unship/tls/client.pem TEMPORAL_TLS_CLIENT_KEY_PATH=/etc/unship/tls/client.key
    TEMPORAL_TLS_SERVER_CA_CERT_PATH=/etc/unship/tls/ca.pem

Temporal Cloud with an API key (TLS is implied)::

    TEMPORAL_ADDRESS=<namespace>.<account>.tmprl.cloud:7233 TEMPORAL_NAMESPACE=<namespace>.<account>
    TEMPORAL_API_KEY=...   (or a profile: TEMPORAL_CONFIG_FILE=temporal.toml TEMPORAL_PROFILE=prod)
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfig, ClientConnectConfig
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from workers.runtime.settings import Settings
from workers.runtime.telemetry import tracing


class TemporalUnreachable(ConnectionError):
    """No Temporal frontend answered at the configured address."""

    def __init__(self, target: str, settings: Settings, detail: str) -> None:
        hint = (
            "is `unship up` running?"
            if settings.embedded_temporal
            else "check TEMPORAL_ADDRESS (and TEMPORAL_TLS*, TEMPORAL_API_KEY) and that the cluster is up"
        )
        super().__init__(f"cannot reach Temporal at {target}: {hint} ({detail})")
        self.target = target


class TemporalConfigError(ValueError):
    """The Temporal client configuration (profile file or ``TEMPORAL_*`` variables) cannot be used."""


_RUNTIMES: dict[str, Runtime] = {}


def temporal_runtime(settings: Settings) -> Runtime | None:
    """The SDK runtime exporting its metrics on ``UNSHIP_TEMPORAL_METRICS_ADDR`` (one per process and address);
    None (the SDK default) when unset."""
    address = settings.temporal_metrics_addr
    if not address:
        return None
    if address not in _RUNTIMES:
        try:
            _RUNTIMES[address] = Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=address)))
        except Exception as exc:  # the core reports a port in use as a generic error
            raise TemporalConfigError(f"UNSHIP_TEMPORAL_METRICS_ADDR={address}: cannot serve metrics there: "
                                      f"{exc}") from exc
    return _RUNTIMES[address]


def connect_config(settings: Settings) -> ClientConnectConfig:
    """The ``Client.connect`` arguments: the envconfig profile (file, ``TEMPORAL_*``) for a configured cluster,
    with unship's address and namespace settings on top; the embedded server needs none of it."""
    config: ClientConnectConfig = {}
    if not settings.embedded_temporal:
        try:
            config = ClientConfig.load_client_connect_config()
        except Exception as exc:  # the core reports a bad file or value with its own message
            raise TemporalConfigError(f"Temporal client configuration (TEMPORAL_CONFIG_FILE, TEMPORAL_PROFILE, "
                                      f"TEMPORAL_*): {exc}") from exc
    config["target_host"] = settings.temporal_target
    if "temporal_namespace" in settings.model_fields_set or not config.get("namespace"):
        config["namespace"] = settings.temporal_namespace
    return config


async def connect(settings: Settings, *, timeout: float = 5.0) -> Client:
    """Connect to ``settings.temporal_target``; raises ``TemporalUnreachable`` with a hint when nothing answers."""
    config = connect_config(settings)
    extra: dict[str, Any] = {}
    runtime = temporal_runtime(settings)
    if runtime is not None:
        extra["runtime"] = runtime
    traced = tracing()
    if traced is not None:
        extra["interceptors"] = traced.interceptors()
    try:
        return await Client.connect(
            **config,
            data_converter=pydantic_data_converter,
            connect_timeout=timedelta(seconds=timeout),
            **extra,
        )
    except RuntimeError as exc:  # the SDK reports transport failures as RuntimeError
        raise TemporalUnreachable(settings.temporal_target, settings, _short(exc)) from exc


def _short(exc: BaseException) -> str:
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    return text.splitlines()[0][:200] if text else type(exc).__name__
