"""Who is calling, and what they may do: the one place the HTTP API (and anything built on it) learns identity.

Credentials, strongest first:

- **OIDC bearer JWTs** (production): verified with PyJWT against the issuer's JWKS (``UNSHIP_OIDC_ISSUER``,
  ``UNSHIP_OIDC_AUDIENCE``; keys fetched from ``UNSHIP_OIDC_JWKS_URL`` or the issuer's discovery document,
  cached and refetched when a token names a key id not seen yet, i.e. after a rotation). Signature, ``exp``,
  ``iss`` and ``aud`` are checked; the user id is the ``UNSHIP_OIDC_USER_CLAIM`` claim (default ``sub``), the
  scopes the ``UNSHIP_OIDC_SCOPES_CLAIM`` claim, the groups the ``UNSHIP_OIDC_GROUPS_CLAIM`` claim.
- **Personal API tokens** (embedded default): the users file (``UNSHIP_USERS_FILE``, default
  ``<state_dir>/users.yaml``) maps each person's id (the Slack member id playbooks name, so roles resolve the
  same way) to the SHA-256 of a random token, scopes and groups. ``unship users add ID`` prints a token once.
- **The shared token** (``UNSHIP_API_TOKEN``): identifies no person. It gets ``UNSHIP_API_TOKEN_SCOPES``
  (default ``read,trigger``) and never ``decide``, ``operate`` or ``admin``.
- **Alert credentials** (``UNSHIP_ALERT_BEARER_TOKEN``): the ``alerts`` scope and nothing else.
- **Nothing configured** (loopback only, see ``guards.check_bind_allowed``): anonymous callers may read,
  trigger and send alerts; deciding and operating always need a person.

Routes depend on ``require(scope)``, which answers 401 (no or bad credentials) or 403 (known caller, missing
scope, or a shared credential where a person is needed) with a message saying what to do, and otherwise
returns the verified ``Identity``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import secrets
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import jwt
from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from workers.runtime.settings import Settings
from workers.web.problems import ProblemError


class Scope(StrEnum):
    READ = "read"  # incidents, playbooks, audit
    TRIGGER = "trigger"  # open incidents
    DECIDE = "decide"  # approve / reject at a gate (a person)
    OPERATE = "operate"  # revert-now, abort, pause, resume, re-release (a person)
    ALERTS = "alerts"  # alert webhooks only
    ADMIN = "admin"  # reload playbooks (a person)


PERSONAL_SCOPES = frozenset({Scope.DECIDE, Scope.OPERATE, Scope.ADMIN})
"""Scopes only a verified person may hold: a shared or alert credential never gets them."""

OPERATOR_SCOPES = frozenset({Scope.TRIGGER, Scope.DECIDE, Scope.OPERATE, Scope.ADMIN})
"""What an alert sender must never hold alongside ``alerts``."""

CredentialKind = Literal["oidc", "personal-token", "shared-token", "alert-token", "anonymous"]


@dataclass(frozen=True)
class Identity:
    """A verified caller. ``user`` is a person's id (Slack member id / OIDC claim) or None for shared credentials."""

    user: str | None
    credential: CredentialKind
    scopes: frozenset[Scope]
    groups: tuple[str, ...] = ()
    name: str = ""

    @property
    def personal(self) -> bool:
        return self.user is not None

    @property
    def label(self) -> str:
        """What the audit trail calls this caller: the person's id, or the kind of shared credential."""
        return self.user or self.credential

    def public(self) -> dict[str, Any]:
        return {"user": self.user, "name": self.name or None, "credential": self.credential,
                "scopes": sorted(s.value for s in self.scopes), "groups": list(self.groups),
                "personal": self.personal}


