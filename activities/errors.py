"""How failures of external systems become Temporal errors: retry what may heal, hand the rest to a human.

429, 5xx, timeouts and connection errors are retryable (a ``Retry-After`` is honoured through
``next_retry_delay``); 400, 401, 403, 404, 405 and 422 are not, and their message names the system, the
object and what to fix.
"""

from __future__ import annotations

from datetime import timedelta

import httpx
from temporalio.exceptions import ApplicationError

_FIXES = {
    400: "the request was rejected as malformed; check the object's configuration in the playbook",
    401: "the credentials were refused; check the API token in the settings",
    403: "the credentials lack permission for this object; grant the token write access",
    404: "the object does not exist; check its key/name (and project, environment, namespace) in the playbook",
    405: "the change needs an approval in that system (or the method is not allowed); apply it there",
    409: "the object changed concurrently; it will be retried",
    422: "the change was refused as invalid; check the variants and percentages the playbook names",
}
NON_RETRYABLE_STATUS = frozenset({400, 401, 403, 404, 405, 422})


class ExternalSystemError(Exception):
    """A failure of an external system, already classified."""


def retry_after(response: httpx.Response) -> timedelta | None:
    """The delay a ``Retry-After: <seconds>`` header asks for, or None (an HTTP date is not read).

    Only ``Retry-After``: LaunchDarkly's ``X-Ratelimit-Reset`` is read by the LaunchDarkly provider itself.
    """
    value = response.headers.get("Retry-After")
    if value:
        try:
            return timedelta(seconds=max(0.0, float(value)))
        except ValueError:
            return None
    return None


def http_failure(system: str, obj: str, response: httpx.Response) -> ApplicationError:
    """Classify a non-2xx answer from ``system`` about ``obj``."""
    status = response.status_code
    body = response.text[:300].strip()
    fix = _FIXES.get(status, "the system failed; it will be retried")
    message = f"{system}: {obj}: HTTP {status}: {fix}" + (f" (answer: {body})" if body else "")
    retryable = status not in NON_RETRYABLE_STATUS and (status == 429 or status >= 500 or status == 409)
    return ApplicationError(
        message,
        type=f"{system}.http_{status}",
        non_retryable=not retryable,
        next_retry_delay=retry_after(response) if retryable else None,
    )


def transport_failure(system: str, obj: str, exc: Exception) -> ApplicationError:
    """Timeouts and connection errors: always retryable."""
    return ApplicationError(
        f"{system}: {obj}: {type(exc).__name__}: {exc or 'no answer'}; will retry",
        type=f"{system}.unreachable",
        non_retryable=False,
    )


def configuration_error(system: str, obj: str, message: str) -> ApplicationError:
    """A problem only a person can fix (missing credentials, unknown provider): never retried."""
    return ApplicationError(f"{system}: {obj}: {message}", type=f"{system}.configuration", non_retryable=True)


class AuditConflict(ApplicationError):
    """An audit event whose sequence number is already stored with other content: never retried, never dropped.

    Two writers disagree about what happened; silently keeping either would make the audit trail false.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, type="unship.audit_conflict", non_retryable=True)
