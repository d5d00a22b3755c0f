"""All configuration of unship as one typed model, read from ``UNSHIP_*`` environment variables.

Credentials are ``SecretStr`` so they never show in logs or reprs. A ``*_FILE`` variant of every secret
(e.g. ``UNSHIP_SLACK_BOT_TOKEN_FILE``) reads it from a file, as mounted by Docker or Kubernetes secrets.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from temporalio.envconfig import ClientConfigProfile

from activities.store import PG_CONNECTIONS

SECRET_FIELDS = (
    "database_url",
    "api_token",
    "slack_bot_token",
    "slack_signing_secret",
    "slack_app_token",
    "unleash_api_token",
    "launchdarkly_api_token",
    "prometheus_bearer_token",
    "alert_bearer_token",
    "grafana_hmac_secret",
    "pagerduty_signing_secret",
    "alert_basic_password",
    "kubernetes_token",
    "http_provider_token",
    "http_signals_token",
    "console_secret",
    "github_token",
    "jira_api_token",
)


class Settings(BaseSettings):
    """unship settings. Every field is ``UNSHIP_<FIELD>`` in the environment (``TEMPORAL_ADDRESS`` too)."""

    model_config = SettingsConfigDict(env_prefix="UNSHIP_", extra="ignore", populate_by_name=True)

    state_dir: Path = Field(default=Path(".unship"), description="embedded Temporal DB, flag file, incident DB")
    http_addr: str = Field(default="127.0.0.1:8080", description="host:port of the HTTP API / gateway")
    log_format: Literal["json", "text"] | None = Field(
        default=None, description="json (one object per line) or text; default text on a terminal, else json")
    metrics_addr: str | None = Field(
        default=None, description="host:port serving /metrics for processes without the HTTP app (worker, demo)")
    temporal_metrics_addr: str | None = Field(
        default=None, description="host:port for the Temporal SDK's own Prometheus metrics; unset = off")
    playbooks_dir: Path = Field(default=Path("playbooks/library"), description="playbooks loaded by the API")
    public_url: str | None = Field(default=None, description="base URL people open the console at (links in "
                                   "Slack and `unship status`); default http://<UNSHIP_HTTP_ADDR>")
    console_secret: SecretStr | None = Field(default=None, description="signs console sign-in cookies; default: "
                                             "a random key per process (people sign in again after a restart)")
    console_session_hours: float = Field(default=12, gt=0, le=24 * 30, description="how long a console sign-in lasts")
    temporal_ui_url: str | None = Field(default=None, description="Temporal Web UI base URL for deep links; default "
                                        "the embedded server's UI")
    reports_dir: Path | None = Field(default=None, description="tabletop reports the console lists (`unship "
                                     "tabletop --report DIR/NAME`); default state_dir/reports")

    temporal_address: str | None = Field(
        default=None,
        validation_alias=AliasChoices("TEMPORAL_ADDRESS", "UNSHIP_TEMPORAL_ADDRESS"),
        description="host:port of a Temporal cluster; unset = start the embedded dev server",
    )
    temporal_namespace: str = "default"
    temporal_port: int = Field(default=7233, description="embedded dev server gRPC port")
    temporal_ui_port: int = Field(default=8233, description="embedded dev server Web UI port (0 = headless)")
    task_queue: str = "unship"
    workflow_cache: int = Field(
        default=1000, ge=1, le=100_000,
        description="incidents a worker keeps in memory (~0.5 MiB each; the others replay from history when they "
                    "move): bounds the worker's RSS")

    database_url: SecretStr | None = Field(
        default=None, description="incident store URL (may carry a password); default sqlite in state_dir")
    database_connections: int = Field(
        default=PG_CONNECTIONS, ge=1, le=1000,
        description="connections a process keeps open to a PostgreSQL incident store at most (calls past it wait "
                    "for one): size PostgreSQL's max_connections for this many per unship process")
    flagd_path: Path | None = Field(default=None, description="flagd JSON flag file; default in state_dir")

    api_token: SecretStr | None = Field(default=None, description="shared bearer token for the HTTP API (no person: "
                                                                "it never decides or operates)")
    api_token_scopes: str = Field(default="read,trigger", description="what the shared token may do: read, "
                                                                      "trigger, alerts (comma-separated)")
    api_url: str | None = Field(default=None, description="the unship API the CLI talks to; default "
                                                          "http://<UNSHIP_HTTP_ADDR>")
    token: SecretStr | None = Field(default=None, description="the CLI's bearer token (your personal token or an "
                                                              "OIDC token); default: the file `unship login` wrote")
    users_file: Path | None = Field(default=None, description="personal API tokens (hashed) and scopes; default "
                                                             "<state_dir>/users.yaml (`unship users add`)")
    oidc_issuer: str | None = Field(default=None, description="OIDC issuer whose bearer JWTs the API accepts")
    oidc_audience: str | None = Field(default=None, description="the audience (aud) those JWTs must name")
    oidc_jwks_url: str | None = Field(default=None, description="the issuer's JWKS; default from its discovery "
                                                                "document")
    oidc_user_claim: str = Field(default="sub", description="the claim holding the user id playbook roles use")
    oidc_scopes_claim: str = Field(default="scope", description="the claim listing unship scopes")
    oidc_groups_claim: str = Field(default="groups", description="the claim listing the user's groups")
    oidc_algorithms: str = Field(default="RS256,ES256", description="accepted JWT signature algorithms")
    alert_bearer_token: SecretStr | None = Field(default=None, description="bearer token alert senders present")
    grafana_hmac_secret: SecretStr | None = None
    pagerduty_signing_secret: SecretStr | None = None
    alert_basic_user: str | None = Field(default=None, description="basic-auth user alert senders present")
    alert_basic_password: SecretStr | None = None
    alert_signature_window: float = Field(default=300, gt=0, description="seconds a signed timestamp stays valid")
    alert_batch_window_ms: float = Field(default=5, ge=0, le=1000,
                                         description="how long alerts for one incident wait to share a signal")

    slack_bot_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_app_token: SecretStr | None = Field(default=None, description="xapp- token for Socket Mode")
    slack_api_url: str = "https://slack.com/api/"
    slack_socket_mode: bool = Field(default=False, description="receive Slack clicks over Socket Mode, not HTTP")

    prometheus_url: str | None = None
    prometheus_bearer_token: SecretStr | None = None

    unleash_url: str | None = None
    unleash_api_token: SecretStr | None = None
    launchdarkly_api_token: SecretStr | None = None
    launchdarkly_url: str = "https://app.launchdarkly.com"

    kubernetes_api_url: str | None = Field(default=None, description="Kubernetes API for KServe targets")
    kubernetes_token: SecretStr | None = Field(default=None, description="bearer token for the Kubernetes API")
    kubernetes_ca_file: str | None = Field(default=None, description="CA bundle of the Kubernetes API")
    kubernetes_in_cluster: bool = Field(default=False, description="KServe via the pod's service account")

    http_provider_url: str | None = Field(default=None, description="base URL of a generic HTTP flag/router")
    http_provider_token: SecretStr | None = None
    http_signals_token: SecretStr | None = Field(default=None, description="bearer token for http signals")

    github_token: SecretStr | None = Field(default=None, description="GitHub token for review tasks (Issues)")
    github_api_url: str = Field(default="https://api.github.com", description="GitHub REST API base URL")
    jira_url: str | None = Field(default=None, description="Jira Cloud site, e.g. https://acme.atlassian.net")
    jira_user: str | None = Field(default=None, description="Jira account e-mail (basic auth with the API token)")
    jira_api_token: SecretStr | None = Field(default=None, description="Jira API token (bearer without a user)")

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        for name in SECRET_FIELDS:
            path = os.environ.get(f"UNSHIP_{name.upper()}_FILE")
            if path and not data.get(name):
                try:
                    data[name] = Path(path).read_text().strip()
                except OSError as exc:
                    raise ValueError(f"UNSHIP_{name.upper()}_FILE: cannot read {path}: {exc.strerror}") from exc
        return data

    @model_validator(mode="after")
    def _temporal_profile(self) -> Settings:
        # TEMPORAL_ADDRESS is read above; a TOML profile (TEMPORAL_CONFIG_FILE / TEMPORAL_PROFILE, or the default
        # ~/.config/temporalio/temporal.toml) may name the cluster instead: then it is not the embedded server.
        if self.temporal_address is None and (os.environ.get("TEMPORAL_CONFIG_FILE") or
                                              os.environ.get("TEMPORAL_PROFILE")):
            try:
                address = ClientConfigProfile.load().address
            except Exception as exc:  # the SDK's core reports the file and key itself
                raise ValueError(f"TEMPORAL_CONFIG_FILE/TEMPORAL_PROFILE: {exc}") from exc
            if address:
                self.temporal_address = address
        return self

    @field_validator("http_addr", "metrics_addr", "temporal_metrics_addr")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None:
            split_host_port(value)
        return value

    @cached_property
    def http_host_port(self) -> tuple[str, int]:
        return split_host_port(self.http_addr)

    def secret_values(self) -> list[str]:
        """Every configured credential, for the log filter that masks them (and the tests that look for them)."""
        values = [getattr(self, name) for name in SECRET_FIELDS]
        return [v.get_secret_value() for v in values if isinstance(v, SecretStr) and v.get_secret_value()]

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable that sets ``field`` (``TEMPORAL_ADDRESS`` for ``temporal_address``)."""
        alias = cls.model_fields[field].validation_alias if field in cls.model_fields else None
        if isinstance(alias, AliasChoices):
            return str(alias.choices[0])
        return f"UNSHIP_{field.upper()}"

    @classmethod
    def describe_error(cls, error: Mapping[str, object]) -> str:
        """One pydantic error as ``VARIABLE: message``, the message saying the expected form."""
        loc = error.get("loc") or ()
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if not loc or not isinstance(loc, tuple):
            return message
        field = str(loc[0])
        text = f"{cls.env_name(field)}: {message}"
        given = error.get("input")
        if error.get("type") in ("int_parsing", "float_parsing", "bool_parsing", "literal_error") and \
                isinstance(given, str) and field not in SECRET_FIELDS:
            text += f" (got {given[:80]!r})"
        return text

    @property
    def embedded_temporal(self) -> bool:
        return not self.temporal_address

    @property
    def temporal_target(self) -> str:
        return self.temporal_address or f"127.0.0.1:{self.temporal_port}"

    @property
    def console_url(self) -> str:
        """The console's base URL (no trailing slash)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host, port = self.http_host_port
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    @property
    def resolved_temporal_ui_url(self) -> str | None:
        if self.temporal_ui_url:
            return self.temporal_ui_url.rstrip("/")
        if self.embedded_temporal and self.temporal_ui_port:
            return f"http://127.0.0.1:{self.temporal_ui_port}"
        return None

    @property
    def resolved_reports_dir(self) -> Path:
        return self.reports_dir or self.state_dir / "reports"

    @property
    def resolved_api_url(self) -> str:
        if self.api_url:
            return self.api_url.rstrip("/")
        host, port = self.http_host_port
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    @property
    def resolved_users_file(self) -> Path:
        return self.users_file or self.state_dir / "users.yaml"

    @property
    def resolved_flagd_path(self) -> Path:
        return self.flagd_path or self.state_dir / "flags.json"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url is not None and self.database_url.get_secret_value():
            return self.database_url.get_secret_value()
        return f"sqlite:///{(self.state_dir / 'unship.db').as_posix()}"


def split_host_port(value: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:8080`` for IPv6) as a pair; ``ValueError`` saying the expected form otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port such as 127.0.0.1:8080 (port 1-65535), got {value!r}")
    return host.strip("[]") if host.startswith("[") else (host or "127.0.0.1"), int(port)
