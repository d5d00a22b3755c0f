"""Signal values from the Prometheus HTTP API (instant queries, ``POST /api/v1/query``).

A ``query`` source's value is the first sample of its result. A ratio source runs ``events`` and ``outputs``
and its value is ``events / outputs * per``, with ``outputs`` as the sample count checked against the signal's
``min_samples``. An empty result, NaN or an infinite value is "no data" (empty is not zero), classified by the
signal's ``no_data`` policy. A query Prometheus rejects as malformed (400 ``bad_data``) is a playbook error and
is never retried; 5xx answers, timeouts and connection errors are retried.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

import httpx
from temporalio.exceptions import ApplicationError

from activities.contracts import PollRequest, SignalObservation
from activities.errors import configuration_error, http_failure, transport_failure
from activities.routing import classify
from playbooks.models import Signal

SYSTEM = "prometheus"


@dataclass(frozen=True)
class QueryResult:
    """The first sample of an instant query, or None with the reason it could not be read."""

    value: float | None
    detail: str = ""


class PrometheusSignalSource:
    """A ``SignalSource`` for ``source.type == "prometheus"``."""

    def __init__(self, base_url: str, token: str | None = None, client: httpx.AsyncClient | None = None,
                 timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = client
        self._owns_client = client is None
        self._timeout = timeout

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout)
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP client if this source created it."""
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    async def observe(self, signal: Signal, request: PollRequest) -> SignalObservation:
        """Measure ``signal`` now."""
        source = signal.source
        if source.is_ratio:
            assert source.events is not None and source.outputs is not None
            events, outputs = await asyncio.gather(self.query(source.events), self.query(source.outputs))
            if outputs.value is None or not math.isfinite(outputs.value):
                return classify(signal, None, None, f"outputs: {outputs.detail or outputs.value}")
            if outputs.value < signal.min_samples:
                return classify(signal, None, outputs.value, "")
            if events.value is None:
                return classify(signal, None, outputs.value, f"events: {events.detail}")
            if outputs.value == 0:
                return classify(signal, None, outputs.value, "0 outputs in the window; the ratio is undefined")
            value = events.value / outputs.value * source.per
            detail = f"{events.value:g} events / {outputs.value:g} outputs x {source.per:g}"
            return classify(signal, value, outputs.value, detail)
        if not source.query:
            raise configuration_error(SYSTEM, f"signal {signal.name}", "the source has no 'query'")
        result = await self.query(source.query)
        return classify(signal, result.value, None, result.detail)

    async def query(self, promql: str) -> QueryResult:
        """Run an instant query; its first sample (None with a reason for empty/NaN/Inf/evaluation errors)."""
        url = f"{self.base_url}/api/v1/query"
        try:
            response = await self._http().post(url, data={"query": promql}, headers=self._headers)
        except httpx.TransportError as exc:
            raise transport_failure(SYSTEM, self.base_url, exc) from exc
        body = _json(response)
        if response.status_code == 422 and body.get("errorType") == "execution":
            # The query is valid but failed on the current data (e.g. many-to-many matching): no data now.
            return QueryResult(None, f"query failed: {body.get('error', '')}")
        if response.status_code == 400 and body.get("errorType") == "bad_data":
            raise ApplicationError(
                f"{SYSTEM}: query {promql!r} is invalid: {body.get('error', response.text[:300])}; fix it in the "
                "playbook (check it with promtool or the Prometheus UI)",
                type=f"{SYSTEM}.bad_query",
                non_retryable=True,
            )
        if response.status_code >= 300:
            raise http_failure(SYSTEM, f"query {promql!r}", response)
        if body.get("status") != "success":
            raise ApplicationError(
                f"{SYSTEM}: query {promql!r}: unexpected answer {response.text[:300]!r}",
                type=f"{SYSTEM}.bad_answer",
            )
        return _first_sample(body.get("data") or {}, promql, body.get("warnings") or [])


def _json(response: httpx.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _first_sample(data: dict, promql: str, warnings: list[str]) -> QueryResult:
    kind = data.get("resultType")
    result = data.get("result")
    notes = [f"warning: {w}" for w in warnings]
    if kind == "vector":
        samples = [s for s in result or [] if "value" in s]
        if not samples:
            histograms = any("histogram" in s for s in result or [])
            reason = "the query returned a native histogram, not a number" if histograms else "no series"
            return QueryResult(None, "; ".join([reason, *notes]))
        if len(samples) > 1:
            notes.append(f"{len(samples)} series; used the first, {samples[0].get('metric', {})}")
        raw = samples[0]["value"][1]
    elif kind == "scalar":
        raw = result[1]
    else:
        raise ApplicationError(
            f"{SYSTEM}: query {promql!r} returns a {kind}, not a number; an instant query must give one value "
            "(use e.g. rate(x[5m]) rather than x[5m])",
            type=f"{SYSTEM}.bad_query",
            non_retryable=True,
        )
    value = float(raw)
    if not math.isfinite(value):
        return QueryResult(None, "; ".join([f"value is {raw}", *notes]))
    return QueryResult(value, "; ".join(notes))