class AuthError(ProblemError):
    """The request is refused: ``status`` 401 (who are you?) or 403 (you may not); answered as problem+json."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(status, detail, headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)


def parse_scopes(values: Iterable[str] | str, *, where: str) -> frozenset[Scope]:
    """Scope names (a list, or a space/comma-separated string) as scopes; ValueError naming an unknown one.

    ``unship:decide`` is read as ``decide`` (issuers often prefix their API's scopes).
    """
    items = values.replace(",", " ").split() if isinstance(values, str) else list(values)
    scopes = set()
    for item in items:
        name = str(item).removeprefix("unship:").strip()
        if not name:
            continue
        try:
            scopes.add(Scope(name))
        except ValueError:
            raise ValueError(f"{where}: unknown scope {name!r}; known: {', '.join(s.value for s in Scope)}") from None
    return frozenset(scopes)


# --- personal tokens: the users file -------------------------------------------------------------------------


class UserEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 (hex) of the person's API token")
    scopes: list[str] = Field(default_factory=lambda: ["read", "trigger", "decide", "operate"])
    groups: list[str] = Field(default_factory=list, description="groups the person belongs to (role membership)")
    name: str = ""
    created_at: str = ""


class UsersFileError(ValueError):
    """The users file cannot be read; the message names the file and the entry."""


def token_hash(token: str) -> str:
    """How a personal token is stored. Tokens are 256-bit random strings, so one SHA-256 is enough."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "unship_" + secrets.token_urlsafe(32)


def load_users(path: Path) -> dict[str, UserEntry]:
    """The users file at ``path`` ({} when it does not exist)."""
    if not path.is_file():
        return {}
    try:
        data = YAML(typ="safe").load(path.read_text(encoding="utf-8")) or {}
    except (OSError, YAMLError) as exc:
        raise UsersFileError(f"{path}: cannot read the users file: {exc}") from exc
    users = data.get("users") if isinstance(data, dict) else None
    if not isinstance(users, dict):
        raise UsersFileError(f"{path}: expected a mapping 'users: {{ID: {{token_sha256, scopes, groups}}}}'")
    entries = {}
    for user, raw in users.items():
        try:
            entry = UserEntry.model_validate(raw)
            scopes = parse_scopes(entry.scopes, where=f"users.{user}.scopes")
        except (ValidationError, ValueError) as exc:
            raise UsersFileError(f"{path}: users.{user}: {exc}") from exc
        if Scope.ALERTS in scopes and scopes & OPERATOR_SCOPES:
            raise UsersFileError(f"{path}: users.{user}.scopes: an alert sender (alerts) may not also hold "
                                 f"{', '.join(sorted(s.value for s in scopes & OPERATOR_SCOPES))}")
        entries[str(user)] = entry
    return entries


def save_users(path: Path, users: dict[str, UserEntry]) -> None:
    """Write the users file atomically, readable by its owner only (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        YAML(typ="safe", pure=True).dump(
            {"users": {user: entry.model_dump(exclude_defaults=False) for user, entry in sorted(users.items())}},
            handle)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def add_user(path: Path, user: str, scopes: Iterable[str], groups: Iterable[str] = (), name: str = "",
             replace: bool = False) -> str:
    """Create (or with ``replace`` re-issue) ``user``'s personal token; returns the token (shown once)."""
    parsed = parse_scopes(list(scopes), where="--scope")
    if Scope.ALERTS in parsed and parsed & OPERATOR_SCOPES:
        raise UsersFileError("an alert sender (alerts) may not also hold trigger, decide, operate or admin")
    users = load_users(path)
    if user in users and not replace:
        raise UsersFileError(f"{path}: {user} already has a token; pass --replace to issue a new one")
    token = new_token()
    users[user] = UserEntry(token_sha256=token_hash(token), scopes=sorted(s.value for s in parsed),
                            groups=list(groups), name=name,
                            created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    save_users(path, users)
    return token


def remove_user(path: Path, user: str) -> bool:
    users = load_users(path)
    if users.pop(user, None) is None:
        return False
    save_users(path, users)
    return True


class _UsersFile:
    """The users file, re-read when it changes on disk (``unship users add`` takes effect without a restart)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[float, int] | None = None
        self._by_hash: dict[str, tuple[str, UserEntry]] = {}

    def entries(self) -> dict[str, tuple[str, UserEntry]]:
        try:
            stat = self.path.stat()
            stamp: tuple[float, int] | None = (stat.st_mtime, stat.st_size)
        except OSError:
            stamp = None
        if stamp != self._stamp:
            users = load_users(self.path) if stamp else {}
            self._by_hash = {entry.token_sha256: (user, entry) for user, entry in users.items()}
            self._stamp = stamp
        return self._by_hash

    def configured(self) -> bool:
        return bool(self.entries())


# --- OIDC ----------------------------------------------------------------------------------------------------


class OidcVerifier:
    """Verify OIDC bearer JWTs: signature against the issuer's JWKS (cached, refetched on an unknown key id),
    ``exp``/``nbf``/``iat``, ``iss`` and ``aud``."""

    def __init__(self, settings: Settings) -> None:
        assert settings.oidc_issuer
        if not settings.oidc_audience:
            raise ValueError("UNSHIP_OIDC_ISSUER is set but UNSHIP_OIDC_AUDIENCE is not: tokens must be checked "
                             "for the audience unship is")
        self.issuer = settings.oidc_issuer
        self.audience = settings.oidc_audience
        self.user_claim = settings.oidc_user_claim
        self.scopes_claim = settings.oidc_scopes_claim
        self.groups_claim = settings.oidc_groups_claim
        self.algorithms = [a.strip() for a in settings.oidc_algorithms.split(",") if a.strip()]
        self._jwks_url = settings.oidc_jwks_url
        self._client: jwt.PyJWKClient | None = None
        self._lock = asyncio.Lock()

    def _discover(self) -> str:
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        with urllib.request.urlopen(url, timeout=10) as response:
            document = json.load(response)
        jwks_uri = document.get("jwks_uri") if isinstance(document, dict) else None
        if not isinstance(jwks_uri, str):
            raise AuthError(401, f"the OIDC issuer's discovery document ({url}) names no jwks_uri")
        return jwks_uri

    async def _jwks(self) -> jwt.PyJWKClient:
        async with self._lock:
            if self._client is None:
                url = self._jwks_url
                if not url:
                    url = await asyncio.to_thread(self._discover)
                self._client = jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=10)
            return self._client

    async def verify(self, token: str) -> Identity:
        try:
            client = await self._jwks()
            key = await asyncio.to_thread(client.get_signing_key_from_jwt, token)
            claims = jwt.decode(token, key.key, algorithms=self.algorithms, audience=self.audience,
                                issuer=self.issuer, leeway=30,
                                options={"require": ["exp", "iss", "aud", self.user_claim]})
        except jwt.ExpiredSignatureError:
            raise AuthError(401, "the bearer token has expired; sign in again") from None
        except jwt.InvalidAudienceError:
            raise AuthError(401, f"the bearer token is not for this service (audience must be {self.audience})") \
                from None
        except jwt.InvalidIssuerError:
            raise AuthError(401, f"the bearer token was not issued by {self.issuer}") from None
        except jwt.PyJWKClientConnectionError as exc:
            raise AuthError(401, f"cannot fetch the OIDC signing keys: {exc}") from None
        except (jwt.PyJWTError, OSError, ValueError) as exc:
            raise AuthError(401, f"the bearer token is not valid: {exc}") from None
        user = claims.get(self.user_claim)
        if not isinstance(user, str) or not user:
            raise AuthError(401, f"the bearer token has no {self.user_claim!r} claim naming the user")
        scopes = _claimed_scopes(claims.get(self.scopes_claim))
        raw_groups = claims.get(self.groups_claim) or []
        groups = tuple(str(g) for g in raw_groups) if isinstance(raw_groups, list) else ()
        if Scope.ALERTS in scopes:
            scopes = scopes - OPERATOR_SCOPES
        return Identity(user=user, credential="oidc", scopes=scopes, groups=groups,
                        name=str(claims.get("name") or claims.get("email") or ""))


def _claimed_scopes(raw: object) -> frozenset[Scope]:
    """Unship scopes among a token's scopes (issuers add their own, e.g. ``openid profile``: ignored)."""
    items = raw.replace(",", " ").split() if isinstance(raw, str) else raw if isinstance(raw, list) else []
    values = {str(i).removeprefix("unship:") for i in items}
    return frozenset(s for s in Scope if s.value in values)


# --- the authenticator ---------------------------------------------------------------------------------------


@dataclass
class Authenticator:
    """Turns an ``Authorization`` header into an ``Identity`` (or an ``AuthError``)."""

    settings: Settings
    users: _UsersFile = field(init=False)
    oidc: OidcVerifier | None = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        self.users = _UsersFile(s.resolved_users_file)
        self.oidc = OidcVerifier(s) if s.oidc_issuer else None
        self._shared = s.api_token.get_secret_value().encode() if s.api_token else None
        self._shared_scopes = parse_scopes(s.api_token_scopes, where="UNSHIP_API_TOKEN_SCOPES")
        wrong = self._shared_scopes & PERSONAL_SCOPES
        if wrong:
            raise ValueError(f"UNSHIP_API_TOKEN_SCOPES: a shared token identifies no person and cannot hold "
                             f"{', '.join(sorted(w.value for w in wrong))}; give people their own tokens "
                             "(`unship users add ID`) or OIDC")
        self._alert = s.alert_bearer_token.get_secret_value().encode() if s.alert_bearer_token else None

    def configured(self) -> bool:
        """True when any API credential exists; without one the API is open to loopback callers (read/trigger)."""
        return bool(self._shared or self.oidc or self.users.configured())

    async def identify(self, authorization: str | None) -> Identity:
        scheme, _, presented = (authorization or "").partition(" ")
        presented = presented.strip()
        if not authorization:
            if not self.configured():
                return Identity(user=None, credential="anonymous",
                                scopes=frozenset({Scope.READ, Scope.TRIGGER, Scope.ALERTS}))
            raise AuthError(401, "no credentials: send 'Authorization: Bearer <token>' (your personal token from "
                                 "`unship users add`, an OIDC token, or the shared API token)")
        if scheme.lower() != "bearer" or not presented:
            raise AuthError(401, "the Authorization header must be 'Bearer <token>'")
        found = self._personal(presented)
        if found is not None:
            return found
        if self._shared is not None and hmac.compare_digest(presented.encode(), self._shared):
            return Identity(user=None, credential="shared-token", scopes=self._shared_scopes)
        if self._alert is not None and hmac.compare_digest(presented.encode(), self._alert):
            return Identity(user=None, credential="alert-token", scopes=frozenset({Scope.ALERTS}))
        if self.oidc is not None and presented.count(".") == 2:
            return await self.oidc.verify(presented)
        raise AuthError(401, "unknown or revoked bearer token")

    def _personal(self, presented: str) -> Identity | None:
        digest = token_hash(presented)
        entries = self.users.entries()
        match = None
        for stored, (user, entry) in entries.items():  # constant time per entry; the file holds few people
            if hmac.compare_digest(stored, digest):
                match = (user, entry)
        if match is None:
            return None
        user, entry = match
        scopes = parse_scopes(entry.scopes, where=f"users.{user}.scopes")
        return Identity(user=user, credential="personal-token", scopes=scopes, groups=tuple(entry.groups),
                        name=entry.name)

    @staticmethod
    def check(identity: Identity, scope: Scope) -> None:
        """Raise 403 unless ``identity`` holds ``scope`` (and is a person, for the personal scopes)."""
        if scope in PERSONAL_SCOPES and not identity.personal:
            what = {"shared-token": "the shared API token", "alert-token": "an alert sender's credential",
                    "anonymous": "an anonymous caller"}.get(identity.credential, identity.credential)
            raise AuthError(403, f"{scope.value} needs a person: {what} identifies nobody. Use your own token "
                                 "(`unship users add ID`, then `unship login`) or an OIDC token")
        if scope not in identity.scopes:
            held = ", ".join(sorted(s.value for s in identity.scopes)) or "none"
            raise AuthError(403, f"{identity.label} lacks the {scope.value!r} scope (holds: {held})")


@dataclass
class RefusalThrottle:
    """Which refusals of unidentified callers (unknown, expired or forged credentials naming an incident) go on
    that incident's audit trail: at most one per incident and source per ``window`` seconds, the next one
    carrying how many were refused meanwhile, so an attacker cannot flood the trail (every refusal is still
    logged and counted in ``unship_auth_failures``). One source naming many incidents gets at most
    ``per_source`` records a window (so made-up incident ids cannot turn into a stream of Temporal calls).
    Bounded memory: the oldest of ``limit`` keys is dropped."""

    window: float = 60.0
    per_source: int = 20
    limit: int = 4096
    clock: Callable[[], float] = time.monotonic
    _seen: dict[tuple[str, str], tuple[float, int]] = field(default_factory=dict, init=False)
    _sources: dict[str, tuple[float, int]] = field(default_factory=dict, init=False)

    def admit(self, incident: str, source: str) -> int | None:
        """The number of refusals from ``source`` on ``incident`` not yet on its trail (this one included), when
        this one should be recorded; None when it is only counted."""
        now = self.clock()
        key = (incident, source)
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.window:
            self._seen[key] = (last[0], last[1] + 1)
            return None
        started, recorded = self._sources.get(source, (now, 0))
        if now - started >= self.window:
            started, recorded = now, 0
        if recorded >= self.per_source:
            self._sources[source] = (started, recorded)
            return None
        self._sources.pop(source, None)
        self._seen.pop(key, None)
        while len(self._seen) >= self.limit:
            self._seen.pop(next(iter(self._seen)))
        while len(self._sources) >= self.limit:
            self._sources.pop(next(iter(self._sources)))
        self._sources[source] = (started, recorded + 1)
        self._seen[key] = (now, 0)
        return 1 + (last[1] if last is not None else 0)


def scrub(text: str, authorization: str | None) -> str:
    """``text`` without the presented credential (nor any long piece of it), for logs and audit trails."""
    presented = (authorization or "").partition(" ")[2].strip() or (authorization or "").strip()
    for piece in {presented, *presented.split(".")}:
        if len(piece) >= 8:
            text = text.replace(piece, "[credential]")
    return text


def authenticator(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.authenticator
    return auth


def require(scope: Scope) -> Callable[[Request], Awaitable[Identity]]:
    """A FastAPI dependency: the verified caller, who holds ``scope`` (401/403 otherwise).

    Use as ``identity: Identity = Depends(require(Scope.DECIDE))``; the app must have been built by
    ``workers.web.app.create_app`` (which puts the ``Authenticator`` in ``app.state.authenticator``).
    """

    async def dependency(request: Request) -> Identity:
        auth = authenticator(request)
        identity = await auth.identify(request.headers.get("authorization"))
        auth.check(identity, scope)
        return identity

    dependency.__name__ = f"require_{scope.value}"
    return dependency


__all__ = ["AuthError", "Authenticator", "Identity", "RefusalThrottle", "Scope", "add_user", "load_users", "remove_user",
           "require", "scrub", "token_hash"]
