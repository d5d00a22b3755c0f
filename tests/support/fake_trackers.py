"""Local servers speaking GitHub Issues REST and Jira Cloud REST v3 as documented (the shapes activities/
trackers.py relies on), with their auth, error bodies and rate-limit answers."""

from __future__ import annotations

import base64
import time
from typing import Any

from tests.support.fake_http import Answer, FakeServer, Request

RATE_LIMITED = 1001  # fail_next(RATE_LIMITED): GitHub's primary rate limit answer (403, remaining 0)


class FakeGitHub(FakeServer):
    """``/repos/{owner}/{repo}/issues`` create, list by label, get; bearer token auth."""

    def __init__(self, token: str = "ghp_test", repository: str = "acme/ml-incidents") -> None:
        super().__init__()
        self.token, self.repository = token, repository
        self.issues: dict[int, dict[str, Any]] = {}

    def close(self, number: int) -> None:
        with self.lock:
            self.issues[number]["state"] = "closed"

    def error_answer(self, status: int, request: Request) -> Answer:
        if status == RATE_LIMITED:
            return Answer(403, {"message": "API rate limit exceeded for user ID 1.",
                                "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"},
                          {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(time.time()) + 1)})
        return Answer(status, {"message": f"scripted HTTP {status}"})

    def handle(self, request: Request) -> Answer:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return Answer(401, {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"})
        if request.headers.get("accept") != "application/vnd.github+json":
            return Answer(415, {"message": "Unsupported media type"})
        prefix = f"/repos/{self.repository}/issues"
        if not request.path.startswith(prefix):
            return Answer(404, {"message": "Not Found"})
        rest = request.path[len(prefix):].strip("/")
        if request.method == "POST" and not rest:
            body = request.json()
            if not isinstance(body, dict) or not body.get("title"):
                return Answer(422, {"message": "Validation Failed",
                                    "errors": [{"resource": "Issue", "code": "missing_field", "field": "title"}]})
            number = len(self.issues) + 1
            issue = {"number": number, "title": body["title"], "body": body.get("body", ""), "state": "open",
                     "labels": [{"name": n} for n in body.get("labels", [])],
                     "assignees": [{"login": a} for a in body.get("assignees", [])],
                     "html_url": f"https://github.com/{self.repository}/issues/{number}"}
            self.issues[number] = issue
            return Answer(201, issue)
        if request.method == "GET" and not rest:
            wanted = set((request.query.get("labels") or [""])[0].split(",")) - {""}
            found = [i for i in self.issues.values() if wanted <= {lab["name"] for lab in i["labels"]}]
            return Answer(200, found)
        if request.method == "GET" and rest.isdigit() and int(rest) in self.issues:
            return Answer(200, self.issues[int(rest)])
        return Answer(404, {"message": "Not Found"})


class FakeJira(FakeServer):
    """``/rest/api/3/issue`` create and get, ``/rest/api/3/search/jql``; basic auth (email + API token)."""

    def __init__(self, user: str = "bot@acme.test", token: str = "jira-token", project: str = "MLOPS") -> None:
        super().__init__()
        self.auth = "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()
        self.project = project
        self.issues: dict[str, dict[str, Any]] = {}

    def done(self, key: str) -> None:
        with self.lock:
            self.issues[key]["fields"]["status"] = {
                "name": "Done", "statusCategory": {"id": 3, "key": "done", "name": "Done"}}

    def error_answer(self, status: int, request: Request) -> Answer:
        headers = {"Retry-After": "1"} if status == 429 else {}
        return Answer(status, {"errorMessages": [f"scripted HTTP {status}"], "errors": {}}, headers)

    def handle(self, request: Request) -> Answer:
        if request.headers.get("authorization") != self.auth:
            return Answer(401, {"errorMessages": ["You are not authenticated."], "errors": {}})
        if request.method == "POST" and request.path == "/rest/api/3/issue":
            fields = (request.json() or {}).get("fields") or {}
            errors = {}
            if (fields.get("project") or {}).get("key") != self.project:
                errors["project"] = "valid project is required"
            if not fields.get("summary"):
                errors["summary"] = "You must specify a summary of the issue."
            if (fields.get("description") or {}).get("type") != "doc":
                errors["description"] = "Operation value must be an Atlassian Document"
            if errors:
                return Answer(400, {"errorMessages": [], "errors": errors})
            key = f"{self.project}-{len(self.issues) + 1}"
            self.issues[key] = {"id": str(10000 + len(self.issues)), "key": key, "fields": {
                **fields, "status": {"name": "To Do", "statusCategory": {"id": 2, "key": "new", "name": "To Do"}}}}
            return Answer(201, {"id": self.issues[key]["id"], "key": key,
                                "self": f"{self.url}/rest/api/3/issue/{self.issues[key]['id']}"})
        if request.method == "GET" and request.path == "/rest/api/3/search/jql":
            jql = (request.query.get("jql") or [""])[0]
            found = [i for i in self.issues.values() if any(f'labels = "{lab}"' in jql for lab in i["fields"]["labels"])]
            return Answer(200, {"issues": [{"id": i["id"], "key": i["key"], "fields": {"status": i["fields"]["status"]}}
                                           for i in found], "isLast": True})
        if request.method == "GET" and request.path.startswith("/rest/api/3/issue/"):
            key = request.path.rsplit("/", 1)[1]
            if key in self.issues:
                issue = self.issues[key]
                return Answer(200, {"id": issue["id"], "key": key, "fields": {"status": issue["fields"]["status"]}})
            return Answer(404, {"errorMessages": ["Issue does not exist or you do not have permission to see it."],
                                "errors": {}})
        return Answer(404, {"errorMessages": ["not found"], "errors": {}})
