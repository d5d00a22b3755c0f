"""The generic HTTP flag / traffic-router contract, and the request helper every HTTP adapter shares.

Any flag service or model router that is not built in can be driven by unship if it serves this small
contract (one resource per target; ``{key}`` is the target's ``key``, URL-encoded as one path segment):

``PUT {base}/targets/{key}``
    Headers: ``Authorization: Bearer <token>`` (when a token is configured), ``Content-Type: application/json``,
    ``Idempotency-Key: <key>``. Body::

        {"previous_percent": 50.0,            # ABSOLUTE share of users/traffic on the previous variant, 0..100
         "idempotency_key": "unship:chat:gpt-5:revert:2",
         "kind": "flag" | "serving",
         "previous_variant": "gpt-4o", "candidate_variant": "gpt-5",
         "project": null, "environment": "production", "namespace": null}

    Sets the split so that ``previous_percent`` of users go to ``previous_variant`` and the rest to
    ``candidate_variant``. Must be idempotent: the same body twice leaves the same state. Answers 200 (with
    ``{"previous_percent": p}``) or 204. A user moved to the previous variant should stay there while the
    share only grows (sticky bucketing), as with every built-in provider.

``GET {base}/targets/{key}``
    Answers 200 ``{"previous_percent": p}`` (``null`` when unknown), 404 when the target does not exist.

Errors: 429 / 5xx (``Retry-After`` honoured), timeouts and dropped connections are retried; 400, 401, 403,
404, 405 and 422 go to a human with the answer's text. unship reads the state before writing (nothing is
written when it is already there) and reads it back after writing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import configuration_error, http_failure, transport_failure
from playbooks.models import Target

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
_TOLERANCE = 1e-6

FailureMapper = Callable[[str, str, httpx.Response], ApplicationError]


def heartbeat(*details: Any) -> None:
    """Heartbeat when running inside a Temporal activity (a no-op in plain code and tests)."""
    if activity.in_activity():
        activity.heartbeat(*details)


def segment(value: str) -> str:
    """``value`` as one URL path segment."""
    return quote(value, safe="")


async def send(
    client: httpx.AsyncClient,
    system: str,
    obj: str,
    method: str,
    url: str,
    *,
    failure: FailureMapper = http_failure,
    **kwargs: Any,
) -> httpx.Response:
    """One request; any failure becomes a classified ``ApplicationError`` naming ``system`` and ``obj``.

    No heartbeat here: the activities beat in the background while they run, with the details a retry needs
    (a beat without details would erase them)."""
    try:
        response = await client.request(method, url, **kwargs)
    except httpx.UnsupportedProtocol as exc:
        raise configuration_error(system, obj, f"bad URL {url!r}: {exc}; fix the URL in the settings") from exc
    except httpx.TransportError as exc:
        raise transport_failure(system, obj, exc) from exc
    except httpx.InvalidURL as exc:
        raise configuration_error(system, obj, f"bad URL {url!r}: {exc}; fix the URL in the settings") from exc
    if not response.is_success:
        raise failure(system, obj, response)
    return response


def json_body(system: str, obj: str, response: httpx.Response) -> Any:
    """The answer as JSON; a non-JSON answer means the URL points at something else."""
    try:
        return response.json()
    except ValueError as exc:
        raise configuration_error(
            system, obj, f"answer to {response.request.method} {response.request.url} is not JSON; "
            "check the base URL in the settings"
        ) from exc


def readback_mismatch(system: str, obj: str, wanted: float, seen: float | None) -> ApplicationError:
    """The write was accepted but reading back shows another state: someone raced us, so try again."""
    shown = "unknown" if seen is None else f"{seen:g}%"
    return ApplicationError(
        f"{system}: {obj}: wrote {wanted:g}% on the previous variant but read back {shown}; "
        "another change may have raced this one; will retry",
        type=f"{system}.readback_mismatch",
        non_retryable=False,
    )


def same_percent(a: float | None, b: float) -> bool:
    return a is not None and math.isclose(a, b, abs_tol=_TOLERANCE)


class HttpAdapter:
    """The httpx client of an adapter: the one a test passes in, or one it owns (and ``aclose`` closes)."""

    _client: httpx.AsyncClient
    _owns_client: bool

    def _use_client(self, client: httpx.AsyncClient | None, **options: Any) -> None:
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(**{"timeout": DEFAULT_TIMEOUT, **options})

    async def aclose(self) -> None:
        """Close the client if this adapter created it."""
        if self._owns_client:
            await self._client.aclose()


class ProjectFlagAdapter(HttpAdapter):
    """A flag system that scopes flags by project and environment, with per-system defaults."""

    default_project = "default"
    default_environment = "production"

    def _where(self, target: Target) -> tuple[str, str]:
        return target.project or self.default_project, target.environment or self.default_environment

    def _obj(self, target: Target) -> str:
        project, environment = self._where(target)
        return f"flag {target.key!r} (project {project!r}, environment {environment!r})"


class HttpProvider(HttpAdapter):
    """A ``FlagProvider`` for any service speaking the contract in this module's docstring."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        client: httpx.AsyncClient | None = None,
        *,
        system: str = "HTTP provider",
    ) -> None:
        if not base_url:
            raise configuration_error(system, "settings", "no base URL is configured for the HTTP provider")
        self.system = system
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._use_client(client)

    def _url(self, target: Target) -> str:
        return f"{self._base}/targets/{segment(target.key)}"

    def _obj(self, target: Target) -> str:
        return f"target {target.key!r}"

    async def get_previous_percent(self, target: Target) -> float | None:
        response = await send(self._client, self.system, self._obj(target), "GET", self._url(target),
                              headers=self._headers)
        body = json_body(self.system, self._obj(target), response)
        value = body.get("previous_percent") if isinstance(body, dict) else None
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise configuration_error(
                self.system, self._obj(target), f"previous_percent must be a number, got {value!r}"
            )
        return None if value is None else float(value)

    async def set_previous_percent(self, target: Target, percent: float, idempotency_key: str) -> bool:
        obj = self._obj(target)
        if same_percent(await self.get_previous_percent(target), percent):
            return False
        body = {
            "previous_percent": percent,
            "idempotency_key": idempotency_key,
            "kind": target.kind.value,
            "previous_variant": target.previous_variant,
            "candidate_variant": target.candidate_variant,
            "project": target.project,
            "environment": target.environment,
            "namespace": target.namespace,
        }
        await send(self._client, self.system, obj, "PUT", self._url(target), json=body,
                   headers={**self._headers, "Idempotency-Key": idempotency_key})
        seen = await self.get_previous_percent(target)
        if not same_percent(seen, percent):
            raise readback_mismatch(self.system, obj, percent, seen)
        return True
