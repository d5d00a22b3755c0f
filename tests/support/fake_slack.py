"""A local server that speaks the Slack Web API shapes unship uses, and records every call.

Slack is SaaS, so tests run the real ``slack_sdk`` clients against this instead (a ``FakeServer``, like the
other test servers). ``FakeSlack().url`` is the ``base_url`` (``http://127.0.0.1:PORT/api/``). Every answer is
HTTP 200 with ``ok`` true or false plus ``error``, as Slack's Web API does ("Web API basics": errors are
``{"ok": false, "error": "<code>"}``); a scripted ``fail_next`` can answer another status. Rules imitated, with
their source (docs.slack.dev method pages; block limits as encoded in ``slack_sdk.models.blocks``):

- auth: a missing or wrong token answers ``not_authed`` / ``invalid_auth`` (every method page, "Errors").
- ``chat.postMessage``: ``channel`` is an id (``C``/``G``/``D``...) or a name (``#ml-incidents``), answered with the
  channel id and the message ``ts``; without ``text``, ``blocks`` or ``attachments`` it answers ``no_text``
  (chat.postMessage, "Arguments"/"Errors").
- ``chat.update``: ``channel`` must be the channel **id** the message is in: a name answers
  ``channel_not_found``; an unknown ``ts`` answers ``message_not_found`` (chat.update, "Arguments": "Channel
  containing the message to be updated. For direct messages, ensure that this value is a DM ID"; "Errors").
- ``blocks`` (both methods): validated like Block Kit ("Block Kit" reference, "Blocks"/"Composition objects"):
  a JSON array of at most 50 blocks, each of a known type, within the documented limits (text lengths, field
  counts, element counts: ``slack_sdk``'s ``validate_json``), without unknown or empty fields, and with unique
  ``block_id`` values; otherwise ``invalid_blocks`` with ``errors`` and ``response_metadata.messages`` naming a
  JSON pointer (the shape Slack answers). ``invalid_blocks`` is not retryable: the message never appears.
- ``chat.postEphemeral``, ``usergroups.users.list`` (``no_such_subteam``), ``usergroups.list``, ``auth.test``;
  anything else answers ``unknown_method``.

Channel names become stable ids (``#ml-incidents`` -> ``C...``); messages are kept per (channel id, ts) so a test
can read what a channel shows now. ``fail_next(method, status=429, error="ratelimited", retry_after=1)`` injects
one failure of that method.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import urllib.parse
from dataclasses import dataclass
from typing import Any

from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.blocks import Block

from tests.support.fake_http import Answer, FakeServer, Request

MAX_BLOCKS = 50
MAX_FIELD_TEXT = 2000  # section "fields": "Maximum length for the text in each item is 2000 characters"


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    token: str | None


@dataclass
class _Failure:
    status: int
    error: str
    retry_after: float | None


def _missing(sent: Any, kept: Any, pointer: str) -> list[str]:
    """Where ``sent`` has a field or value that the parsed model ``kept`` lost (unknown or empty fields)."""
    if isinstance(sent, dict):
        if not isinstance(kept, dict):
            return [f"must be an object [json-pointer:{pointer}]"]
        problems = []
        for key, value in sent.items():
            if key not in kept:
                why = "must be more than 0 characters" if value in ("", [], {}) else "unsupported field"
                problems.append(f"{why} [json-pointer:{pointer}/{key}]")
            else:
                problems.extend(_missing(value, kept[key], f"{pointer}/{key}"))
        return problems
    if isinstance(sent, list):
        if not isinstance(kept, list) or len(kept) != len(sent):
            return [f"invalid array [json-pointer:{pointer}]"]
        return [p for i, (a, b) in enumerate(zip(sent, kept, strict=True)) for p in _missing(a, b, f"{pointer}/{i}")]
    return [] if sent == kept else [f"invalid value [json-pointer:{pointer}]"]


def block_kit_errors(blocks: Any) -> list[str]:
    """The reasons Slack would refuse ``blocks`` (empty when they are valid)."""
    if not isinstance(blocks, list):
        return ["must be an array [json-pointer:/blocks]"]
    if len(blocks) > MAX_BLOCKS:
        return [f"no more than {MAX_BLOCKS} items allowed [json-pointer:/blocks]"]
    errors: list[str] = []
    seen_ids: set[str] = set()
    for index, raw in enumerate(blocks):
        pointer = f"/blocks/{index}"
        if not isinstance(raw, dict):
            errors.append(f"must be an object [json-pointer:{pointer}]")
            continue
        try:
            block = Block.parse(raw)
        except (TypeError, ValueError, KeyError) as exc:  # a required field is missing or of the wrong kind
            errors.append(f"missing or invalid required field: {exc} [json-pointer:{pointer}]")
            continue
        if block is None or type(block) is Block:
            errors.append(f"unsupported type {raw.get('type')!r} [json-pointer:{pointer}/type]")
            continue
        try:
            kept = block.to_dict()  # runs validate_json: the documented limits
        except SlackObjectFormationError as exc:
            errors.append(f"{exc} [json-pointer:{pointer}]")
            continue
        errors.extend(_missing(raw, kept, pointer))
        for number, field in enumerate(raw.get("fields") or [] if raw.get("type") == "section" else []):
            if isinstance(field, dict) and len(str(field.get("text", ""))) > MAX_FIELD_TEXT:
                errors.append(f"must be less than {MAX_FIELD_TEXT + 1} characters "
                              f"[json-pointer:{pointer}/fields/{number}/text]")
        block_id = raw.get("block_id")
        if block_id is not None:
            if block_id in seen_ids:
                errors.append(f"duplicate block_id {block_id!r} [json-pointer:{pointer}/block_id]")
            seen_ids.add(block_id)
    return errors


def is_channel_id(channel: str) -> bool:
    return channel[:1] in ("C", "G", "D") and channel.isalnum() and channel.isupper()


class FakeSlack(FakeServer):
    """The fake Web API in a thread; ``groups`` maps user-group ids to member ids, ``handles`` handles to ids."""

    def __init__(self, groups: dict[str, list[str]] | None = None, handles: dict[str, str] | None = None,
                 token: str = "xoxb-test-token") -> None:
        super().__init__()
        self.groups = groups or {}
        self.handles = handles or {}
        self.token = token
        self.calls: list[Call] = []
        self.messages: dict[tuple[str, str], dict[str, Any]] = {}
        self._failures: dict[str, list[_Failure]] = {}
        self._ts = itertools.count(1)
        self.start()

    @property
    def url(self) -> str:
        return f"{super().url}/api/"

    @staticmethod
    def channel_id(channel: str) -> str:
        if is_channel_id(channel):
            return channel
        return "C" + hashlib.sha256(channel.encode()).hexdigest()[:8].upper()

    def fail_next(self, method: str, status: int = 429, error: str = "ratelimited",  # type: ignore[override]
                  retry_after: float | None = 1) -> None:
        with self.lock:
            self._failures.setdefault(method, []).append(_Failure(status, error, retry_after))

    def of(self, method: str) -> list[Call]:
        """The recorded calls of one method, in order."""
        with self.lock:
            return [c for c in self.calls if c.method == method]

    @staticmethod
    def _args(request: Request) -> dict[str, Any]:
        args: dict[str, Any] = {k: v[-1] for k, v in request.query.items()}
        if "json" in request.headers.get("content-type", ""):
            body = json.loads(request.body or b"{}")
            args.update(body if isinstance(body, dict) else {})
        elif request.body:
            args.update({k: v[-1] for k, v in urllib.parse.parse_qs(request.body.decode()).items()})
        return args

    def handle(self, request: Request) -> Answer:
        method = request.path.removeprefix("/api/")
        args = self._args(request)
        token = request.headers.get("authorization", "").removeprefix("Bearer ").strip() or args.get("token")
        status, body, headers = self.answer(method, args, token)
        return Answer(status, body, headers)

    def answer(self, method: str, args: dict[str, Any], token: str | None) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self.lock:
            self.calls.append(Call(method, args, token))
            failures = self._failures.get(method)
            if failures:
                fail = failures.pop(0)
                headers = {"Retry-After": f"{fail.retry_after:g}"} if fail.retry_after is not None else {}
                return fail.status, {"ok": False, "error": fail.error}, headers
            if not token:
                return 200, {"ok": False, "error": "not_authed"}, {}
            if token != self.token:
                return 200, {"ok": False, "error": "invalid_auth"}, {}
            if method == "auth.test":
                return 200, {"ok": True, "user_id": "UUNSHIPBOT", "team_id": "T0TEST"}, {}
            if method in ("chat.postMessage", "chat.update"):
                return self._message(method, args)
            if method == "chat.postEphemeral":
                return 200, {"ok": True, "message_ts": f"1700000001.{next(self._ts):06d}"}, {}
            if method == "usergroups.users.list":
                group = str(args.get("usergroup", ""))
                if group not in self.groups:
                    return 200, {"ok": False, "error": "no_such_subteam"}, {}
                return 200, {"ok": True, "users": list(self.groups[group])}, {}
            if method == "usergroups.list":
                return 200, {"ok": True, "usergroups": [{"id": gid, "handle": handle}
                                                        for handle, gid in self.handles.items()]}, {}
            return 200, {"ok": False, "error": "unknown_method"}, {}

    def _message(self, method: str, args: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        blocks = args.get("blocks")
        if isinstance(blocks, str):  # form-encoded requests carry blocks as a JSON string
            try:
                blocks = json.loads(blocks)
            except ValueError:
                blocks = "not json"
        if blocks is not None:
            errors = block_kit_errors(blocks)
            if errors:
                return 200, {"ok": False, "error": "invalid_blocks", "errors": errors,
                             "response_metadata": {"messages": [f"[ERROR] {e}" for e in errors]}}, {}
        if not (args.get("text") or blocks or args.get("attachments")):
            return 200, {"ok": False, "error": "no_text"}, {}
        channel = str(args.get("channel", ""))
        if method == "chat.postMessage":
            if not channel:
                return 200, {"ok": False, "error": "channel_not_found"}, {}
            channel = self.channel_id(channel)
            ts = f"1700000000.{next(self._ts):06d}"
            message = {"ts": ts, "text": args.get("text"), "blocks": blocks or []}
            self.messages[(channel, ts)] = message
            return 200, {"ok": True, "channel": channel, "ts": ts, "message": message}, {}
        ts = str(args.get("ts", ""))
        if not is_channel_id(channel):
            return 200, {"ok": False, "error": "channel_not_found"}, {}
        if (channel, ts) not in self.messages:
            return 200, {"ok": False, "error": "message_not_found"}, {}
        message = {"ts": ts, "text": args.get("text"), "blocks": blocks or []}
        self.messages[(channel, ts)] = message
        return 200, {"ok": True, "channel": channel, "ts": ts, "text": args.get("text")}, {}
