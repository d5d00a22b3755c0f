"""The CLI's way to the server: the HTTP API with the person's own token, never Temporal directly.

The token comes from ``UNSHIP_TOKEN`` (or ``UNSHIP_TOKEN_FILE``), else from the file ``unship login`` wrote
(``$XDG_CONFIG_HOME/unship/token``, default ``~/.config/unship/token``, mode 0600). The API address is
``UNSHIP_API_URL`` (default ``http://<UNSHIP_HTTP_ADDR>``). HTTP answers map to the CLI's exit codes: 401/403
refused (1), 404 not found (4), 422 usage (2), unreachable or 503 (3).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

from workers.runtime.settings import Settings


class ApiError(Exception):
    """The API refused or failed; ``status`` is the HTTP status (0: not reachable)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def token_file() -> Path:
    """Where ``unship login`` keeps the token (``UNSHIP_TOKEN_FILE`` when set)."""
    explicit = os.environ.get("UNSHIP_TOKEN_FILE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "unship" / "token"


def save_token(token: str) -> Path:
    """Store ``token`` for later commands, readable by its owner only."""
    path = token_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token.strip() + "\n")
    os.chmod(path, 0o600)
    return path


def stored_token(settings: Settings) -> str | None:
    if settings.token is not None:
        return settings.token.get_secret_value().strip() or None
    path = token_file()
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


class Api:
    """A small synchronous client of the unship HTTP API."""

    def __init__(self, settings: Settings, token: str | None = None, timeout: float = 30) -> None:
        self.base = settings.resolved_api_url
        presented = token if token is not None else stored_token(settings)
        headers = {"Authorization": f"Bearer {presented}"} if presented else {}
        self._client = httpx.Client(base_url=self.base, headers=headers, timeout=timeout)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None, params: dict[str, Any] | None = None) -> Any:
        response = self._send(method, path, body, headers, params)
        try:
            return response.json()
        except ValueError:
            return {"detail": response.text[:200]}

    def text(self, path: str, params: dict[str, str] | None = None) -> str:
        """GET a document (Markdown, HTML) as text, whole."""
        return self._send("GET", path, None, None, params).text

    def _send(self, method: str, path: str, body: dict[str, Any] | None, headers: dict[str, str] | None,
              params: dict[str, Any] | None = None) -> httpx.Response:
        try:
            response = self._client.request(method, path, json=body, headers=headers, params=params)
        except httpx.TransportError as exc:
            raise ApiError(0, f"cannot reach the unship API at {self.base} ({type(exc).__name__}); is `unship up` "
                              "running? (set UNSHIP_API_URL for another server)") from None
        if response.status_code >= 400:
            try:
                data = response.json()
            except ValueError:
                data = {"detail": response.text[:200]}
            detail = data.get("detail") if isinstance(data, dict) else None
            raise ApiError(response.status_code, str(detail or f"HTTP {response.status_code}"))
        return response

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return self.call("GET", path, params=params)

    def post(self, path: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> Any:
        return self.call("POST", path, body or {}, headers)


__all__ = ["Api", "ApiError", "save_token", "stored_token", "token_file"]
