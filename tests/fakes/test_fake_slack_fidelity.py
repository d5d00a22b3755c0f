"""``tests/support/fake_slack.py`` against Slack's Web API as documented.

Sources: docs.slack.dev method pages ``chat.postMessage`` and ``chat.update`` (arguments and errors), "Web API
basics" (HTTP 200 with ``ok`` false and an ``error`` code; 429 with ``Retry-After``), the Block Kit reference
("Blocks": section, context, actions; "Composition objects"; limits as encoded in ``slack_sdk.models.blocks``;
section ``fields`` at most 10 items of at most 2000 characters; at most 50 blocks per message; ``block_id``
unique within a message). The real ``slack_sdk`` ``WebClient`` is the client, as in the product.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from tests.support.fake_slack import FakeSlack

SECTION = {"type": "section", "text": {"type": "mrkdwn", "text": "hello"}}


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    server = FakeSlack()
    yield server
    server.stop()


@pytest.fixture
def client(fake: FakeSlack) -> WebClient:
    return WebClient(token=fake.token, base_url=fake.url)


def error_of(call: Any) -> dict[str, Any]:
    with pytest.raises(SlackApiError) as caught:
        call()
    assert caught.value.response.status_code == 200  # Slack reports method errors in an HTTP 200
    return dict(caught.value.response.data)


def test_post_then_update_by_channel_id(fake: FakeSlack, client: WebClient) -> None:
    """chat.postMessage answers the channel id and ts; chat.update takes that id and ts."""
    posted = client.chat_postMessage(channel="#ml-incidents", text="first", blocks=[SECTION])
    assert posted["channel"].startswith("C") and posted["ts"]
    client.chat_update(channel=posted["channel"], ts=posted["ts"], text="second", blocks=[SECTION])
    assert fake.messages[(posted["channel"], posted["ts"])]["text"] == "second"


def test_update_with_a_channel_name_is_channel_not_found(client: WebClient) -> None:
    """chat.update: ``channel`` is the id of the channel holding the message; a name is ``channel_not_found``."""
    posted = client.chat_postMessage(channel="#ml-incidents", text="first")
    assert error_of(lambda: client.chat_update(channel="#ml-incidents", ts=posted["ts"], text="x"))["error"] \
        == "channel_not_found"


def test_update_of_an_unknown_ts_is_message_not_found(client: WebClient) -> None:
    """chat.update, "Errors": ``message_not_found``."""
    posted = client.chat_postMessage(channel="#ml-incidents", text="first")
    assert error_of(lambda: client.chat_update(channel=posted["channel"], ts="1.2", text="x"))["error"] \
        == "message_not_found"


def test_bad_or_missing_token(fake: FakeSlack) -> None:
    """Every method, "Errors": ``invalid_auth`` for a refused token, ``not_authed`` for none."""
    assert error_of(lambda: WebClient(token="xoxb-wrong", base_url=fake.url).auth_test())["error"] == "invalid_auth"
    assert error_of(lambda: WebClient(base_url=fake.url).auth_test())["error"] == "not_authed"


def test_a_message_needs_text_or_blocks(client: WebClient) -> None:
    """chat.postMessage, "Errors": ``no_text``."""
    assert error_of(lambda: client.api_call("chat.postMessage", json={"channel": "#x"}))["error"] == "no_text"


@pytest.mark.parametrize(("blocks", "why"), [
    ([{"type": "hologram"}], "unsupported type"),
    ([{"type": "actions"}], "required"),
    ([{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}], "3000"),
    ([{"type": "section", "text": {"type": "mrkdwn", "text": "x"},
       "fields": [{"type": "mrkdwn", "text": "f"}] * 11}], "10"),
    ([{"type": "section", "text": {"type": "mrkdwn", "text": "x"},
       "fields": [{"type": "mrkdwn", "text": "f" * 2001}]}], "2001"),
    ([{"type": "context", "elements": [{"type": "mrkdwn", "text": ""}]}], "more than 0 characters"),
    ([{**SECTION, "colour": "red"}], "unsupported field"),
    ([{"type": "actions", "elements": [{"type": "button", "action_id": "a",
                                        "text": {"type": "plain_text", "text": "x" * 76}}]}], "75"),
    ([{**SECTION, "block_id": "a"}, {**SECTION, "block_id": "a"}], "duplicate block_id"),
    ([SECTION] * 51, "50"),
])
def test_invalid_blocks_are_refused_like_slack(client: WebClient, blocks: list[dict[str, Any]], why: str) -> None:
    """Block Kit limits: Slack answers ``invalid_blocks`` with ``errors`` naming a JSON pointer, and the message
    is not posted."""
    answer = error_of(lambda: client.chat_postMessage(channel="#x", text="t", blocks=blocks))
    assert answer["error"] == "invalid_blocks"
    assert any(why in e and "[json-pointer:/blocks" in e for e in answer["errors"]), answer["errors"]
    assert answer["response_metadata"]["messages"][0].startswith("[ERROR] ")


def test_valid_blocks_are_kept_as_sent(fake: FakeSlack, client: WebClient) -> None:
    blocks = [SECTION, {"type": "actions", "block_id": "b", "elements": [
        {"type": "button", "action_id": "approve", "value": "v", "style": "primary",
         "text": {"type": "plain_text", "text": "Approve", "emoji": True}}]}]
    posted = client.chat_postMessage(channel="#x", text="t", blocks=blocks)
    assert fake.messages[(posted["channel"], posted["ts"])]["blocks"] == blocks


def test_rate_limit_is_a_429_with_retry_after(fake: FakeSlack, client: WebClient) -> None:
    """"Rate limits": HTTP 429 with ``Retry-After`` seconds and error ``ratelimited``."""
    fake.fail_next("chat.postMessage", 429, "ratelimited", retry_after=3)
    with pytest.raises(SlackApiError) as caught:
        WebClient(token=fake.token, base_url=fake.url, retry_handlers=[]).chat_postMessage(channel="#x", text="t")
    assert caught.value.response.status_code == 429 and caught.value.response.headers["Retry-After"] == "3"


def test_usergroup_members_and_unknown_groups(client: WebClient, fake: FakeSlack) -> None:
    """usergroups.users.list: the member ids; ``no_such_subteam`` for an unknown group."""
    fake.groups["S0SAFETY"] = ["U1", "U2"]
    assert client.usergroups_users_list(usergroup="S0SAFETY")["users"] == ["U1", "U2"]
    assert error_of(lambda: client.usergroups_users_list(usergroup="S0NOPE"))["error"] == "no_such_subteam"
