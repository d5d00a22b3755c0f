"""Attacks on the review's governance (legal hold, purge approval, report submission) through the HTTP API with
personal tokens, on the real dev server: someone with API scopes but none of the playbook's roles for the action,
a person of the right role whose token lacks the scope, the shared token, a body naming someone else. Each is
refused, nothing changes (the hold stays, nothing is approved or deleted), and every refusal of a known caller
is on the incident's audit trail under the name the credential proves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.store import SqliteIncidentStore
from tests.support.governance import governed_review, until
from tests.support.playbooks import snapshot
from tests.support.stack import api_client, make_settings, person, serve
from tests.workflows.test_governance import BAD, GOOD, rows
from workers.runtime.service import IncidentService
from workers.runtime.settings import Settings
from workers.web.app import create_app

pytestmark = pytest.mark.e2e  # real dev server, worker and HTTP API

SHARED = "shared-token-of-the-governance-attacks"


@pytest.fixture
def settings(tmp_path: Path, local_env: WorkflowEnvironment) -> Settings:
    return make_settings(tmp_path, local_env, api_token=SHARED)


@pytest.fixture
async def review_id(local_env: WorkflowEnvironment, settings: Settings, tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    monkeypatch.setenv("GOV_OUTPUTS_DSN", "")  # the review sets it; monkeypatch removes it after the test
    async with governed_review(local_env, settings, tmp_path) as workflow_id:
        yield workflow_id


async def test_purge_approval_and_legal_hold_release_without_the_role_are_refused_and_recorded(
        review_id: str, local_env: WorkflowEnvironment, settings: Settings, tmp_path: Path) -> None:
    store = SqliteIncidentStore(settings.state_dir / "unship.db")
    service = IncidentService(local_env.client, settings, {"chat-test": snapshot()}, store=store)
    legal = person(settings, "U_LEGAL")
    intern = person(settings, "U_INTERN")  # every API scope a person can have, no playbook role
    privacy_read_only = person(settings, "U_PRIVACY", "read")  # the right role, not the scope to approve
    base = f"/v1/incidents/{review_id}"
    async with serve(create_app(service, settings)) as url, api_client(url, legal) as as_legal, \
            api_client(url, intern) as as_intern, api_client(url, privacy_read_only) as as_privacy, \
            api_client(url, SHARED) as as_shared:
        assert (await as_legal.post(f"{base}/legal-hold", json={"reason": "regulator inquiry"})).status_code == 200
        await until(as_legal, f"{base}/governance", lambda b: (b.get("purge") or {}).get("state") == "legal_hold")

        attempts = {
            "intern approves the purge": await as_intern.post(f"{base}/purge/approve", json={"reason": "cleanup"}),
            "intern releases the legal hold": await as_intern.post(f"{base}/legal-hold/release",
                                                                   json={"reason": "not needed"}),
            "intern submits the report": await as_intern.post(f"{base}/reports/gdpr_breach/submit", json={}),
            "privacy approves with a read-only token": await as_privacy.post(f"{base}/purge/approve", json={}),
            "the shared token releases the hold": await as_shared.post(f"{base}/legal-hold/release",
                                                                       json={"reason": "ops"}),
        }
        for what, answer in attempts.items():
            assert answer.status_code == 403, (what, answer.text)
        assert "U_INTERN holds none of the roles that may approve the purge" in \
            attempts["intern approves the purge"].json()["detail"]
        assert "may release a legal hold" in attempts["intern releases the legal hold"].json()["detail"]
        assert "lacks the 'decide' scope" in attempts["privacy approves with a read-only token"].json()["detail"]
        assert "needs a person" in attempts["the shared token releases the hold"].json()["detail"]
        # impersonation: the body cannot name the actor at all
        named = await as_intern.post(f"{base}/purge/approve", json={"user": "U_PRIVACY"})
        assert named.status_code == 422

        after = (await as_legal.get(f"{base}/governance")).json()
        assert after["legal_hold"]["by"] == "U_LEGAL" and after["purge"]["approvals"] == []
        assert after["purge"]["state"] == "legal_hold" and after["reports"][0]["submitted_by"] is None
    assert rows(tmp_path / "answers.db", BAD) == 250 and rows(tmp_path / "answers.db", GOOD) == 40

    for _ in range(100):  # the refusals reach the store with the review's next audit write
        refusals = [e for e in await store.events("unship:chat-test:chat-v2") if e.kind == "governance_refused"]
        if len(refusals) >= 5:
            break
        await asyncio.sleep(0.1)
    assert sorted(e.actor for e in refusals) == ["U_INTERN", "U_INTERN", "U_INTERN", "U_PRIVACY", "shared-token"]
    assert all(e.data.get("via") == "api" for e in refusals)
