"""Slack button clicks become decisions: signature check, replay guard, the ``decide`` update, ephemeral replies.

Framework-free: ``SlackActions.handle_http(body, headers)`` answers the interactivity request (HTTP mode) and
``socket_mode_listener`` routes Socket Mode envelopes to the same code. Both acknowledge at once and decide in
the background, because Slack wants an answer within 3 seconds and a Temporal update can take longer.

A click is ``DecisionRequest(user=<Slack user id>, groups=<their user groups>, via="slack", gate_id=...)``
sent with a stable update id (incident, gate, user, verdict), so a double click, or a replayed request, is
one decision. A refused click (no role, gate closed, already decided) is recorded on the audit trail by
``IncidentService.decide`` and answered with an ephemeral message saying why.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.signature import Clock, SignatureVerifier
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.web.async_client import AsyncWebClient

from activities.slack import APPROVE_ACTION, REJECT_ACTION
from workers.runtime.service import (
    DecisionRefused,
    IncidentClosed,
    IncidentNotFound,
    IncidentService,
    ServiceError,
)
from workflows.messages import DecisionRequest, Verdict

log = logging.getLogger(__name__)

SIGNATURE_WINDOW = 300
GROUP_CACHE_SECONDS = 300
_GROUP_ID = re.compile(r"^S[A-Z0-9]{2,}$")
ServiceGetter = Callable[[], Awaitable[IncidentService]]


@dataclass(frozen=True)
class SlackReply:
    """The HTTP answer to Slack: status and an optional JSON body."""

    status: int
    body: dict[str, Any] | None = None


@dataclass(frozen=True)
class Click:
    """One Approve/Reject click, parsed."""

    incident_id: str
    gate_id: str | None
    verdict: Verdict
    user: str
    channel: str | None
    action_ts: str

    @property
    def update_id(self) -> str:
        """Stable per (incident, gate, user, verdict): repeats of the same click are one update."""
        key = f"{self.incident_id}|{self.gate_id}|{self.user}|{self.verdict.value}"
        return "slack-" + hashlib.sha256(key.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class ClickOutcome:
    click: Click
    accepted: bool
    message: str


def _mapping(value: object) -> dict[str, Any]:
    """``value`` when it is a JSON object, else an empty one (Slack payload fields are untrusted input)."""
    return value if isinstance(value, dict) else {}


def parse_clicks(payload: Any) -> list[Click]:
    """The unship button clicks in a ``block_actions`` payload (others, and other payload types, give none)."""
    if not isinstance(payload, dict) or payload.get("type") != "block_actions":
        return []
    user = _mapping(payload.get("user"))
    user_id = str(user.get("id") or "")
    container = _mapping(payload.get("container"))
    channel = _mapping(payload.get("channel"))
    channel_id = container.get("channel_id") or channel.get("id")
    actions = payload.get("actions")
    clicks: list[Click] = []
    for action in actions if isinstance(actions, list) else []:
        if not isinstance(action, dict) or action.get("action_id") not in (APPROVE_ACTION, REJECT_ACTION):
            continue
        try:
            value = json.loads(str(action.get("value") or ""))
            incident, gate, verdict = str(value["i"]), value.get("g"), Verdict(value["v"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a Slack click with a malformed button value")
            continue
        if not user_id or not incident:
            continue
        clicks.append(Click(incident_id=incident, gate_id=str(gate) if gate else None, verdict=verdict,
                            user=user_id, channel=str(channel_id) if channel_id else None,
                            action_ts=str(action.get("action_ts") or "")))
    return clicks


class GroupResolver:
    """Which of a set of Slack user groups a user belongs to (``usergroups.users.list``, cached).

    Groups may be written as ids (``S0123``) or handles (``ml-oncall``); handles are looked up once with
    ``usergroups.list``. A lookup that fails counts as "not a member" and is retried on the next click.
    """

    def __init__(self, client: AsyncWebClient | None, ttl: float = GROUP_CACHE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.ttl = ttl
        self.clock = clock
        self._members: dict[str, tuple[float, frozenset[str]]] = {}
        self._handles: tuple[float, dict[str, str]] | None = None
        self.calls = 0

    async def groups_of(self, user: str, groups: Iterable[str]) -> list[str]:
        """The entries of ``groups`` (as written) that ``user`` is a member of."""
        found = []
        for group in groups:
            if user in await self.members(group):
                found.append(group)
        return found

    async def members(self, group: str) -> frozenset[str]:
        now = self.clock()
        cached = self._members.get(group)
        if cached and now - cached[0] < self.ttl:
            return cached[1]
        if self.client is None:
            return frozenset()
        group_id = group if _GROUP_ID.match(group) else await self._handle_id(group)
        if group_id is None:
            return frozenset()
        try:
            self.calls += 1
            response = await self.client.usergroups_users_list(usergroup=group_id)
        except (TimeoutError, SlackApiError, SlackClientError, OSError) as exc:
            log.warning("could not list the members of Slack group %s: %s", group, exc)
            return frozenset()
        members = frozenset(str(u) for u in response.get("users") or [])
        self._members[group] = (now, members)
        return members

    async def _handle_id(self, handle: str) -> str | None:
        now = self.clock()
        if self._handles is None or now - self._handles[0] >= self.ttl:
            assert self.client is not None
            try:
                self.calls += 1
                response = await self.client.usergroups_list()
            except (TimeoutError, SlackApiError, SlackClientError, OSError) as exc:
                log.warning("could not list Slack user groups: %s", exc)
                return None
            self._handles = (now, {str(g.get("handle")): str(g.get("id"))
                                   for g in response.get("usergroups") or [] if isinstance(g, dict)})
        return self._handles[1].get(handle.lstrip("@"))


class SlackActions:
    """Turns Slack interactivity (HTTP or Socket Mode) into ``decide`` updates, and answers the clicker."""

    def __init__(
        self,
        get_service: ServiceGetter,
        *,
        signing_secret: str | None,
        client: AsyncWebClient | None = None,
        groups: GroupResolver | None = None,
        clock: Clock | None = None,
        window: float = SIGNATURE_WINDOW,
    ) -> None:
        self.get_service = get_service
        self.verifier = SignatureVerifier(signing_secret, clock or Clock()) if signing_secret else None
        self.clock = clock or Clock()
        self.client = client
        self.groups = groups or GroupResolver(client)
        self.window = window
        self._seen: dict[str, float] = {}
        self._tasks: set[asyncio.Task[list[ClickOutcome]]] = set()
        self.outcomes: list[ClickOutcome] = []

    # --- HTTP mode ------------------------------------------------------------------------------------------

    async def handle_http(self, body: bytes, headers: Mapping[str, str]) -> SlackReply:
        """Verify, parse and acknowledge an interactivity request; the decision runs in the background."""
        if self.verifier is None:
            return SlackReply(503, {"detail": "Slack interactivity is not configured: set UNSHIP_SLACK_SIGNING_SECRET"})
        lowered = {k.lower(): v for k, v in headers.items()}
        timestamp = lowered.get("x-slack-request-timestamp")
        signature = lowered.get("x-slack-signature")
        if not timestamp or not signature:
            return SlackReply(401, {"detail": "missing X-Slack-Request-Timestamp / X-Slack-Signature"})
        try:
            sent = int(timestamp)
        except ValueError:
            return SlackReply(401, {"detail": "X-Slack-Request-Timestamp is not unix seconds"})
        now = self.clock.now()
        if abs(now - sent) > self.window:
            return SlackReply(401, {"detail": "stale request: the timestamp is more than 5 minutes old"})
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return SlackReply(400, {"detail": "body: not UTF-8 (Slack sends a URL-encoded form)"})
        if not self.verifier.is_valid(body=text, timestamp=timestamp, signature=signature):
            return SlackReply(401, {"detail": "the Slack signature does not match"})
        self._forget_old(now)
        if signature in self._seen:
            return SlackReply(401, {"detail": "replayed request"})
        self._seen[signature] = now
        try:
            form = urllib.parse.parse_qs(text, strict_parsing=False)
            payload = json.loads(form["payload"][0])
        except (KeyError, IndexError, ValueError, RecursionError):
            return SlackReply(400, {"detail": "payload: the form field 'payload' must hold a JSON document"})
        if not isinstance(payload, dict):
            return SlackReply(400, {"detail": "payload: must be a JSON object"})
        self.accept(payload)
        return SlackReply(200)

    def _forget_old(self, now: float) -> None:
        # signatures older than the window can no longer pass the timestamp check, so they need no memory
        oldest = next(iter(self._seen.values()), now)
        if now - oldest > self.window:
            self._seen = {s: t for s, t in self._seen.items() if now - t <= self.window}

    # --- shared -----------------------------------------------------------------------------------------------

    def accept(self, payload: dict[str, Any]) -> None:
        """Start handling the clicks in ``payload`` without waiting for them."""
        clicks = parse_clicks(payload)
        if not clicks:
            return
        task = asyncio.create_task(self.process(clicks))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for every click being handled (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def process(self, clicks: list[Click]) -> list[ClickOutcome]:
        outcomes = []
        for click in clicks:
            outcome = await self._decide(click)
            self.outcomes.append(outcome)
            outcomes.append(outcome)
            await self._tell(click, outcome)
        return outcomes

    async def _decide(self, click: Click) -> ClickOutcome:
        try:
            service = await self.get_service()
        except Exception as exc:  # noqa: BLE001 - reported to the clicker, who can retry
            return ClickOutcome(click, False, f"unship cannot reach Temporal right now ({exc}); try again")
        groups: list[str] = []
        try:
            status = await service.get(click.incident_id)
            if status.gate is not None:
                groups = await self.groups.groups_of(click.user, status.gate.groups)
        except ServiceError:
            pass  # decide() below reports the real problem (closed, unknown) and records refusals
        request = DecisionRequest(user=click.user, verdict=click.verdict, via="slack", gate_id=click.gate_id,
                                  groups=groups, reason="clicked in Slack")
        try:
            result = await service.decide(click.incident_id, request, update_id=click.update_id)
        except DecisionRefused as exc:
            return ClickOutcome(click, False, exc.reason)
        except IncidentClosed:
            log.info("slack click by %s on closed incident %s", click.user, click.incident_id)
            return ClickOutcome(click, False, "this incident is closed; it takes no more decisions")
        except IncidentNotFound:
            return ClickOutcome(click, False, f"there is no incident {click.incident_id}")
        except ServiceError as exc:
            return ClickOutcome(click, False, f"your click could not be recorded: {exc}")
        return ClickOutcome(click, True, f"{click.verdict.value} recorded: {result.message} "
                                         f"({result.approvals}/{result.quorum} approvals)")

    async def _tell(self, click: Click, outcome: ClickOutcome) -> None:
        if self.client is None or not click.channel:
            return
        icon = ":white_check_mark:" if outcome.accepted else ":no_entry:"
        prefix = "" if outcome.accepted else "Your click was refused: "
        try:
            await self.client.chat_postEphemeral(channel=click.channel, user=click.user,
                                                 text=f"{icon} {prefix}{outcome.message}")
        except (TimeoutError, SlackApiError, SlackClientError, OSError) as exc:
            log.warning("could not answer %s in Slack: %s", click.user, exc)


def socket_mode_listener(actions: SlackActions) -> Callable[[Any, Any], Awaitable[None]]:
    """A ``SocketModeClient`` request listener: acknowledge every envelope, route interactivity to ``actions``."""
    from slack_sdk.socket_mode.response import SocketModeResponse

    async def listener(client: Any, request: Any) -> None:
        await client.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))
        if request.type == "interactive" and isinstance(request.payload, dict):
            actions.accept(request.payload)

    return listener


async def run_socket_mode(actions: SlackActions, app_token: str, web_client: AsyncWebClient,
                          stop: asyncio.Event) -> None:
    """Receive Slack interactivity over Socket Mode (no public URL) until ``stop`` is set."""
    client = SocketModeClient(app_token=app_token, web_client=web_client)
    client.socket_mode_request_listeners.append(socket_mode_listener(actions))
    await client.connect()  # type: ignore[no-untyped-call]
    log.info("Slack Socket Mode connected")
    try:
        await stop.wait()
    finally:
        await client.disconnect()  # type: ignore[no-untyped-call]
        await client.close()  # type: ignore[no-untyped-call]
