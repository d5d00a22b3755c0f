"""Review tasks as tickets in real trackers: GitHub Issues (REST) and Jira Cloud (REST v3); ``store`` keeps them
in the review only (the default).

Creation is idempotent by the task's ``key``: each ticket carries the label ``unship-task-<key>``, and before
creating one the tracker is searched for that label, so a retried activity whose answer was lost never files
a second ticket. States are read back by polling (``state``): GitHub ``closed`` and Jira status category
``done`` count as done.

GitHub: ``POST /repos/{owner}/{repo}/issues`` ``{title, body, labels, assignees}`` -> 201 ``{number, html_url,
state}``; ``GET /repos/{owner}/{repo}/issues?labels=...&state=all``; ``GET .../issues/{number}``. Headers
``Authorization: Bearer <token>``, ``Accept: application/vnd.github+json``, ``X-GitHub-Api-Version:
2022-11-28``. Rate limits: 403/429 with ``x-ratelimit-remaining: 0`` (wait until ``x-ratelimit-reset``, epoch
seconds) or with ``retry-after``; both are retried after that delay, any other 403 goes to a person.

Jira: ``POST /rest/api/3/issue`` ``{fields: {project: {key}, summary, issuetype: {name}, description (ADF),
labels, duedate: YYYY-MM-DD, assignee: {accountId}}}`` -> 201 ``{id, key, self}``; ``GET
/rest/api/3/search/jql?jql=...&fields=status`` -> ``{issues: [...]}``; ``GET /rest/api/3/issue/{key}?
fields=status`` -> ``fields.status.statusCategory.key``. Basic auth (email + API token) or a bearer token;
429 with ``Retry-After`` is retried.
"""

from __future__ import annotations

import base64
import time
from datetime import timedelta

import httpx
from temporalio.exceptions import ApplicationError

from activities.contracts import TaskTracker, TrackedTask, TrackerTask
from activities.errors import configuration_error, http_failure
from activities.http_providers import HttpAdapter, json_body, segment, send
from playbooks.models import Tracker, TrackerKind
from playbooks.rendering import incident_link


def task_label(key: str) -> str:
    return f"unship-task-{key}"


def _github_failure(system: str, obj: str, response: httpx.Response) -> ApplicationError:
    """GitHub answers a rate limit with 403 or 429: retry after the reset instead of asking a person."""
    remaining = response.headers.get("x-ratelimit-remaining")
    limited = response.status_code in (403, 429) and (
        remaining == "0" or "retry-after" in response.headers or "rate limit" in response.text.lower())
    if not limited:
        return http_failure(system, obj, response)
    delay: timedelta | None = None
    if "retry-after" in response.headers:
        try:
            delay = timedelta(seconds=max(1.0, float(response.headers["retry-after"])))
        except ValueError:
            delay = None
    elif response.headers.get("x-ratelimit-reset", "").isdigit():
        delay = timedelta(seconds=max(1.0, int(response.headers["x-ratelimit-reset"]) - time.time()))
    return ApplicationError(f"{system}: {obj}: rate limited (HTTP {response.status_code}); will retry",
                            type=f"{system}.rate_limited", non_retryable=False,
                            next_retry_delay=delay or timedelta(seconds=60))


class GitHubTracker(HttpAdapter):
    """GitHub Issues as the review's tracker."""

    system = "GitHub"

    def __init__(self, token: str | None, base_url: str = "https://api.github.com", incident_url: str = "",
                 client: httpx.AsyncClient | None = None) -> None:
        if not token:
            raise configuration_error(self.system, "settings", "UNSHIP_GITHUB_TOKEN is not set")
        self._base = base_url.rstrip("/")
        self._incident_url = incident_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
                         "X-GitHub-Api-Version": "2022-11-28"}
        self._use_client(client)

    def _repo(self, tracker: Tracker) -> str:
        owner, _, repo = (tracker.repository or "").partition("/")
        return f"{self._base}/repos/{segment(owner)}/{segment(repo)}"

    async def create(self, tracker: Tracker, incident_id: str, task: TrackerTask) -> TrackedTask:
        obj = f"issue {task.title!r} in {tracker.repository}"
        label = task_label(task.key)
        found = await send(self._client, self.system, obj, "GET", f"{self._repo(tracker)}/issues",
                           params={"labels": label, "state": "all"}, headers=self._headers,
                           failure=_github_failure)
        existing = json_body(self.system, obj, found)
        if isinstance(existing, list) and existing and isinstance(existing[0], dict):
            return self._tracked(task.key, existing[0])
        body = {"title": task.title, "body": _body(task, incident_id, self._incident_url),
                "labels": [*task.labels, label]}
        if task.assignee:
            body["assignees"] = [task.assignee]
        created = await send(self._client, self.system, obj, "POST", f"{self._repo(tracker)}/issues",
                             json=body, headers=self._headers, failure=_github_failure)
        return self._tracked(task.key, json_body(self.system, obj, created))

    async def state(self, tracker: Tracker, task: TrackedTask) -> TrackedTask:
        obj = f"issue #{task.ref} in {tracker.repository}"
        answer = await send(self._client, self.system, obj, "GET", f"{self._repo(tracker)}/issues/{segment(task.ref)}",
                            headers=self._headers, failure=_github_failure)
        return self._tracked(task.key, json_body(self.system, obj, answer))

    def _tracked(self, key: str, issue: object) -> TrackedTask:
        if not isinstance(issue, dict) or "number" not in issue:
            raise configuration_error(self.system, "issue", f"unexpected answer {str(issue)[:200]}; check the URL")
        return TrackedTask(key=key, ref=str(issue["number"]), url=str(issue.get("html_url") or ""),
                           state="done" if issue.get("state") == "closed" else "open")


