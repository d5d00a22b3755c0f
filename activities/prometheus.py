"""Signal values from the Prometheus HTTP API (instant queries, ``POST /api/v1/query``).

A ``query`` source's value is the first sample of its result. A ratio source runs ``events`` and ``outputs``
and its value is ``events / outputs * per``, with ``outputs`` as the sample count checked against the signal's
``min_samples``. An empty result, NaN or an infinite value is "no data" (empty is not zero), classified by the
signal's ``no_data`` policy. A query Prometheus rejects as malformed (400 ``bad_data``) is a playbook error and
is never retried; 5xx answers, timeouts and connection errors are retried.

``$release`` in ``query`` / ``events`` / ``outputs`` is replaced by the suspect release of the poll, escaped for
the string literal it stands in (``{model_version="$release"}``); outside a string literal it is a playbook
error, so a release name can never change the shape of a query. ``query_range`` reads a range query (values
over a window, for backtests and tabletop replays).
"""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from temporalio.exceptions import ApplicationError

from activities.contracts import PollRequest, SignalObservation
from activities.errors import configuration_error, http_failure, transport_failure
from activities.http_providers import HttpAdapter
from activities.routing import classify
from playbooks.models import Signal

SYSTEM = "prometheus"
RELEASE = "$release"
_IDENT_CHAR = re.compile(r"[A-Za-z0-9_]")
_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


class ReleaseSubstitutionError(ValueError):
    """``$release`` cannot be put into the query safely."""


def substitute_release(promql: str, release: str) -> str:
    """``promql`` with every ``$release`` inside a string literal replaced by ``release``, escaped for it.

    Raises ``ReleaseSubstitutionError`` when ``$release`` stands outside a string literal, or inside a raw
    (backtick) string and the release contains a backtick.
    """
    if RELEASE not in promql:
        return promql
    out: list[str] = []
    quote: str | None = None
    i = 0
    while i < len(promql):
        ch = promql[i]
        at_token = promql.startswith(RELEASE, i) and not _IDENT_CHAR.match(promql, i + len(RELEASE))
        if quote is None:
            if ch == "#":  # a comment runs to the end of the line
                end = promql.find("\n", i)
                end = len(promql) if end < 0 else end
                out.append(promql[i:end])
                i = end
                continue
            if at_token:
                raise ReleaseSubstitutionError(
                    f"{RELEASE} must stand inside a string literal, e.g. {{model_version=\"{RELEASE}\"}}")
            if ch in "\"'`":
                quote = ch
        elif at_token:
            out.append(_escape(release, quote))
            i += len(RELEASE)
            continue
        elif ch == "\\" and quote != "`":
            out.append(promql[i:i + 2])
            i += 2
            continue
        elif ch == quote:
            quote = None
        out.append(ch)
        i += 1
    return "".join(out)


def _escape(release: str, quote: str) -> str:
    if quote == "`":
        if "`" in release:
            raise ReleaseSubstitutionError(f"release {release!r} contains a backtick; use \"{RELEASE}\" instead")
        return release
    return "".join(_ESCAPES.get(c, "\\" + c if c == quote else c) for c in release)


@dataclass(frozen=True)
class QueryResult:
    """The first sample of an instant query, or None with the reason it could not be read."""

    value: float | None
    detail: str = ""


@dataclass(frozen=True)
class RangeResult:
    """The first series of a range query: ``(time, value)`` points, ``None`` where the value is NaN/Inf."""

    points: list[tuple[datetime, float | None]] = field(default_factory=list)
    detail: str = ""


