"""The HTTP conventions every route shares: RFC 9457 problem details for every error, the OpenAPI document that
declares them (and the bearer scheme), and opaque cursors for lists.

Every error answer, whoever raises it (a route, validation, the service, the body limit, the gateway, an
unknown path, a bug), is ``application/problem+json``::

    {"type": "about:blank", "title": "Conflict", "status": 409, "detail": "no decision is open ...",
     "instance": "/v1/incidents/unship:chat:v2/decision"}

with extension members where they help a client act: ``errors`` (422: one ``{field, message}`` per problem),
``field`` (the one field that is wrong), ``known`` (an unknown playbook: the known ones). ``install_problems``
puts the handlers on an app and makes its OpenAPI document say exactly that.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from workers.runtime.service import (
    HolderRunning,
    IncidentClosed,
    IncidentNotFound,
    InvalidInput,
    NoOpenGate,
    NotRecorded,
    Refused,
    ServiceError,
    TemporalUnavailable,
    UnknownPlaybook,
)

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
BEARER_SCHEME = "bearerAuth"


class FieldProblem(BaseModel):
    """One invalid field of a request."""

    field: str = Field(description="dotted path of the field, e.g. `stages.0` or `release`")
    message: str


class Problem(BaseModel):
    """An error, as RFC 9457 problem details (``application/problem+json``)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": True})

    type: str = Field(default="about:blank", description="URI naming the kind of problem")
    title: str = Field(description="short summary of the kind of problem (the HTTP reason phrase)")
    status: int = Field(ge=400, le=599, description="the HTTP status code")
    detail: str = Field(description="what went wrong with this request, in words a person can act on")
    instance: str | None = Field(default=None, description="the request path the problem occurred at")
    errors: list[FieldProblem] | None = Field(default=None, description="422: every invalid field")
    field: str | None = Field(default=None, description="the field that is wrong, when there is one")
    known: list[str] | None = Field(default=None, description="an unknown playbook: the playbooks that exist")


class ProblemError(Exception):
    """Raise in a route to answer with a problem: ``raise ProblemError(409, "...")``."""

    def __init__(self, status: int, detail: str, *, headers: Mapping[str, str] | None = None,
                 **extensions: Any) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers, self.extensions = status, detail, dict(headers or {}), extensions


def problem_body(status: int, detail: str, instance: str | None = None, **extensions: Any) -> dict[str, Any]:
    """The problem document for ``status`` (``title`` is the HTTP reason phrase); ``None`` extensions are left out."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    body.update({k: v for k, v in extensions.items() if v is not None})
    return body


def problem(status: int, detail: str, *, instance: str | None = None, headers: Mapping[str, str] | None = None,
            **extensions: Any) -> JSONResponse:
    """An ``application/problem+json`` response."""
    return JSONResponse(problem_body(status, detail, instance, **extensions), status_code=status,
                        headers=dict(headers or {}), media_type=PROBLEM_MEDIA_TYPE)


# --- mapping errors --------------------------------------------------------------------------------------------


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header") and len(parts) > 1:
        parts = parts[1:]
    return ".".join(parts) or "body"


def validation_problem(exc: RequestValidationError, instance: str | None = None) -> JSONResponse:
    errors = [{"field": _field(e.get("loc", ())), "message": str(e.get("msg", "invalid"))} for e in exc.errors()]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "invalid request"
    return problem(422, detail, instance=instance, errors=errors,
                   field=errors[0]["field"] if len(errors) == 1 else None)


def service_problem(exc: ServiceError, instance: str | None = None) -> JSONResponse:
    """The status a service error means to an HTTP client: 422 bad input, 404 unknown incident, 409 a state that
    does not allow it (closed incident, no open gate), 403 refused, 503 Temporal unavailable."""
    if isinstance(exc, UnknownPlaybook):
        return problem(422, str(exc), instance=instance, field="playbook", known=exc.known)
    if isinstance(exc, InvalidInput):
        return problem(422, str(exc), instance=instance, field=exc.field)
    if isinstance(exc, (IncidentNotFound, NotRecorded)):
        return problem(404, str(exc), instance=instance)
    if isinstance(exc, (IncidentClosed, NoOpenGate, HolderRunning)):
        return problem(409, str(exc), instance=instance)
    if isinstance(exc, Refused):
        return problem(403, exc.reason, instance=instance)
    if isinstance(exc, TemporalUnavailable):
        return problem(503, str(exc), instance=instance, headers={"Retry-After": "5"})
    return problem(503, str(exc), instance=instance, headers={"Retry-After": "5"})


def install_problems(app: FastAPI) -> None:
    """Answer every error of ``app`` as a problem and make its OpenAPI document declare them."""

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem(exc.status, exc.detail, instance=request.url.path, headers=exc.headers, **exc.extensions)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_problem(exc, request.url.path)

    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError) -> JSONResponse:
        return service_problem(exc, request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).description
        if exc.status_code == 404 and exc.detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}; the API is described at /openapi.json"
        return problem(exc.status_code, detail, instance=request.url.path, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc,
                  exc_info=exc)
        return problem(500, f"unexpected {type(exc).__name__}; the server log has the details",
                       instance=request.url.path)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = conventions_openapi(get_openapi(
                title=app.title, version=app.version, summary=app.summary, description=app.description,
                routes=app.routes, tags=app.openapi_tags))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# --- the OpenAPI document --------------------------------------------------------------------------------------

_DESCRIPTIONS = {
    400: "the body is not what the sender's format allows",
    401: "missing or wrong credentials",
    403: "refused: the caller may not do this (e.g. holds none of the roles that may decide)",
    404: "no such incident (or nothing recorded for it yet)",
    409: "the incident's state does not allow it (closed, or no decision is open)",
    413: "the request body is over 1 MiB",
    422: "a field is invalid; `errors` names each one",
    503: "Temporal (or the incident store) did not answer; retry",
}
API_PROBLEMS = (401, 403, 404, 409, 413, 422, 503)
"""What any operator route may answer besides success."""


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route (or router) that may answer ``codes`` as problems."""
    ref = {"$ref": f"#/components/schemas/{Problem.__name__}"}
    return {code: {"description": _DESCRIPTIONS.get(code, HTTPStatus(code).phrase),
                   "content": {PROBLEM_MEDIA_TYPE: {"schema": ref}}} for code in codes}


