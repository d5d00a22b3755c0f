"""Review tasks in GitHub Issues and Jira Cloud, against local servers speaking their documented REST shapes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from temporalio.exceptions import ApplicationError

from activities.contracts import TrackedTask, TrackerTask
from activities.trackers import GitHubTracker, JiraTracker, TrackerRouter
from playbooks.models import Tracker, TrackerKind
from tests.support.fake_http import DROP_AFTER_APPLY
from tests.support.fake_trackers import RATE_LIMITED, FakeGitHub, FakeJira

DUE = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
TASK = TrackerTask(key="abc123def456", title="Add the failing conversations to the eval set", owner="on_call",
                   assignee="ana", due=DUE, labels=["post-incident"])
GITHUB = Tracker(kind=TrackerKind.GITHUB, repository="acme/ml-incidents")
JIRA = Tracker(kind=TrackerKind.JIRA, project="MLOPS")


async def test_github_issue_with_owner_due_date_labels_and_link_then_closed() -> None:
    with FakeGitHub() as fake:
        tracker = GitHubTracker("ghp_test", fake.url, incident_url="https://unship.acme.test")
        created = await tracker.create(GITHUB, "unship:chat:v2", TASK)
        issue = fake.issues[int(created.ref)]
        assert issue["title"] == TASK.title and issue["assignees"] == [{"login": "ana"}]
        assert {"post-incident", "unship-task-abc123def456"} == {lab["name"] for lab in issue["labels"]}
        assert "Due: 2026-12-04" in issue["body"] and "https://unship.acme.test/incidents/unship:chat:v2" in issue["body"]
        assert created.state == "open" and created.url.endswith(f"/issues/{created.ref}")
        fake.close(int(created.ref))
        assert (await tracker.state(GITHUB, created)).state == "done"


async def test_github_lost_answer_and_rate_limit_never_file_twice() -> None:
    with FakeGitHub() as fake:
        tracker = GitHubTracker("ghp_test", fake.url)
        fake.fail_next(None, DROP_AFTER_APPLY)  # the search answers, the create lands but its answer is lost
        with pytest.raises(ApplicationError) as lost:
            await tracker.create(GITHUB, "unship:chat:v2", TASK)
        assert not lost.value.non_retryable
        fake.fail_next(RATE_LIMITED)
        with pytest.raises(ApplicationError) as limited:
            await tracker.create(GITHUB, "unship:chat:v2", TASK)
        assert not limited.value.non_retryable and limited.value.next_retry_delay is not None
        again = await tracker.create(GITHUB, "unship:chat:v2", TASK)  # the retry finds the ticket by its label
        assert len(fake.issues) == 1 and again.ref == "1"


async def test_github_bad_token_or_repository_goes_to_a_person() -> None:
    with FakeGitHub() as fake:
        with pytest.raises(ApplicationError) as bad:
            await GitHubTracker("wrong", fake.url).create(GITHUB, "i", TASK)
        assert bad.value.non_retryable and "401" in bad.value.message
        with pytest.raises(ApplicationError) as missing:
            await GitHubTracker("ghp_test", fake.url).create(
                Tracker(kind=TrackerKind.GITHUB, repository="acme/nope"), "i", TASK)
        assert missing.value.non_retryable and "404" in missing.value.message


async def test_jira_issue_in_adf_with_due_date_then_done() -> None:
    with FakeJira() as fake:
        tracker = JiraTracker(fake.url, "jira-token", user="bot@acme.test", incident_url="https://unship.acme.test")
        fake.fail_next(429)
        with pytest.raises(ApplicationError) as limited:
            await tracker.create(JIRA, "unship:chat:v2", TASK)
        assert not limited.value.non_retryable
        created = await tracker.create(JIRA, "unship:chat:v2", TASK)
        fields = fake.issues[created.ref]["fields"]
        assert created.ref == "MLOPS-1" and fields["duedate"] == "2026-12-04"
        assert fields["assignee"] == {"accountId": "ana"} and fields["issuetype"] == {"name": "Task"}
        assert "unship-task-abc123def456" in fields["labels"] and fields["description"]["type"] == "doc"
        assert (await tracker.create(JIRA, "unship:chat:v2", TASK)).ref == "MLOPS-1"  # found, not filed again
        assert (await tracker.state(JIRA, created)).state == "open"
        fake.done("MLOPS-1")
        assert (await tracker.state(JIRA, created)).state == "done"
        with pytest.raises(ApplicationError) as gone:
            await tracker.state(JIRA, TrackedTask(key="x", ref="MLOPS-99"))
        assert gone.value.non_retryable and "404" in gone.value.message


async def test_jira_refusals_say_what_is_wrong() -> None:
    with FakeJira() as fake:
        with pytest.raises(ApplicationError) as bad:
            await JiraTracker(fake.url, "jira-token", user="bot@acme.test").create(
                Tracker(kind=TrackerKind.JIRA, project="OTHER"), "i", TASK)
        assert bad.value.non_retryable and "valid project is required" in bad.value.message
        with pytest.raises(ApplicationError) as unauth:
            await JiraTracker(fake.url, "nope", user="bot@acme.test").create(JIRA, "i", TASK)
        assert unauth.value.non_retryable and "401" in unauth.value.message


def test_an_unconfigured_tracker_is_a_configuration_error() -> None:
    with pytest.raises(ApplicationError) as missing:
        TrackerRouter().get(GITHUB)
    assert missing.value.non_retryable and "UNSHIP_GITHUB_TOKEN" in missing.value.message
