"""The attack suite: what someone with ordinary access would try against decision rights, run against the real
stack (`unship up` on the embedded Temporal dev server, as a subprocess), each attempt refused and recorded.

People (personal tokens in the users file): two safety leads, an on-call engineer (through the Slack group
S05MLONCALL), an incident commander (break-glass), an intern with API scopes but no playbook role, an admin.
Also the shared API token, an alert sender's token, and OIDC tokens signed by keys this test generates and
serves as a JWKS on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from temporalio.client import Client

from playbooks.rendering import render_message
from tests.support.processes import ctrl_c
from tests.workers.cli.test_up import wait_ready
from workers.runtime.temporal_server import free_port
from workers.web.auth import add_user

ROOT = Path(__file__).resolve().parents[2]
SHARED = "shared-api-token-for-the-attack-suite"
ALERTS = "alert-sender-token-for-the-attack-suite"
AUDIENCE = "unship-api"
PEOPLE = {  # user: (scopes, groups)
    "U04SAFETY01": (["read", "trigger", "decide", "operate"], []),
    "U04SAFETY02": (["read", "trigger", "decide", "operate"], []),
    "U05ONCALL7": (["read", "trigger", "decide", "operate"], ["S05MLONCALL"]),
    "U02COMMAND": (["read", "trigger", "decide", "operate"], []),
    "U09INTERN1": (["read", "trigger", "decide", "operate"], []),
    "U01ADMIN": (["read", "admin"], []),
}


def playbook(name: str, flag: str) -> dict[str, Any]:
    """An approval playbook with per-role quorum: one on-call engineer AND one safety lead."""
    return {
        "api_version": "unship/v1", "name": name, "scenario": "conversational-agent",
        "roles": {"on_call": {"groups": ["S05MLONCALL"]}, "safety_lead": {"users": ["U04SAFETY01", "U04SAFETY02"]},
                  "incident_commander": {"users": ["U02COMMAND"]}},
        "trigger": {"matchers": ["alertname=GenAIQualityDegraded", f"service={name}"]},
        "signals": [{"name": "hallucinations", "category": "model_quality",
                     "source": {"type": "prometheus", "query": "up"}, "threshold": {"value": 30}}],
        "confirmation": {"window": "0s"},
        "decision": {"mode": "approval", "roles": ["on_call", "safety_lead"], "quorum": 2,
                     "require": {"on_call": 1, "safety_lead": 1}, "timeout": "30m",
                     "actions": {"break_glass": ["incident_commander"]}},
        "rollback": {"targets": [{"kind": "flag", "provider": "flagd", "key": flag}],
                     "stages": [{"percent": 10, "bake": "10m"}, {"percent": 100, "bake": "10m"}]},
        "communications": {"channel": "#ml-incidents"},
    }


@dataclass
class Oidc:
    issuer: str
    key: rsa.RSAPrivateKey
    kid: str

    def token(self, sub: str, *, key: rsa.RSAPrivateKey | None = None, aud: str = AUDIENCE, expires_in: int = 300,
              scope: str = "openid read decide operate", issuer: str | None = None) -> str:
        now = int(time.time())
        claims = {"sub": sub, "aud": aud, "iss": issuer or self.issuer, "iat": now, "exp": now + expires_in,
                  "scope": scope}
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": self.kid})


@dataclass
class Stack:
    url: str
    tokens: dict[str, str]
    state: Path
    env: dict[str, str]
    oidc: Oidc

    def as_(self, who: str) -> httpx.Client:
        token = {"shared": SHARED, "alerts": ALERTS}.get(who) or self.tokens[who]
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def status(self, incident: str) -> dict[str, Any]:
        with self.as_("shared") as api:
            answer = api.get(f"/v1/incidents/{incident}")
        assert answer.status_code == 200, answer.text
        return answer.json()  # type: ignore[no-any-return]

    def until(self, incident: str, done: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        deadline = time.monotonic() + 60  # guards against a hang only
        while True:
            status = self.status(incident)
            if done(status):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"never reached {what}: {[e['message'] for e in status['audit'][-4:]]}")
            time.sleep(0.2)

    def open(self, playbook: str, release: str) -> str:
        with self.as_("shared") as api:
            answer = api.post("/v1/incidents", json={"playbook": playbook, "release": release})
        assert answer.status_code == 202, answer.text
        incident: str = answer.json()["incident_id"]
        self.until(incident, lambda s: s["gate"] is not None, "the approval gate")
        return incident

    def decide(self, who: str, incident: str, verdict: str = "approve", **body: Any) -> httpx.Response:
        with self.as_(who) as api:
            return api.post(f"/v1/incidents/{incident}/decision", json={"verdict": verdict, "reason": "test", **body})

    def act(self, who: str, incident: str, action: str, reason: str = "") -> httpx.Response:
        with self.as_(who) as api:
            return api.post(f"/v1/incidents/{incident}/{action}", json={"reason": reason})

    def cli(self, *args: str, token: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "workers.cli", *args], cwd=ROOT, text=True, capture_output=True,
                              env={**self.env, "UNSHIP_API_URL": self.url, **({"UNSHIP_TOKEN": token} if token else {}),
                                   **env}, timeout=120)

    def flag_split(self, key: str) -> Any:
        return json.loads((self.state / "flags.json").read_text())["flags"][key]["targeting"]


def refusals(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in status["audit"] if e["kind"] in ("action_refused", "decision_refused")]


@pytest.fixture(scope="module")
def jwks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Oidc]:
    """An OIDC issuer's JWKS on 127.0.0.1, with a key this test generated."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="test-key-1", use="sig", alg="RS256")
    body = json.dumps({"keys": [jwk]}).encode()
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    discovery = json.dumps({"issuer": issuer, "jwks_uri": f"{issuer}/jwks.json"}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            payload = {"/jwks.json": body, "/.well-known/openid-configuration": discovery}.get(self.path)
            self.send_response(200 if payload else 404)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(payload or b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Oidc(issuer=issuer, key=key, kid="test-key-1")
    server.shutdown()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, jwks: Oidc) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("attacks")
    state, library = tmp / "state", tmp / "playbooks"
    state.mkdir()
    library.mkdir()
    (library / "chat-sec.yaml").write_text(json.dumps(playbook("chat-sec", "chat-model")))
    (library / "chat-served.yaml").write_text(json.dumps(playbook("chat-served", "chat-served-model")))
    (library / "chat-holds.yaml").write_text(json.dumps(playbook("chat-holds", "chat-holds-model")))
    # The served flag names its releases: the candidate variant serves chat-v3.0.0.
    variants = {"previous": "chat-v2.4.0", "candidate": "chat-v3.0.0"}
    (state / "flags.json").write_text(json.dumps({"$schema": "https://flagd.dev/schema/v0/flags.json", "flags": {
        "chat-served-model": {"state": "ENABLED", "variants": variants, "defaultVariant": "candidate",
                              "targeting": {}, "metadata": {}}}}))
    tokens = {user: add_user(state / "users.yaml", user, scopes, groups) for user, (scopes, groups) in PEOPLE.items()}
    http_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNSHIP_") and k != "TEMPORAL_ADDRESS"}
    env.update({"UNSHIP_STATE_DIR": str(state), "UNSHIP_HTTP_ADDR": f"127.0.0.1:{http_port}",
                "UNSHIP_TEMPORAL_PORT": str(free_port()), "UNSHIP_TEMPORAL_UI_PORT": "0",
                "UNSHIP_PLAYBOOKS_DIR": str(library), "UNSHIP_API_TOKEN": SHARED,
                "UNSHIP_ALERT_BEARER_TOKEN": ALERTS, "UNSHIP_OIDC_ISSUER": jwks.issuer,
                "UNSHIP_OIDC_AUDIENCE": AUDIENCE, "UNSHIP_TOKEN_FILE": str(tmp / "no-token"), "COLUMNS": "200"})
    # --no-preflight: the playbooks name a Prometheus signal they never poll (confirmation window 0)
    process = subprocess.Popen([sys.executable, "-m", "workers.cli", "up", "--no-preflight"], cwd=ROOT, env=env,
                               text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_ready(url, process)
        yield Stack(url=url, tokens=tokens, state=state, env=env, oidc=jwks)
    finally:
        output = ctrl_c(process, "unship up (attack suite)")
    assert process.returncode == 0, output
    for secret in (SHARED, ALERTS, *tokens.values()):
        assert secret not in output, "a credential reached the log"


# --- identity ------------------------------------------------------------------------------------------------


def test_impersonation_through_the_body_is_refused_and_recorded(stack: Stack) -> None:
    incident = stack.open("chat-sec", "imp-v1")
    forged = stack.decide("U09INTERN1", incident, user="U04SAFETY01")
    assert forged.status_code == 403
    assert "you are authenticated as U09INTERN1; you cannot approve as U04SAFETY01" in forged.json()["detail"]
    with stack.as_("U09INTERN1") as api:
        named = api.post(f"/v1/incidents/{incident}/revert-now", json={"by": "U04SAFETY01", "reason": "me"})
    assert named.status_code == 403 and "cannot revert_now as U04SAFETY01" in named.json()["detail"]
    status = stack.status(incident)
    assert status["gate"]["approvals"] == [] and status["decisions"] == []
    assert [(e["actor"], e["data"]["action"]) for e in refusals(status)] == [("U09INTERN1", "approve"),
                                                                              ("U09INTERN1", "revert_now")]
    stack.act("U05ONCALL7", incident, "abort", "test over")


def test_a_shared_token_never_decides_or_operates(stack: Stack) -> None:
    incident = stack.open("chat-sec", "shared-v1")
    decided = stack.decide("shared", incident)
    assert decided.status_code == 403 and "decide needs a person: the shared API token identifies nobody" in \
        decided.json()["detail"]
    for action in ("revert-now", "abort", "pause", "resume"):
        answer = stack.act("shared", incident, action, "because")
        assert answer.status_code == 403 and "operate needs a person" in answer.json()["detail"]
    status = stack.status(incident)
    assert status["phase"] == "awaiting_decision" and status["outcome"] is None
    assert {e["actor"] for e in refusals(status)} == {"shared-token"} and len(refusals(status)) == 5
    with stack.as_("shared") as api:
        me = api.get("/v1/me").json()
        reload = api.post("/v1/playbooks/reload")
    assert me["user"] is None and me["credential"] == "shared-token" and me["scopes"] == ["read", "trigger"]
    assert reload.status_code == 403
    stack.act("U05ONCALL7", incident, "abort", "test over")


def test_an_alert_senders_token_only_sends_alerts(stack: Stack) -> None:
    incident = stack.open("chat-sec", "alerts-v1")
    with stack.as_("alerts") as api:
        operate = api.post(f"/v1/incidents/{incident}/revert-now", json={"reason": "x"})
        read = api.get("/v1/incidents")
        sent = api.post("/v1/alerts/generic", json={"alerts": [{"labels": {
            "alertname": "GenAIQualityDegraded", "service": "chat-sec", "release": "alerts-v1"}}]})
    assert operate.status_code == 403 and "an alert sender's credential identifies nobody" in operate.json()["detail"]
    assert read.status_code == 403 and "lacks the 'read' scope" in read.json()["detail"]
    assert sent.status_code == 202 and sent.json()["accepted"] == 1
    with stack.as_("shared") as api:  # operator credentials are not alert credentials either
        assert api.post("/v1/alerts/generic", json={"alerts": []}).status_code == 401
    stack.act("U05ONCALL7", incident, "abort", "test over")


def test_jwts_expired_forged_or_for_another_audience_are_refused(stack: Stack) -> None:
    oidc = stack.oidc
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases = {
        "expired": (oidc.token("U04SAFETY01", expires_in=-120), "has expired"),
        "forged": (oidc.token("U04SAFETY01", key=other_key), "not valid"),
        "wrong audience": (oidc.token("U04SAFETY01", aud="another-api"), "not for this service"),
        "wrong issuer": (oidc.token("U04SAFETY01", issuer="http://127.0.0.1:1"), "was not issued by"),
        "not a JWT": ("a.b.c", "not valid"),
    }
    for name, (token, message) in cases.items():
        answer = httpx.get(f"{stack.url}/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert answer.status_code == 401, name
        assert message in answer.json()["detail"], (name, answer.json())
    good = httpx.get(f"{stack.url}/v1/me", headers={"Authorization": f"Bearer {oidc.token('U04SAFETY01')}"},
                     timeout=30).json()
    assert good["user"] == "U04SAFETY01" and good["credential"] == "oidc"
    assert good["scopes"] == ["decide", "operate", "read"]  # openid is not an unship scope
    whoami = stack.cli("whoami", token=oidc.token("U04SAFETY02"))
    assert whoami.returncode == 0 and "U04SAFETY02" in whoami.stdout and "oidc" in whoami.stdout


def test_unknown_expired_or_forged_credentials_naming_an_incident_are_recorded_on_it_once_a_minute(
        stack: Stack) -> None:
    incident = stack.open("chat-sec", "unidentified-v1")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    presented = {"unknown": "unship_not-a-token-anyone-was-given-0123456789",
                 "expired": stack.oidc.token("U04SAFETY01", expires_in=-120),
                 "forged": stack.oidc.token("U04SAFETY01", key=other)}
    for token in presented.values():
        headers = {"Authorization": f"Bearer {token}"}
        decided = httpx.post(f"{stack.url}/v1/incidents/{incident}/decision", headers=headers, timeout=30,
                             json={"verdict": "approve", "reason": "me"})
        operated = httpx.post(f"{stack.url}/v1/incidents/{incident}/revert-now", headers=headers, timeout=30,
                              json={"reason": "me"})
        assert decided.status_code == 401 and operated.status_code == 401
    # A barrier: the API signals each refusal before answering, so once this known caller's refusal is on the
    # trail, every refusal above that was signalled is there too.
    assert stack.decide("shared", incident).status_code == 403
    status = stack.until(incident, lambda s: any(e["actor"] == "shared-token" for e in refusals(s)), "the barrier")
    recorded = [e for e in refusals(status) if e["actor"] != "shared-token"]
    assert [(e["actor"], e["data"]["action"]) for e in recorded] == [("unidentified caller from 127.0.0.1",
                                                                      "approve")]
    assert "unknown or revoked bearer token" in recorded[0]["message"]
    assert status["gate"]["approvals"] == [] and status["previous_percent"] == 0
    trail = json.dumps(status) + json.dumps(stack.cli("audit", "export", incident, "--format", "jsonl",
                                                      token=stack.tokens["U01ADMIN"]).stdout)
    for token in presented.values():
        assert token not in trail and token.split(".")[-1] not in trail
    stack.act("U05ONCALL7", incident, "abort", "test over")


# --- decision rights -----------------------------------------------------------------------------------------


def test_revert_now_abort_pause_without_a_role_are_refused_and_break_glass_is_flagged(stack: Stack) -> None:
    incident = stack.open("chat-sec", "role-v1")
    for action in ("revert-now", "abort", "pause"):
        answer = stack.act("U09INTERN1", incident, action, "looks bad to me")
        assert answer.status_code == 403
        assert f"U09INTERN1 holds none of the roles that may {action.replace('-', '_')} here" in \
            answer.json()["detail"]
    no_reason = stack.act("U02COMMAND", incident, "revert-now")
    assert no_reason.status_code == 403 and "only as break-glass" in no_reason.json()["detail"]
    status = stack.status(incident)
    assert status["phase"] == "awaiting_decision" and status["previous_percent"] == 0
    assert len(refusals(status)) == 4
    glass = stack.act("U02COMMAND", incident, "abort", "legal hold: stop here")
    assert glass.status_code == 200 and glass.json()["break_glass"] is True
    done = stack.until(incident, lambda s: s["outcome"] is not None, "the abort")
    flagged = next(e for e in done["audit"] if e["kind"] == "break_glass")
    assert flagged["actor"] == "U02COMMAND" and "legal hold" in flagged["message"]


def test_a_quorum_met_by_the_wrong_roles_is_refused(stack: Stack) -> None:
    incident = stack.open("chat-sec", "quorum-v1")
    assert stack.decide("U04SAFETY01", incident).json()["message"] == "approval recorded; still needed: 1 on_call"
    second = stack.decide("U04SAFETY02", incident)
    assert second.status_code == 403
    assert "U04SAFETY02's approval cannot count: the gate still needs 1 on_call" in second.json()["detail"]
    status = stack.status(incident)
    assert status["gate"]["approvals"] == ["U04SAFETY01"] and status["previous_percent"] == 0
    assert refusals(status)[-1]["actor"] == "U04SAFETY02"
    assert stack.decide("U05ONCALL7", incident).json()["message"] == "approved"  # on call, through the group
    stack.until(incident, lambda s: s["previous_percent"] == 10, "the first stage")
    stack.act("U05ONCALL7", incident, "abort", "test over")


# --- the server owns the playbooks ---------------------------------------------------------------------------


def test_a_client_sent_playbook_is_never_run(stack: Stack, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    lenient = playbook("chat-sec", "chat-model")
    lenient["decision"] = {"mode": "automatic"}
    (mine / "chat-sec.yaml").write_text(json.dumps(lenient))
    opened = stack.cli("trigger", "chat-sec", "--release", "client-v1", token=stack.tokens["U09INTERN1"],
                       UNSHIP_PLAYBOOKS_DIR=str(mine))
    assert opened.returncode == 0, opened.stderr
    with stack.as_("shared") as api:
        served = {p["name"]: p["version"] for p in api.get("/v1/playbooks").json()["playbooks"]}
        smuggled = api.post("/v1/incidents", json={"playbook": "chat-sec", "release": "client-v2",
                                                   "snapshot": lenient})
    status = stack.until("unship:chat-sec:client-v1", lambda s: s["gate"] is not None, "the gate")
    assert status["playbook_version"] == served["chat-sec"]  # the server's version, gate and all
    assert smuggled.status_code == 422 and "snapshot" in smuggled.json()["detail"]
    stack.act("U05ONCALL7", "unship:chat-sec:client-v1", "abort", "test over")


def test_reloading_the_library_needs_admin_and_is_audited(stack: Stack) -> None:
    with stack.as_("U09INTERN1") as api:
        refused = api.post("/v1/playbooks/reload")
    assert refused.status_code == 403 and "lacks the 'admin' scope" in refused.json()["detail"]
    reloaded = stack.cli("playbooks", "reload", token=stack.tokens["U01ADMIN"])
    assert reloaded.returncode == 0 and "no playbook changed" in reloaded.stdout
    with sqlite3.connect(stack.state / "unship.db") as db:
        rows = db.execute("SELECT actor, message FROM audit_events WHERE incident_id = 'unship:library'").fetchall()
    assert ("U01ADMIN", "playbook library reloaded: no change") in rows


# --- templates -----------------------------------------------------------------------------------------------


INJECTION = "{{ cycler.__init__.__globals__.os.popen('id -un').read() }}"


def test_template_injection_is_refused_by_validate_and_never_runs(stack: Stack, tmp_path: Path) -> None:
    evil = playbook("chat-evil", "chat-model")
    evil["communications"]["templates"] = {"opened": INJECTION}
    path = tmp_path / "evil.yaml"
    path.write_text(json.dumps(evil, indent=1))
    checked = stack.cli("validate", str(path))
    assert checked.returncode == 1
    assert f"{path}:" in checked.stderr and "communications.templates.opened: template uses the unsafe attribute" \
        in checked.stderr
    with pytest.raises(ValueError, match="SecurityError"):  # and at run time the sandbox refuses it anyway
        render_message("opened", {"incident_id": "x", "playbook": "p", "release": "r"}, {"opened": INJECTION})


# --- one incident per target ---------------------------------------------------------------------------------


def test_a_second_incident_on_a_held_flag_waits_and_never_writes_it(stack: Stack) -> None:
    first = stack.open("chat-sec", "chat-v3.0.0")
    stack.decide("U04SAFETY01", first)
    stack.decide("U05ONCALL7", first)
    stack.until(first, lambda s: any(e["kind"] == "targets_held" for e in s["audit"]), "the first's hold")
    second = stack.open("chat-sec", "chat-v9.9.9")
    stack.decide("U04SAFETY02", second)
    stack.decide("U05ONCALL7", second)
    waiting = stack.until(second, lambda s: any(e["kind"] == "target_held" for e in s["audit"]), "the hold")
    assert waiting["gate"]["purpose"] == f"target held by {first}"
    assert not any(e["kind"] == "stage_applied" for e in waiting["audit"])
    assert stack.decide("U04SAFETY01", second).status_code == 403  # nobody approves past a hold
    stack.act("U05ONCALL7", second, "abort", "duplicate of the first incident")
    stack.act("U05ONCALL7", first, "abort", "test over")
    done = stack.until(second, lambda s: s["outcome"] is not None, "the abort")
    assert done["outcome"] == "aborted" and not any(e["kind"] == "stage_applied" for e in done["audit"])


def terminate(stack: Stack, incident: str) -> None:
    """End an incident the way an operator with Temporal access might: terminated, so it never lets go."""

    async def main() -> None:
        client = await Client.connect(f"127.0.0.1:{stack.env['UNSHIP_TEMPORAL_PORT']}")
        await client.get_workflow_handle(incident).terminate(reason="attack suite: ended without closing")

    asyncio.run(main())


def test_a_terminated_holder_does_not_block_its_flag_forever(stack: Stack) -> None:
    first = stack.open("chat-holds", "held-v1")
    stack.decide("U04SAFETY01", first)
    stack.decide("U05ONCALL7", first)
    stack.until(first, lambda s: s["previous_percent"] == 10, "the first incident's first stage")
    terminate(stack, first)
    listed = stack.cli("target-holds", "list", "--json", token=stack.tokens["U01ADMIN"])
    assert listed.returncode == 0, listed.stderr
    assert {"target": "flag:flagd:chat-holds-model", "incident_id": first, "holder_status": "terminated"}.items() \
        <= json.loads(listed.stdout)[0].items()
    second = stack.open("chat-holds", "held-v1-again")
    stack.decide("U04SAFETY02", second)
    stack.decide("U05ONCALL7", second)
    status = stack.until(second, lambda s: any(e["kind"] == "targets_held" for e in s["audit"]), "the hold")
    taken = next(e for e in status["audit"] if e["kind"] == "target_hold_taken_over")
    assert taken["data"] == {"holder": first, "target": "flag:flagd:chat-holds-model", "holder_status": "terminated"}
    assert f"held by incident {first}, whose workflow is terminated" in taken["message"]
    stack.until(second, lambda s: any(e["kind"] == "stage_skipped" or e["kind"] == "stage_applied"
                                      for e in s["audit"]), "the second incident writing the flag")
    # The holds are an administrator's business: listing and releasing them needs admin, with a reason.
    with stack.as_("U09INTERN1") as api:
        assert api.get("/v1/target-holds").status_code == 403
    running = stack.cli("target-holds", "release", "flag:flagd:chat-holds-model", "--reason", "stuck?",
                        token=stack.tokens["U01ADMIN"])
    assert running.returncode == 1 and f"incident {second} is still running" in running.stderr
    stack.act("U05ONCALL7", second, "abort", "test over")
    stack.until(second, lambda s: s["outcome"] is not None, "the abort")


def test_an_admin_releases_a_dead_incidents_target_hold_on_the_record(stack: Stack) -> None:
    first = stack.open("chat-holds", "held-v2")
    stack.decide("U04SAFETY01", first)
    stack.decide("U05ONCALL7", first)
    stack.until(first, lambda s: any(e["kind"] == "targets_held" for e in s["audit"]), "the hold")
    terminate(stack, first)
    assert stack.cli("target-holds", "release", "flag:flagd:chat-holds-model", token=stack.tokens["U01ADMIN"]) \
        .returncode == 2  # --reason is required
    with stack.as_("U09INTERN1") as api:
        refused = api.post("/v1/target-holds/release", json={"target": "flag:flagd:chat-holds-model",
                                                              "reason": "mine now"})
    assert refused.status_code == 403 and "lacks the 'admin' scope" in refused.json()["detail"]
    released = stack.cli("target-holds", "release", "flag:flagd:chat-holds-model", "--reason", "its pod was "
                         "killed", "--json", token=stack.tokens["U01ADMIN"])
    assert released.returncode == 0, (released.stderr, [e["message"] for e in stack.status(first)["audit"]])
    assert json.loads(released.stdout)["incident_id"] == first
    again = stack.cli("target-holds", "release", "flag:flagd:chat-holds-model", "--reason", "twice",
                      token=stack.tokens["U01ADMIN"])
    assert again.returncode == 4 and "no incident holds" in again.stderr
    with sqlite3.connect(stack.state / "unship.db") as db:
        rows = db.execute("SELECT actor, message FROM audit_events WHERE incident_id = 'unship:target-holds'") \
            .fetchall()
    assert ("U01ADMIN", f"released the hold of incident {first} (terminated) on flag:flagd:chat-holds-model: its "
            "pod was killed") in rows
    assert "flag:flagd:chat-holds-model" not in stack.cli("target-holds", "list",
                                                          token=stack.tokens["U01ADMIN"]).stdout


def test_a_release_that_is_not_the_served_candidate_stops_at_a_gate(stack: Stack) -> None:
    before = stack.flag_split("chat-served-model")
    incident = stack.open("chat-served", "chat-v9.9.9")
    stack.decide("U04SAFETY01", incident)
    stack.decide("U05ONCALL7", incident)
    status = stack.until(incident, lambda s: (s["gate"] or {}).get("purpose") == "release_mismatch", "the gate")
    mismatch = next(e for e in status["audit"] if e["kind"] == "release_mismatch")
    assert "the alert names release chat-v9.9.9, but flagd chat-served-model: variant 'candidate' serves " \
           "'chat-v3.0.0'" in mismatch["message"]
    assert stack.flag_split("chat-served-model") == before  # no user moved
    assert stack.decide("U04SAFETY01", incident, "reject").status_code == 200
    assert stack.until(incident, lambda s: s["outcome"] is not None, "the outcome")["outcome"] == "rejected"


# --- the audit trail -----------------------------------------------------------------------------------------


def test_an_edited_audit_row_is_found_by_audit_verify(stack: Stack) -> None:
    incident = stack.open("chat-sec", "audit-v1")
    stack.decide("U04SAFETY01", incident)
    stack.act("U05ONCALL7", incident, "abort", "test over")
    stack.until(incident, lambda s: s["outcome"] is not None, "the abort")
    deadline = time.monotonic() + 30  # the store projection follows the history
    while time.monotonic() < deadline:
        with sqlite3.connect(stack.state / "unship.db") as db:
            kinds = [r[0] for r in db.execute("SELECT kind FROM audit_events WHERE incident_id = ?", (incident,))]
        if "closed" in kinds:
            break
        time.sleep(0.2)
    clean = stack.cli("audit", "verify", incident)
    assert clean.returncode == 0 and f"OK   {incident}" in clean.stdout, clean.stdout + clean.stderr
    exported = stack.cli("audit", "export", incident, "--format", "jsonl")
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert lines[0]["type"] == "incident" and lines[-1] == {**lines[-1], "type": "chain", "ok": True}
    decision = next(line for line in lines if line.get("kind") == "decision")
    assert decision["actor"] == "U04SAFETY01" and decision["hash"]
    with sqlite3.connect(stack.state / "unship.db") as db:
        db.execute("UPDATE audit_events SET actor = 'U04SAFETY02' WHERE incident_id = ? AND kind = 'decision'",
                   (incident,))
    tampered = stack.cli("audit", "verify", incident)
    assert tampered.returncode == 1
    assert f"event #{decision['seq']} (decision): its content does not match its hash" in tampered.stdout