class PrometheusSignalSource(HttpAdapter):
    """A ``SignalSource`` for ``source.type == "prometheus"``."""

    def __init__(self, base_url: str, token: str | None = None, client: httpx.AsyncClient | None = None,
                 timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._use_client(client, timeout=timeout)

    async def observe(self, signal: Signal, request: PollRequest) -> SignalObservation:
        """Measure ``signal`` now, for the poll's release."""
        source = signal.source
        if source.is_ratio:
            assert source.events is not None and source.outputs is not None
            events_q = _for_release(signal, source.events, request.release)
            outputs_q = _for_release(signal, source.outputs, request.release)
            events, outputs = await asyncio.gather(self.query(events_q), self.query(outputs_q))
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
            control_events = control_outputs = None
            if source.control is not None:
                c_events, c_outputs = await asyncio.gather(
                    self.query(_for_release(signal, source.control.events, request.release)),
                    self.query(_for_release(signal, source.control.outputs, request.release)))
                control_events, control_outputs = c_events.value, c_outputs.value
                if control_events is None or control_outputs is None:
                    detail += f"; control not measured: {c_events.detail or c_outputs.detail}"
                else:
                    detail += f"; control {control_events:g} / {control_outputs:g}"
            return classify(signal, value, outputs.value, detail, events=events.value,
                            control_events=control_events, control_outputs=control_outputs)
        if not source.query:
            raise configuration_error(SYSTEM, f"signal {signal.name}", "the source has no 'query'")
        result = await self.query(_for_release(signal, source.query, request.release))
        return classify(signal, result.value, None, result.detail)

    async def query(self, promql: str) -> QueryResult:
        """Run an instant query; its first sample (None with a reason for empty/NaN/Inf/evaluation errors)."""
        body = await self._post("/api/v1/query", promql, {"query": promql})
        if body.get("status") == "error":  # evaluation failed on the current data
            return QueryResult(None, f"query failed: {body.get('error', '')}")
        return _first_sample(body.get("data") or {}, promql, body.get("warnings") or [])

    async def _post(self, path: str, promql: str, form: dict[str, str]) -> dict[str, Any]:
        """The ``success`` answer, or ``{"status": "error"}`` for a valid query that failed on the data."""
        url = f"{self.base_url}{path}"
        try:
            response = await self._client.post(url, data=form, headers=self._headers)
        except httpx.TransportError as exc:
            raise transport_failure(SYSTEM, self.base_url, exc) from exc
        body = _json(response)
        if response.status_code == 422 and body.get("errorType") == "execution":
            # The query is valid but failed on the current data (e.g. many-to-many matching): no data now.
            return {"status": "error", "error": body.get("error", "")}
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
        return body

    async def query_range(self, promql: str, start: datetime, end: datetime, step: timedelta) -> RangeResult:
        """Run a range query (``POST /api/v1/query_range``): the first series' points from ``start`` to ``end``.

        NaN/Inf points are ``None`` (not measured); no series gives no points with the reason in ``detail``.
        Errors are classified as for ``query``.
        """
        if step.total_seconds() <= 0 or end < start:
            raise configuration_error(SYSTEM, f"range query {promql!r}", "needs start <= end and a positive step")
        body = await self._post("/api/v1/query_range", promql, {
            "query": promql, "start": _unix(start), "end": _unix(end), "step": f"{step.total_seconds():g}",
        })
        if body.get("status") == "error":
            return RangeResult([], f"query failed: {body.get('error', '')}")
        data = body.get("data") or {}
        notes = [f"warning: {w}" for w in body.get("warnings") or []]
        series = [s for s in data.get("result") or [] if "values" in s]
        if data.get("resultType") != "matrix":
            raise ApplicationError(f"{SYSTEM}: range query {promql!r} returns a {data.get('resultType')}",
                                   type=f"{SYSTEM}.bad_query", non_retryable=True)
        if not series:
            return RangeResult([], "; ".join(["no series", *notes]))
        if len(series) > 1:
            notes.append(f"{len(series)} series; used the first, {series[0].get('metric', {})}")
        points = []
        for ts, raw in series[0]["values"]:
            value = float(raw)
            points.append((datetime.fromtimestamp(float(ts), UTC), value if math.isfinite(value) else None))
        return RangeResult(points, "; ".join(notes))


def _unix(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return f"{value.timestamp():.3f}"


def _for_release(signal: Signal, promql: str, release: str) -> str:
    try:
        return substitute_release(promql, release)
    except ReleaseSubstitutionError as exc:
        raise configuration_error(SYSTEM, f"signal {signal.name}", f"{exc}; fix the query in the playbook") from exc


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _first_sample(data: dict[str, Any], promql: str, warnings: list[str]) -> QueryResult:
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
    elif kind == "scalar" and isinstance(result, list) and len(result) == 2:
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