def conventions_openapi(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with the problem schema, the bearer scheme, and FastAPI's own 422 shape replaced by problems."""
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name, sub in Problem.model_json_schema(ref_template="#/components/schemas/{model}").pop("$defs", {}).items():
        schemas[name] = sub
    schemas[Problem.__name__] = {k: v for k, v in Problem.model_json_schema(
        ref_template="#/components/schemas/{model}").items() if k != "$defs"}
    components.setdefault("securitySchemes", {})[BEARER_SCHEME] = {
        "type": "http", "scheme": "bearer",
        "description": "`Authorization: Bearer <UNSHIP_API_TOKEN>`; without a configured token the API is open "
                       "and listens on loopback only"}
    problem_content = problem_responses(422)[422]["content"]
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.get("responses", {})
            for code, response in responses.items():
                if code.isdigit() and int(code) >= 400:
                    response["content"] = problem_content
            if path.startswith("/v1/") and not path.startswith("/v1/slack/"):
                operation.setdefault("security", [{BEARER_SCHEME: []}])
    for unused in ("HTTPValidationError", "ValidationError"):
        if not _mentions(schema.get("paths", {}), f"#/components/schemas/{unused}"):
            schemas.pop(unused, None)
    return schema


def _mentions(tree: Any, ref: str) -> bool:
    if isinstance(tree, dict):
        return any(_mentions(v, ref) for v in tree.values()) or tree.get("$ref") == ref
    if isinstance(tree, list):
        return any(_mentions(v, ref) for v in tree)
    return False


# --- cursors ---------------------------------------------------------------------------------------------------


_CHECK = 8  # bytes of SHA-256 that make a typo'd or made-up cursor a 422, not a confused Temporal


def encode_cursor(token: bytes | None) -> str | None:
    """An opaque, URL-safe cursor for a page token (None: no further page)."""
    if not token:
        return None
    return base64.urlsafe_b64encode(hashlib.sha256(token).digest()[:_CHECK] + token).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> bytes | None:
    """The page token in ``cursor``; ``InvalidInput('cursor', ...)`` when it is not one this API handed out."""
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    check, token = raw[:_CHECK], raw[_CHECK:]
    if not token or hashlib.sha256(token).digest()[:_CHECK] != check:
        raise InvalidInput("cursor", "not a cursor this API handed out; pass `next_cursor` of the previous "
                                     "page unchanged")
    return token