class JiraTracker(HttpAdapter):
    """Jira Cloud (REST v3) as the review's tracker."""

    system = "Jira"

    def __init__(self, base_url: str | None, token: str | None, user: str | None = None, incident_url: str = "",
                 client: httpx.AsyncClient | None = None) -> None:
        if not base_url or not token:
            raise configuration_error(self.system, "settings", "UNSHIP_JIRA_URL and UNSHIP_JIRA_API_TOKEN are needed")
        self._base = base_url.rstrip("/")
        self._incident_url = incident_url.rstrip("/")
        if user:
            basic = base64.b64encode(f"{user}:{token}".encode()).decode()
            auth = f"Basic {basic}"
        else:
            auth = f"Bearer {token}"
        self._headers = {"Authorization": auth, "Accept": "application/json"}
        self._use_client(client)

    async def create(self, tracker: Tracker, incident_id: str, task: TrackerTask) -> TrackedTask:
        obj = f"issue {task.title!r} in project {tracker.project}"
        label = task_label(task.key)
        found = await send(self._client, self.system, obj, "GET", f"{self._base}/rest/api/3/search/jql",
                           params={"jql": f'project = "{tracker.project}" AND labels = "{label}"',
                                   "fields": "status", "maxResults": "1"}, headers=self._headers)
        issues = json_body(self.system, obj, found)
        issues = issues.get("issues") if isinstance(issues, dict) else None
        if isinstance(issues, list) and issues and isinstance(issues[0], dict):
            return self._tracked(task.key, issues[0])
        fields: dict[str, object] = {
            "project": {"key": tracker.project}, "summary": task.title, "issuetype": {"name": tracker.issue_type},
            "description": _adf(_body(task, incident_id, self._incident_url)),
            "labels": [*task.labels, label], "duedate": task.due.date().isoformat(),
        }
        if task.assignee:
            fields["assignee"] = {"accountId": task.assignee}
        created = await send(self._client, self.system, obj, "POST", f"{self._base}/rest/api/3/issue",
                             json={"fields": fields}, headers=self._headers)
        answer = json_body(self.system, obj, created)
        if not isinstance(answer, dict) or "key" not in answer:
            raise configuration_error(self.system, obj, f"unexpected answer {str(answer)[:200]}; check the URL")
        return TrackedTask(key=task.key, ref=str(answer["key"]), url=f"{self._base}/browse/{answer['key']}")

    async def state(self, tracker: Tracker, task: TrackedTask) -> TrackedTask:
        obj = f"issue {task.ref}"
        answer = await send(self._client, self.system, obj, "GET",
                            f"{self._base}/rest/api/3/issue/{segment(task.ref)}", params={"fields": "status"},
                            headers=self._headers)
        return self._tracked(task.key, json_body(self.system, obj, answer))

    def _tracked(self, key: str, issue: object) -> TrackedTask:
        if not isinstance(issue, dict) or "key" not in issue:
            raise configuration_error(self.system, "issue", f"unexpected answer {str(issue)[:200]}; check the URL")
        fields = issue.get("fields") if isinstance(issue.get("fields"), dict) else {}
        status = fields.get("status") if isinstance(fields, dict) else None
        category = status.get("statusCategory") if isinstance(status, dict) else None
        done = isinstance(category, dict) and category.get("key") == "done"
        return TrackedTask(key=key, ref=str(issue["key"]), url=f"{self._base}/browse/{issue['key']}",
                           state="done" if done else "open")


class StoreTracker:
    """The default: the tasks are the review document's action items; nothing is filed elsewhere."""

    async def create(self, tracker: Tracker, incident_id: str, task: TrackerTask) -> TrackedTask:
        return TrackedTask(key=task.key, ref=f"store:{task.key}")

    async def state(self, tracker: Tracker, task: TrackedTask) -> TrackedTask:
        return task


class TrackerRouter:
    """The tracker by the playbook's ``review.tracker.kind``; one not configured is a person's problem."""

    def __init__(self, trackers: dict[TrackerKind, TaskTracker] | None = None) -> None:
        self.trackers: dict[TrackerKind, TaskTracker] = {TrackerKind.STORE: StoreTracker(), **(trackers or {})}

    def get(self, tracker: Tracker) -> TaskTracker:
        found = self.trackers.get(tracker.kind)
        if found is None:
            setting = {"github": "UNSHIP_GITHUB_TOKEN", "jira": "UNSHIP_JIRA_URL and UNSHIP_JIRA_API_TOKEN"}
            raise configuration_error("tracker", tracker.kind.value,
                                      f"not configured; set {setting.get(tracker.kind.value, 'its settings')}")
        return found


def _body(task: TrackerTask, incident_id: str, incident_url: str) -> str:
    link = incident_link(incident_url, incident_id) if incident_url else incident_id
    return (f"Post-incident review task for `{incident_id}`.\n\n"
            f"- Owner (role): {task.owner}\n- Due: {task.due.date().isoformat()}\n- Incident: {link}\n\n"
            f"{task.body}".rstrip() + "\n")


def _adf(text: str) -> dict[str, object]:
    """Plain text as an Atlassian Document Format document (one paragraph per line)."""
    return {"type": "doc", "version": 1, "content": [
        {"type": "paragraph", "content": [{"type": "text", "text": line}]} if line else {"type": "paragraph"}
        for line in text.splitlines()]}
