"""Signal values from any HTTP endpoint that answers JSON (``source.type: http``).

``GET url`` (``$release`` in the URL is replaced by the poll's release, URL-encoded), with
``Authorization: Bearer <token>`` when a token is configured. ``json_path`` is a dotted path into the answer
(``data.error_rate``, list items by index: ``results.0.value`` or ``results[0].value``); without it the whole
answer must be the number. A number, or a string holding one, is the value. A missing path, ``null``, a
non-numeric value, NaN/Inf or an answer that is not JSON cannot be measured: NO_DATA with the reason, which
the signal's ``no_data`` policy then counts. 4xx answers are a configuration problem and never retried;
429, 5xx, timeouts and connection errors are retried.

The endpoint gives a finished value, so there is no sample count: ``min_samples`` cannot be checked for an
HTTP source. Use a Prometheus ratio source (``events`` / ``outputs``) for rates that need a minimum sample.
"""

from __future__ import annotations

import math
import re
from typing import Any
from urllib.parse import quote

import httpx

from activities.contracts import PollRequest, SignalObservation
from activities.errors import configuration_error, http_failure, transport_failure
from activities.http_providers import HttpAdapter
from activities.routing import classify
from playbooks.models import Signal

SYSTEM = "http-signal"
RELEASE = re.compile(r"\$release(?![A-Za-z0-9_])")
_INDEX = re.compile(r"\[(\d+)\]")


class HttpSignalSource(HttpAdapter):
    """A ``SignalSource`` for ``source.type == "http"``: one GET per poll, one number from the JSON answer."""

    def __init__(self, client: httpx.AsyncClient | None = None, token: str | None = None) -> None:
        self._headers = {"Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._use_client(client)

    async def observe(self, signal: Signal, request: PollRequest) -> SignalObservation:
        """Fetch the signal's URL for the poll's release and read the number at ``json_path``."""
        source = signal.source
        if not source.url:
            raise configuration_error(SYSTEM, f"signal {signal.name}", "the source has no 'url'")
        url = RELEASE.sub(lambda _: quote(request.release, safe=""), source.url)
        obj = f"signal {signal.name}"
        try:
            response = await self._client.get(url, headers=self._headers)
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise configuration_error(SYSTEM, obj, f"bad URL {source.url!r}: {exc}; fix it in the playbook") from exc
        except httpx.TransportError as exc:
            raise transport_failure(SYSTEM, obj, exc) from exc
        if not response.is_success:
            raise http_failure(SYSTEM, f"{obj} (GET {source.url})", response)
        try:
            body = response.json()
        except ValueError:
            return classify(signal, None, None, f"answer is not JSON: {response.text[:120]!r}")
        value, detail = extract_number(body, source.json_path)
        return classify(signal, value, None, detail)


def extract_number(body: Any, json_path: str | None) -> tuple[float | None, str]:
    """The number at ``json_path`` in ``body`` (dotted, with list indexes), or None with the reason."""
    where = json_path or "$"
    node = body
    for part in _path_parts(json_path):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None, f"{where}: {part!r} not found in the answer"
    if isinstance(node, bool) or node is None or isinstance(node, (dict, list)):
        return None, f"{where} is {_shown(node)}, not a number"
    if isinstance(node, str):
        try:
            node = float(node.strip())
        except ValueError:
            return None, f"{where} is {_shown(node)}, not a number"
    value = float(node)
    if not math.isfinite(value):
        return None, f"{where} is {value}"
    return value, f"{where} = {value:g}"


def _path_parts(json_path: str | None) -> list[str]:
    if not json_path:
        return []
    path = _INDEX.sub(r".\1", json_path.strip()).removeprefix("$").strip(".")
    return [p for p in path.split(".") if p]


def _shown(node: Any) -> str:
    if isinstance(node, dict):
        return "an object"
    if isinstance(node, list):
        return "a list"
    return "null" if node is None else repr(node)[:60]
