"""Chat in Slack: one Block Kit message per incident that is edited in place as the incident moves on.

``SlackNotifier`` implements ``ChatNotifier``. The first message in the playbook's channel is posted with
``chat.postMessage``; every later notification for that channel carries its ``thread_ref`` and edits the
same message with ``chat.update`` (who decided, stage progress, the outcome). Messages to another channel
(the escalation channel) are posted on their own, with the mentions of the next tier.

While a decision gate is open the message carries Approve (with a confirm dialog) and Reject buttons whose
``value`` names the incident, the gate and the verdict (``button_value``); ``workers.web.slack_actions`` turns a
click into the workflow's ``decide`` update.

Failures: HTTP 429 / 5xx and Slack's transient errors are retryable (honouring ``Retry-After``); errors only
a person can fix (unknown channel, bot not in channel, bad token, missing scope) are not, and say what to fix.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)
from slack_sdk.web.async_client import AsyncWebClient
from temporalio.exceptions import ApplicationError

from activities.contracts import MessageKind, MessageRef, Notification
from activities.errors import transport_failure
from playbooks.rendering import incident_link

log = logging.getLogger(__name__)

APPROVE_ACTION = "unship_approve"
REJECT_ACTION = "unship_reject"
_SECTION_LIMIT = 3000
_FIELD_LIMIT = 2000  # a section field's text (Block Kit reference, section block)
_BLOCK_ID_LIMIT = 255
_FIELDS_LIMIT = 10
_RETRYABLE_ERRORS = frozenset({"ratelimited", "rate_limited", "internal_error", "fatal_error",
                               "service_unavailable", "request_timeout", "team_added_to_org"})
_FIXES = {
    "channel_not_found": "the channel does not exist or the app cannot see it; check communications.channel "
                         "in the playbook (a channel id C... or #name) and invite the app",
    "not_in_channel": "the app is not a member of the channel; invite it with /invite @unship",
    "is_archived": "the channel is archived; point communications.channel at a live channel",
    "invalid_auth": "the bot token was refused; check UNSHIP_SLACK_BOT_TOKEN",
    "not_authed": "no bot token was sent; set UNSHIP_SLACK_BOT_TOKEN",
    "token_revoked": "the bot token was revoked; reinstall the app and update UNSHIP_SLACK_BOT_TOKEN",
    "account_inactive": "the bot token belongs to a deactivated app; reinstall the app",
    "missing_scope": "the app lacks an OAuth scope; reinstall it from deploy/slack-app-manifest.yaml",
    "invalid_blocks": "Slack rejected the message blocks (a template produced something Slack cannot show)",
    "msg_too_long": "the message is too long for Slack; shorten the playbook's message template",
}
# chat.update cannot edit these; post a fresh message instead of losing the news
_REPOST_ERRORS = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})
_GATE_PHASES = frozenset({"awaiting_decision", "escalated", "investigating"})
_ICONS = {"breach": ":red_circle:", "healthy": ":large_green_circle:", "no_data": ":white_circle:"}
_STAGE_ICONS = {"verified": ":white_check_mark:", "failed": ":x:", "applying": ":arrows_counterclockwise:",
                "baking": ":hourglass_flowing_sand:", "pending": ":white_small_square:",
                "planned": ":white_small_square:", "skipped": ":fast_forward:", "superseded": ":fast_forward:"}


def button_value(incident_id: str, gate_id: str, verdict: str) -> str:
    """The opaque button value: which incident, which gate, which verdict (compact JSON, well under 2000)."""
    return json.dumps({"i": incident_id, "g": gate_id, "v": verdict}, separators=(",", ":"))


def encode_ref(channel_id: str, ts: str) -> str:
    """``MessageRef.ref`` for a Slack message: chat.update needs the channel id as well as the ts."""
    return f"{channel_id}/{ts}"


def decode_ref(ref: str, channel: str) -> tuple[str, str]:
    """``(channel_id, ts)`` from ``encode_ref`` (a bare ts means the notification's channel)."""
    head, sep, tail = ref.partition("/")
    return (head, tail) if sep else (channel, ref)


def mention(who: str) -> str:
    """Slack markup for a user id (U.../W...), a user-group id (S...) or a plain name."""
    if who[:1] in ("U", "W") and who[1:].isalnum() and who.isupper():
        return f"<@{who}>"
    if who[:1] == "S" and who[1:].isalnum() and who.isupper():
        return f"<!subteam^{who}>"
    return who if who.startswith("@") else f"@{who}"


def _plain(text: str, limit: int) -> PlainTextObject:
    return PlainTextObject(text=_cut(text, limit) or " ", emoji=True)


def _mrkdwn(text: str, limit: int = _SECTION_LIMIT) -> MarkdownTextObject:
    return MarkdownTextObject(text=_cut(text, limit) or " ")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _block_id(prefix: str, key: str) -> str:
    """A block id under Slack's 255 characters (long keys are hashed), stable for one gate."""
    block_id = f"{prefix}{key}"
    if len(block_id) <= _BLOCK_ID_LIMIT:
        return block_id
    return f"{prefix}{hashlib.sha256(key.encode()).hexdigest()[:32]}"


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else "n/a"


def _sections(text: str) -> list[Block]:
    chunks: list[str] = []
    rest = text.strip() or " "
    while rest and len(chunks) < 5:
        chunks.append(rest[:_SECTION_LIMIT])
        rest = rest[_SECTION_LIMIT:]
    return [SectionBlock(text=_mrkdwn(chunk)) for chunk in chunks]


def build_blocks(notification: Notification, text: str,
                 plans: Mapping[str, Sequence[Any]] | None = None, console_url: str | None = None) -> list[dict[str, Any]]:
    """The Block Kit message for ``notification``: the rendered ``text``, then the facts as blocks.

    Release, playbook and version; each signal's latest value against its threshold; the stages (planned,
    or their progress); who may decide and the decisions so far; Approve / Reject while a gate is open.
    Built with ``slack_sdk``'s Block Kit models, whose ``to_dict`` checks Slack's limits; every text that comes
    from a playbook or a person is cut to fit, so Slack never refuses the message (``invalid_blocks``).
    """
    ctx = notification.context
    blocks: list[Block] = list(_sections(text))
    facts = [f"*Release* `{ctx.get('release', '?')}`",
             f"*Playbook* {ctx.get('playbook', '?')} (version `{ctx.get('playbook_version', '?')}`)",
             f"*Phase* {ctx.get('phase', '?')}" + (f" → *{ctx['outcome']}*" if ctx.get("outcome") else ""),
             f"`{notification.incident_id}`"]
    if console_url:
        facts.append(f"<{incident_link(console_url, notification.incident_id)}|Open in the console>")
    blocks.append(ContextBlock(elements=[_mrkdwn(" · ".join(facts))]))

    evidence = [e for e in ctx.get("evidence") or [] if isinstance(e, dict)]
    if evidence:
        fields = [_mrkdwn(f"{_ICONS.get(str(e.get('measurement')), ':grey_question:')} *{e.get('signal', '?')}*\n"
                          f"{_num(e.get('value'))} (threshold {e.get('threshold', '?')})", _FIELD_LIMIT)
                  for e in evidence[:_FIELDS_LIMIT]]
        blocks.append(SectionBlock(block_id="unship-signals", text=_mrkdwn("*Signals* (latest poll)"),
                                   fields=fields))

    stages = [s for s in ctx.get("stages") or [] if isinstance(s, dict)]
    if not stages and plans and ctx.get("playbook") in plans:
        stages = [{"percent": getattr(s, "percent", 0), "status": "planned",
                   "bake": getattr(s, "bake", None)} for s in plans[ctx["playbook"]]]
    if stages:
        parts = []
        for s in stages:
            bake = s.get("bake")
            bake_text = f" (bake {int(bake.total_seconds())}s)" if isinstance(bake, timedelta) else ""
            parts.append(f"{_STAGE_ICONS.get(str(s.get('status')), ':grey_question:')} {_num(s.get('percent'))}%"
                         f"{bake_text}")
        label = "Planned stages" if all(s.get("status") == "planned" for s in stages) else "Stages"
        blocks.append(ContextBlock(elements=[_mrkdwn(f"*{label}:* " + " → ".join(parts))]))

    gate = ctx.get("gate") if isinstance(ctx.get("gate"), dict) else None
    if gate:
        who = [mention(u) for u in gate.get("users") or []] + [mention(g) for g in gate.get("groups") or []]
        line = (f"*Who may decide:* {', '.join(gate.get('roles') or []) or '?'}"
                + (f" ({' '.join(who)})" if who else "")
                + f" — {len(gate.get('approvals') or [])}/{gate.get('quorum', 1)} approvals")
        if gate.get("deadline"):
            line += f", deadline {gate['deadline']}"
        blocks.append(SectionBlock(block_id=_block_id("unship-gate-", str(gate.get("gate_id", ""))),
                                   text=_mrkdwn(line)))

    decisions = [d for d in ctx.get("decisions") or [] if isinstance(d, dict)]
    if decisions:
        lines = [f"{':white_check_mark:' if d.get('verdict') == 'approve' else ':no_entry_sign:'} "
                 f"{mention(str(d.get('user', '?')))} {'approved' if d.get('verdict') == 'approve' else 'rejected'}"
                 f" via {d.get('via', '?')}" + (f": _{_cut(str(d['reason']), 250)}_" if d.get("reason") else "")
                 for d in decisions[-10:]]
        blocks.append(ContextBlock(elements=[_mrkdwn("\n".join(lines))]))

    mentions = [str(m) for m in ctx.get("mentions") or []]
    if mentions and notification.kind is MessageKind.ESCALATED:
        blocks.append(SectionBlock(text=_mrkdwn(" ".join(mention(m) for m in mentions) + " your decision is needed")))

    if gate and ctx.get("phase") in _GATE_PHASES:
        blocks.append(_buttons(notification.incident_id, str(gate.get("gate_id", "")), str(ctx.get("release", "?"))))
    return [block.to_dict() for block in blocks[:50]]


def _buttons(incident_id: str, gate_id: str, release: str) -> ActionsBlock:
    confirm = ConfirmObject(
        title=_plain("Move users back?", 100),
        text=_mrkdwn(f"Approve moving users off `{release}` back to the previous model, stage by stage?", 300),
        confirm=_plain("Approve", 30),
        deny=_plain("Cancel", 30),
        style="danger",
    )
    return ActionsBlock(block_id=_block_id("unship-actions-", gate_id), elements=[
        ButtonElement(action_id=APPROVE_ACTION, style="primary", text=_plain("Approve", 75),
                      value=button_value(incident_id, gate_id, "approve"), confirm=confirm),
        ButtonElement(action_id=REJECT_ACTION, style="danger", text=_plain("Reject", 75),
                      value=button_value(incident_id, gate_id, "reject")),
    ])


def slack_failure(method: str, channel: str, exc: SlackApiError) -> ApplicationError:
    """Classify a Slack Web API error as retryable or a configuration problem a person must fix."""
    response = exc.response
    status = getattr(response, "status_code", 200)
    error = str(response.get("error", "unknown_error")) if hasattr(response, "get") else "unknown_error"
    retryable = status == 429 or status >= 500 or error in _RETRYABLE_ERRORS
    delay = None
    headers = getattr(response, "headers", {}) or {}
    retry_after = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if retryable and retry_after:
        try:
            delay = timedelta(seconds=max(0.0, float(retry_after if isinstance(retry_after, str)
                                                      else retry_after[0])))
        except (TypeError, ValueError, IndexError):
            delay = None
    fix = "Slack failed; it will be retried" if retryable else _FIXES.get(error, "check the Slack app's setup")
    return ApplicationError(f"slack: {method} to {channel}: HTTP {status} {error}: {fix}", type=f"slack.{error}",
                            non_retryable=not retryable, next_retry_delay=delay)


class SlackNotifier:
    """A ``ChatNotifier`` posting Block Kit messages with ``AsyncWebClient`` (``base_url`` for tests/proxies).

    ``plans`` maps playbook names to their rollback stages, shown as the plan before any stage runs.
    """

    def __init__(self, client: AsyncWebClient, plans: Mapping[str, Sequence[Any]] | None = None,
                 console_url: str | None = None) -> None:
        self.client = client
        self.plans = plans or {}
        self.console_url = console_url

    @classmethod
    def from_token(cls, token: str, base_url: str = "https://slack.com/api/",
                   plans: Mapping[str, Sequence[Any]] | None = None, console_url: str | None = None) -> SlackNotifier:
        return cls(AsyncWebClient(token=token, base_url=base_url, timeout=15), plans, console_url)

    async def send(self, notification: Notification, text: str) -> MessageRef:
        """Post (or, with ``thread_ref``, update in place) the message; returns ``channel_id/ts`` as the ref."""
        blocks = build_blocks(notification, text, self.plans, self.console_url)
        fallback = text[:3000] or notification.kind.value
        if notification.thread_ref:
            channel_id, ts = decode_ref(notification.thread_ref, notification.channel)
            try:
                await self._call("chat.update", notification.channel,
                                 self.client.chat_update(channel=channel_id, ts=ts, text=fallback, blocks=blocks))
                return MessageRef(channel=channel_id, ref=encode_ref(channel_id, ts), text=text)
            except ApplicationError as err:
                if err.type is None or err.type.removeprefix("slack.") not in _REPOST_ERRORS:
                    raise
                log.warning("could not edit the message of %s (%s); posting a new one", notification.incident_id,
                            err.type)
        response = await self._call("chat.postMessage", notification.channel,
                                    self.client.chat_postMessage(channel=notification.channel, text=fallback,
                                                                 blocks=blocks, unfurl_links=False))
        channel_id = str(response.get("channel") or notification.channel)
        ts = str(response.get("ts") or "")
        return MessageRef(channel=channel_id, ref=encode_ref(channel_id, ts) if ts else None, text=text)

    @staticmethod
    async def _call(method: str, channel: str, call: Any) -> Any:
        try:
            return await call
        except SlackApiError as exc:
            raise slack_failure(method, channel, exc) from None
        except (TimeoutError, aiohttp.ClientError, SlackClientError) as exc:
            raise transport_failure("slack", f"{method} to {channel}", exc) from None
