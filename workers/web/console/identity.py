"""Who is signed in to the console, and the console's session and CSRF tokens.

The console acts with the API's rules: ``sign_in`` is the one place that turns what a person presents into a
``Person``; every page and action asks ``Session.person`` and ``Person.may``. Signing in means presenting a
credential the API accepts (a personal token from ``unship users add``, or an OIDC token): the API's
``Authenticator`` (``workers.web.auth``) says who it belongs to, with its scopes and groups. Nobody types a
name: a shared token signs in no person (it may read, never decide or operate). The workflow still decides
who may approve (the playbook's roles).

The session is a signed cookie (HMAC-SHA256 with ``UNSHIP_CONSOLE_SECRET``, or a random key per process): it
holds the person, a random session id and an expiry, never the token. Every form carries a CSRF token derived
from the session id, and unsafe requests from another origin are refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field

from fastapi import Request, Response

from workers.runtime.settings import Settings
from workers.web.auth import Authenticator, AuthError

SESSION_COOKIE = "unship_console"
FLASH_COOKIE = "unship_flash"
SCOPES = frozenset({"read", "trigger", "decide", "operate"})
"""What a person may do: read incidents, open them, decide at a gate, steer (revert-now, pause, resume, abort)."""

ACTION_SCOPES = {"approve": "decide", "reject": "decide", "revert-now": "operate", "pause": "operate",
                 "resume": "operate", "abort": "operate",
                 # the review's governance (docs/governance.md), as the API's governance routes
                 "legal-hold": "operate", "release-legal-hold": "operate", "approve-purge": "decide"}
"""The scope each console action needs (the same as the API route it stands for)."""


class SignInRefused(Exception):
    """What was presented does not sign anyone in; ``str()`` says why, without echoing a secret."""


@dataclass(frozen=True)
class Person:
    """A signed-in person. ``user`` is the id decisions are made as (the ids playbook roles list)."""

    user: str
    scopes: frozenset[str] = field(default=SCOPES)
    groups: tuple[str, ...] = ()

    def may(self, scope: str) -> bool:
        return scope in self.scopes


def reading_needs_sign_in(auth: Authenticator) -> bool:
    """The API wants a credential for every read when any is configured; so does the console."""
    return auth.configured()


async def sign_in(auth: Authenticator, token: str) -> Person:
    """The person ``token`` belongs to, with the API's rules, or ``SignInRefused`` saying why.

    Decide and operate scopes are kept only for a person (a shared token signs in to read).
    """
    token = token.strip()
    if not token or len(token) > 8192 or any(c.isspace() for c in token):
        raise SignInRefused("token: give your personal token (`unship users add YOUR_ID` prints it) or an OIDC "
                            "token")
    try:
        identity = await auth.identify(f"Bearer {token}")
    except AuthError as exc:
        raise SignInRefused(f"token: {exc.detail}") from None
    scopes = {s.value for s in identity.scopes} & SCOPES
    if not identity.personal:
        scopes -= {"decide", "operate"}
    return Person(user=identity.label, scopes=frozenset(scopes), groups=identity.groups)


class Sessions:
    """Signs and reads the console's cookies."""

    def __init__(self, settings: Settings) -> None:
        secret = settings.console_secret.get_secret_value() if settings.console_secret else secrets.token_hex(32)
        self._key = hashlib.sha256(b"unship-console:" + secret.encode()).digest()
        self._lifetime = int(settings.console_session_hours * 3600)
        self._secure = settings.console_url.startswith("https://")

    # --- signing ---------------------------------------------------------------------------------------------

    def _sign(self, payload: dict[str, object]) -> str:
        body = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")
        mac = hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()
        return f"{body}.{mac}"

    def _verify(self, value: str | None) -> dict[str, object] | None:
        if not value or value.count(".") != 1 or len(value) > 4096:
            return None
        body, mac = value.split(".")
        if not hmac.compare_digest(mac, hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()):
            return None
        try:
            payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except ValueError:
            return None
        if not isinstance(payload, dict) or not isinstance(payload.get("exp"), int) or payload["exp"] < time.time():
            return None
        return payload

    # --- the session -----------------------------------------------------------------------------------------

    def read(self, request: Request) -> Session:
        payload = self._verify(request.cookies.get(SESSION_COOKIE))
        if payload is None or not isinstance(payload.get("sid"), str):
            return Session(self, sid=secrets.token_urlsafe(18), person=None, fresh=True)
        person = None
        if isinstance(payload.get("user"), str):
            scopes = payload.get("scopes")
            groups = payload.get("groups")
            person = Person(user=str(payload["user"]),
                            scopes=frozenset(str(s) for s in scopes) if isinstance(scopes, list) else frozenset(),
                            groups=tuple(str(g) for g in groups) if isinstance(groups, list) else ())
        return Session(self, sid=str(payload["sid"]), person=person, fresh=False)

    def write(self, response: Response, sid: str, person: Person | None) -> None:
        payload: dict[str, object] = {"sid": sid, "exp": int(time.time()) + self._lifetime}
        if person is not None:
            payload.update(user=person.user, scopes=sorted(person.scopes), groups=list(person.groups))
        response.set_cookie(SESSION_COOKIE, self._sign(payload), max_age=self._lifetime, httponly=True,
                            samesite="lax", secure=self._secure, path="/")

    def csrf_token(self, sid: str) -> str:
        return hmac.new(self._key, f"csrf:{sid}".encode(), hashlib.sha256).hexdigest()[:40]

    # --- one-shot messages after a redirect ------------------------------------------------------------------

    def set_flash(self, response: Response, kind: str, text: str) -> None:
        payload = {"sid": "flash", "kind": kind, "text": text[:1000], "exp": int(time.time()) + 120}
        response.set_cookie(FLASH_COOKIE, self._sign(payload), max_age=120, httponly=True, samesite="lax",
                            secure=self._secure, path="/")

    def pop_flash(self, request: Request, response: Response) -> tuple[str, str] | None:
        payload = self._verify(request.cookies.get(FLASH_COOKIE))
        if FLASH_COOKIE in request.cookies:
            response.delete_cookie(FLASH_COOKIE, path="/")
        if payload is None:
            return None
        return str(payload.get("kind", "info")), str(payload.get("text", ""))


@dataclass
class Session:
    sessions: Sessions
    sid: str
    person: Person | None
    fresh: bool

    @property
    def csrf(self) -> str:
        return self.sessions.csrf_token(self.sid)

    def csrf_ok(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(str(presented), self.csrf)

    def keep(self, response: Response) -> None:
        """Set the cookie on ``response`` when this session is new (so its CSRF token holds next time)."""
        if self.fresh:
            self.sessions.write(response, self.sid, self.person)


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site (``Origin`` or ``Sec-Fetch-Site``)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1] == host
