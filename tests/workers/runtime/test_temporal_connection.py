"""The Temporal connection takes everything ``temporalio.envconfig`` reads (TOML profiles, ``TEMPORAL_*``
variables: TLS, mTLS client certificates, API key), for the client and the worker alike; the embedded server
takes none of it. (The dev server's TLS cannot be switched on from the CLI, so this is checked on the
arguments the client connects with.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from temporalio.service import TLSConfig

from workers.runtime.client import TemporalConfigError, connect_config
from workers.runtime.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith(("TEMPORAL_", "UNSHIP_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path))  # no developer's ~/.config/temporalio/temporal.toml


def test_temporal_cloud_with_an_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEMPORAL_ADDRESS", "unship.a1b2c.tmprl.cloud:7233")
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "unship.a1b2c")
    monkeypatch.setenv("TEMPORAL_API_KEY", "cloud-api-key")
    config = connect_config(Settings())
    assert config["target_host"] == "unship.a1b2c.tmprl.cloud:7233"
    assert config["namespace"] == "unship.a1b2c" and config["api_key"] == "cloud-api-key"
    assert config.get("tls")  # an API key implies TLS


def test_self_hosted_with_mtls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("client.pem", "client.key", "ca.pem"):
        (tmp_path / name).write_text(f"-----BEGIN {name}-----\n")
    monkeypatch.setenv("TEMPORAL_ADDRESS", "temporal.internal:7233")
    monkeypatch.setenv("TEMPORAL_TLS", "true")
    monkeypatch.setenv("TEMPORAL_TLS_CLIENT_CERT_PATH", str(tmp_path / "client.pem"))
    monkeypatch.setenv("TEMPORAL_TLS_CLIENT_KEY_PATH", str(tmp_path / "client.key"))
    monkeypatch.setenv("TEMPORAL_TLS_SERVER_CA_CERT_PATH", str(tmp_path / "ca.pem"))
    monkeypatch.setenv("UNSHIP_TEMPORAL_NAMESPACE", "unship")
    config = connect_config(Settings())
    tls = config["tls"]
    assert isinstance(tls, TLSConfig)
    assert tls.client_cert == b"-----BEGIN client.pem-----\n" and tls.client_private_key
    assert tls.server_root_ca_cert == b"-----BEGIN ca.pem-----\n"
    assert config["namespace"] == "unship"  # unship's own setting wins when given


def test_a_profile_names_the_cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    profile = tmp_path / "temporal.toml"
    profile.write_text('[profile.prod]\naddress = "temporal.prod:7233"\nnamespace = "unship-prod"\n'
                       'api_key = "prod-key"\n')
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(profile))
    monkeypatch.setenv("TEMPORAL_PROFILE", "prod")
    settings = Settings()
    assert not settings.embedded_temporal and settings.temporal_target == "temporal.prod:7233"
    config = connect_config(settings)
    assert config["namespace"] == "unship-prod" and config["api_key"] == "prod-key"


def test_the_embedded_server_takes_no_cluster_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEMPORAL_API_KEY", "not-for-the-embedded-server")
    config = connect_config(Settings())
    assert config == {"target_host": "127.0.0.1:7233", "namespace": "default"}


def test_a_broken_profile_says_which_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    profile = tmp_path / "temporal.toml"
    profile.write_text("[profile.prod\n")
    monkeypatch.setenv("TEMPORAL_ADDRESS", "temporal.prod:7233")
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", str(profile))
    with pytest.raises((TemporalConfigError, ValueError), match="TEMPORAL_CONFIG_FILE"):
        connect_config(Settings())
