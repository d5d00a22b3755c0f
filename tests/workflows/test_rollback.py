"""RollbackWorkflow on the time-skipping server: every path a person on call would see."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.contracts import MessageRef, Notification
from activities.kserve import KServeProvider
from activities.launchdarkly import LaunchDarklyProvider
from activities.routing import FlagRouter
from activities.scripted import ScriptedFlagProvider
from tests.support.fake_k8s import FakeKubernetes
from tests.support.fake_launchdarkly import FakeLaunchDarkly
from tests.support.playbooks import snapshot
from tests.support.world import WORKFLOWS, World, make_world
from workflows.messages import (
    Action,
    Alert,
    AlertBatch,
    AlertStatus,
    Command,
    DecisionRequest,
    OperatorCommand,
    Outcome,
    Phase,
    Verdict,
    incident_id,
)
from workflows.rollback import RollbackWorkflow

SUSTAINED = {"hallucinations": [55, 61, 70, 72, 75], "latency_p95": [1.2], "fairness_gap": [0.02]}


def about(actual: timedelta, expected: timedelta) -> bool:
    """Simulated durations: the timers' length plus the few real milliseconds the activities took."""
    return expected <= actual < expected + timedelta(seconds=5)


def closing(status) -> str:
    """The message of the event that closed the incident (the review may be recorded after it)."""
    return next(e for e in status.audit if e.kind == "closed").message


def act(action: str, user: str, reason: str = "", **kw) -> OperatorCommand:
    return OperatorCommand(action=Action(action), user=user, reason=reason, **kw)


def approve(user: str, **kw) -> DecisionRequest:
    return DecisionRequest(user=user, verdict=Verdict.APPROVE, reason="hallucinations doubled", via="cli", **kw)


async def test_transient_blip_is_dismissed_with_the_reason(world: World) -> None:
    world.signals.timeline = {"hallucinations": [80, 12, 11, 10, 9], "latency_p95": [1.0]}
    handle = await world.start(snapshot())
    status = await world.result(handle)
    assert status.outcome is Outcome.DISMISSED
    assert "transient: 0 of the last 4 measured polls breached (sustained at 3 of 4)" in closing(status)
    assert world.flags.writes == []
    assert [e.kind for e in status.audit].count("poll") == 5
    stored = await world.store.events(status.incident_id)
    assert stored[-1].kind == "closed" and "transient" in stored[-1].message


async def test_resolved_alert_during_confirmation_dismisses(world: World) -> None:
    world.signals.timeline = {"hallucinations": [80, 80, 12]}
    handle = await world.start(snapshot())
    await world.until(handle, lambda s: any(e.kind == "poll" for e in s.audit))
    await handle.signal(RollbackWorkflow.alerts, AlertBatch(alerts=[Alert(
        source="alertmanager", status=AlertStatus.RESOLVED, name="GenAIQualityDegraded", fingerprint="fp-1")]))
    status = await world.result(handle)
    assert status.outcome is Outcome.DISMISSED
    assert "source alert resolved" in closing(status)
    assert world.flags.writes == []


async def test_sustained_breach_is_approved_and_reverted_in_stages(world: World) -> None:
    world.signals.timeline = SUSTAINED
    handle = await world.start(snapshot())
    gate = (await world.at_phase(handle, Phase.AWAITING_DECISION)).gate
    assert gate is not None and gate.users == ["U_ONCALL", "U_ONCALL2", "U_SAFETY"]
    result = await handle.execute_update(RollbackWorkflow.decide, approve("U_SAFETY"))
    assert result.accepted and result.message == "approved"
    status = await world.result(handle)

    assert status.outcome is Outcome.REVERTED
    assert world.writes() == [10, 50, 100]
    assert world.flags.state["flag:flagd:chat-model"] == 100
    assert [s.status for s in status.stages] == ["verified", "verified", "verified"]
    assert status.detected_at and status.decided_at and status.first_revert_at and status.full_revert_at
    # three polls at one-minute intervals make the breach sustained; stages bake five minutes each
    assert about(status.detected_at - status.started_at, timedelta(minutes=2))
    assert about(status.full_revert_at - status.first_revert_at, timedelta(minutes=10))
    assert [d.user for d in status.decisions] == ["U_SAFETY"]
    assert [c.name for c in status.integrity] == ["readback"] and status.integrity[0].passed
    kinds = [e.kind for e in status.audit]
    for kind in ("opened", "alert", "poll", "confirmed", "gate_opened", "decision", "decided", "stage_applied",
                 "integrity_check", "closed"):
        assert kind in kinds, kind
    # the idempotency key names the workflow, the step and the stage
    assert [w.idempotency_key.rsplit(":", 2)[-2:] for w in world.flags.writes] == [
        ["revert", "0"], ["revert", "1"], ["revert", "2"]]
    # the audit trail reached the incident store, and the chat got the decision request and the outcome
    stored = await world.store.events(status.incident_id)
    assert [e.seq for e in stored if e.seq < 1_000_000] == [e.seq for e in status.audit]
    sent = [n.kind.value for n, _ in world.chat.sent]
    assert sent[:2] == ["opened", "decision_request"] and sent[-1] == "completed"


async def test_unauthorized_stale_and_repeated_decisions_are_refused(world: World) -> None:
    world.signals.timeline = SUSTAINED
    handle = await world.start(snapshot(decision={"quorum": 2}))
    await world.at_phase(handle, Phase.AWAITING_DECISION)

    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(RollbackWorkflow.decide, approve("U_INTERN"))
    assert "U_INTERN holds none of the roles that may decide here (on_call, safety_lead)" in str(refused.value.cause)
    with pytest.raises(WorkflowUpdateFailedError) as stale:
        await handle.execute_update(RollbackWorkflow.decide, approve("U_ONCALL", gate_id="gate-0"))
    assert "stale decision" in str(stale.value.cause)

    # a member of an authorized user group may decide
    first = await handle.execute_update(RollbackWorkflow.decide, approve("U_SOMEONE", groups=["S_SAFETY"]))
    assert first.message == "approval recorded; still needed: 1 more from on_call, safety_lead"
    with pytest.raises(WorkflowUpdateFailedError) as repeated:
        await handle.execute_update(RollbackWorkflow.decide, approve("U_SOMEONE", groups=["S_SAFETY"]))
    assert "already decided" in str(repeated.value.cause)
    status = await world.status(handle)
    assert status.phase is Phase.AWAITING_DECISION and status.gate and status.gate.approvals == ["U_SOMEONE"]
    assert world.flags.writes == []

    second = await handle.execute_update(RollbackWorkflow.decide, approve("U_ONCALL"))
    assert second.message == "approved" and second.approvals == 2
    status = await world.result(handle)
    assert status.outcome is Outcome.REVERTED
    assert [d.user for d in status.decisions] == ["U_SOMEONE", "U_ONCALL"]


async def test_refusals_reported_by_clients_land_in_the_audit(world: World) -> None:
    from workflows.messages import DecisionRefusal

    world.signals.timeline = SUSTAINED
    handle = await world.start(snapshot())
    await world.at_phase(handle, Phase.AWAITING_DECISION)
    await handle.signal(RollbackWorkflow.decision_refused, DecisionRefusal(
        user="U_INTERN", verdict=Verdict.APPROVE, via="slack", refusal="holds none of the roles"))
    await handle.execute_update(RollbackWorkflow.decide, approve("U_ONCALL"))
    status = await world.result(handle)
    refused = [e for e in status.audit if e.kind == "decision_refused"]
    assert refused and refused[0].actor == "U_INTERN" and refused[0].data["via"] == "slack"


async def test_rejection_ends_without_touching_users(world: World) -> None:
    world.signals.timeline = SUSTAINED
    handle = await world.start(snapshot())
    await world.at_phase(handle, Phase.AWAITING_DECISION)
    await handle.execute_update(RollbackWorkflow.decide, DecisionRequest(
        user="U_ONCALL", verdict=Verdict.REJECT, reason="known eval artefact"))
    status = await world.result(handle)
    assert status.outcome is Outcome.REJECTED
    assert "U_ONCALL rejected: known eval artefact" in closing(status)
    assert world.flags.writes == []


async def test_timeout_escalates_then_applies_the_default(world: World) -> None:
    world.signals.timeline = SUSTAINED
    handle = await world.start(snapshot())
    status = await world.result(handle)
    assert status.outcome is Outcome.REVERTED
    escalated = next(e for e in status.audit if e.kind == "escalated")
    assert escalated.data["mentions"] == ["U_MANAGER"]
    timeout = next(e for e in status.audit if e.kind == "gate_timeout")
    assert timeout.data["default_action"] == "revert"
    # 15 minutes for the approvers, then 10 for the escalation
    assert about(timeout.at - escalated.at, timedelta(minutes=10))
    assert about(status.decided_at - status.detected_at, timedelta(minutes=25))
    escalation_messages = [n for n, _ in world.chat.sent if n.kind.value == "escalated"]
    assert escalation_messages and escalation_messages[0].channel == "#ml-escalations"
    assert escalation_messages[0].context["mentions"] == ["U_MANAGER"]


async def test_escalated_role_may_decide_and_default_dismiss(world: World) -> None:
    world.signals.timeline = SUSTAINED
    handle = await world.start(snapshot(decision={"default_action": "dismiss"}))
    await world.at_phase(handle, Phase.ESCALATED)
    await handle.execute_update(RollbackWorkflow.decide, approve("U_MANAGER"))
    assert (await world.result(handle)).outcome is Outcome.REVERTED

    dismissed = await world.start(snapshot(decision={"default_action": "dismiss"}), release="chat-v3")
    status = await world.result(dismissed)
    assert status.outcome is Outcome.DISMISSED
    assert "default is to dismiss" in closing(status)


async def test_break_glass_approves_critical_alerts_automatically(world: World) -> None:
    world.signals.timeline = SUSTAINED
    critical = Alert(source="pagerduty", name="GenAIQualityDegraded", fingerprint="pd-1", severity="critical")
    handle = await world.start(snapshot(decision={"break_glass": {"min_severity": "critical"}}), alert=critical)
    status = await world.result(handle)
    assert status.outcome is Outcome.REVERTED
    assert not any(e.kind == "gate_opened" for e in status.audit)
    assert "break-glass: alert severity critical" in next(e for e in status.audit if e.kind == "decided").message

    # a warning does not break the glass: the gate opens
    warning = Alert(source="pagerduty", name="GenAIQualityDegraded", fingerprint="pd-2", severity="warning")
    gated = await world.start(snapshot(decision={"break_glass": {"min_severity": "critical"}}), alert=warning,
                              release="chat-v3")
    await world.at_phase(gated, Phase.AWAITING_DECISION)
    await gated.execute_update(RollbackWorkflow.operate, act("abort", "U_ONCALL", "test over"))
    assert (await world.result(gated)).outcome is Outcome.ABORTED


async def test_dry_run_records_what_it_would_do_and_touches_nothing(world: World) -> None:
    world.signals.timeline = SUSTAINED
    handle = await world.start(snapshot(decision={"mode": "dry_run"}))
    status = await world.result(handle)
    assert status.outcome is Outcome.WOULD_REVERT
    assert "would revert flag:flagd:chat-model in stages 10% -> 50% -> 100%" in closing(status)
    assert world.flags.writes == []


async def test_stage_verification_failure_halts_at_that_stage(world: World) -> None:
    world.signals.timeline = SUSTAINED
    world.signals.phases = {"verify": {"latency_p95": [4.2]}}
    handle = await world.start(snapshot(decision={"mode": "automatic"}))
    status = await world.result(handle)
    assert status.outcome is Outcome.HALTED
    assert world.writes() == [10]
    assert [s.status for s in status.stages] == ["failed", "pending", "pending"]
    assert "stage 1 (10%) failed verification: latency_p95=4.2" in closing(status)
    assert [n.kind.value for n, _ in world.chat.sent][-1] == "halted"


async def test_stage_failure_can_revert_everyone_instead(world: World) -> None:
    world.signals.timeline = SUSTAINED
    world.signals.phases = {"verify": {"latency_p95": [4.2]}}
    handle = await world.start(snapshot(decision={"mode": "automatic"},
                                        rollback={"on_stage_failure": "revert_all"}))
    status = await world.result(handle)
    assert status.outcome is Outcome.REVERTED
    assert world.writes() == [10, 100]
    assert [s.status for s in status.stages] == ["failed", "skipped", "skipped"]


async def test_revert_all_now_skips_the_remaining_stages(world: World) -> None:
    world.signals.timeline = SUSTAINED
    handle = await world.start(snapshot(decision={"mode": "automatic"}))
    await world.until(handle, lambda s: s.previous_percent == 10)
    await handle.execute_update(RollbackWorkflow.operate, act("revert_now", "U_SAFETY", "users complaining"))
    status = await world.result(handle)
    assert status.outcome is Outcome.REVERTED
    assert world.writes() == [10, 100]
    assert any(e.kind == "revert_all_requested" and e.actor == "U_SAFETY" for e in status.audit)


async def test_revert_all_now_at_the_gate_is_an_emergency_decision(world: World) -> None:
    world.signals.timeline = SUSTAINED
    handle = await world.start(snapshot())
    await world.at_phase(handle, Phase.AWAITING_DECISION)
    await handle.execute_update(RollbackWorkflow.operate, act("revert_now", "U_SAFETY", "page from legal"))
    status = await world.result(handle)
    assert world.writes() == [100]
    assert status.outcome is Outcome.REVERTED


async def test_abort_stops_further_stages_and_keeps_what_was_applied(world: World) -> None:
    world.signals.timeline = SUSTAINED
    handle = await world.start(snapshot(decision={"mode": "automatic"}))
    await world.until(handle, lambda s: s.previous_percent == 10)
    await handle.execute_update(RollbackWorkflow.operate, act("abort", "U_ONCALL", "false alarm, metric bug"))
    status = await world.result(handle)
    assert status.outcome is Outcome.ABORTED
    assert world.writes() == [10]
    closed = next(e for e in status.audit if e.kind == "closed")
    assert closed.actor == "U_ONCALL" and "metric bug" in closed.message


async def test_pause_holds_the_next_stage_until_resumed(world: World) -> None:
    world.signals.timeline = SUSTAINED
    handle = await world.start(snapshot(decision={"mode": "automatic"}))
    await world.until(handle, lambda s: s.previous_percent == 10)
    await handle.execute_update(RollbackWorkflow.operate, act("pause", "U_ONCALL", "checking capacity"))
    status = await world.until(handle, lambda s: s.phase is Phase.PAUSED)
    await world.env.sleep(timedelta(hours=1))
    assert world.writes() == [10] and (await world.status(handle)).paused
    await handle.execute_update(RollbackWorkflow.operate, act("resume", "U_ONCALL"))
    status = await world.result(handle)
    assert world.writes() == [10, 50, 100] and status.outcome is Outcome.REVERTED


async def test_fairness_breach_freezes_for_investigation_instead_of_reverting(world: World) -> None:
    world.signals.timeline = {"hallucinations": [5], "latency_p95": [1.0], "fairness_gap": [0.25]}
    handle = await world.start(snapshot(confirmation={"rule": None}, decision={"default_action": "revert"}))
    # the phase changes before the investigation gate opens (one workflow task apart): wait for the gate
    status = await world.until(handle, lambda s: s.phase is Phase.INVESTIGATING and s.gate is not None)
    assert any(e.kind == "frozen" for e in status.audit)
    assert status.gate and status.gate.purpose == "investigation"
    # timeouts never turn a fairness investigation into an automatic revert
    await world.env.sleep(timedelta(days=2))
    assert world.flags.writes == []
    assert (await world.status(handle)).gate is not None
    await handle.execute_update(RollbackWorkflow.decide, DecisionRequest(
        user="U_SAFETY", verdict=Verdict.REJECT, reason="gap is within the audited tolerance"))
    status = await world.result(handle)
    assert status.outcome is Outcome.PAUSED
    assert world.flags.writes == []
    assert [n.kind.value for n, _ in world.chat.sent].count("investigation") == 1


async def test_duplicate_alerts_join_one_incident(world: World) -> None:
    world.signals.timeline = SUSTAINED
    snap = snapshot()
    wf_id = incident_id(snap.playbook.name, "chat-v9")
    handles = []
    for n in range(5):
        alert = Alert(source="alertmanager", name="GenAIQualityDegraded", fingerprint=f"fp-{n % 2}")
        handles.append(await world.env.client.start_workflow(
            RollbackWorkflow.run, __import__("workflows.messages").messages.RollbackInput(
                snapshot=snap, release="chat-v9"),
            id=wf_id, task_queue=world.task_queue, start_signal="alerts",
            start_signal_args=[AlertBatch(alerts=[alert])]))
    world.handles.append(handles[0])
    assert len({h.result_run_id for h in handles}) == 1
    status = await world.status(handles[0])
    assert [a.fingerprint for a in status.alerts] == ["fp-0", "fp-1"]  # repeats of the same alert are ignored
    await handles[0].execute_update(RollbackWorkflow.operate, act("abort", "U_ONCALL"))
    await world.result(handles[0])


async def test_an_activity_retried_after_a_crash_applies_once(time_skipping_env, tmp_path) -> None:
    class CrashAfterWrite(ScriptedFlagProvider):
        """Writes, then dies before answering: the worker 'crashed' mid-activity the first time."""

        crashed = False

        async def set_previous_percent(self, target, percent, idempotency_key):
            applied = await super().set_previous_percent(target, percent, idempotency_key)
            if not self.crashed:
                CrashAfterWrite.crashed = True
                raise RuntimeError("worker lost after writing")
            return applied

    flags = CrashAfterWrite()
    made = await make_world(time_skipping_env, tmp_path, flags=flags)
    made.world.signals.timeline = SUSTAINED
    async with Worker(time_skipping_env.client, task_queue=made.world.task_queue, workflows=WORKFLOWS,
                      activities=made.activities.all()):
        handle = await made.world.start(snapshot(decision={"mode": "automatic"}))
        status = await made.world.result(handle)
        await made.world.terminate_leftovers()
    assert status.outcome is Outcome.REVERTED
    assert [w.percent for w in flags.writes] == [10, 50, 100]  # the retried first stage wrote nothing new
    first = next(e for e in status.audit if e.kind == "stage_applied")
    # Issue 13, defect 6: this incident wrote it, one attempt earlier; the audit used to say "nothing written".
    assert "nothing written" not in first.message
    assert "written by attempt 1 of this step; attempt 2 found it applied" in first.message


async def test_a_revert_never_moves_users_back_toward_the_suspect_release(world: World) -> None:
    """A new incident for a release already half reverted continues from there, never back down to 10%."""
    world.signals.timeline = SUSTAINED
    world.flags.state["flag:flagd:chat-model"] = 50
    handle = await world.start(snapshot(decision={"mode": "automatic"}))
    status = await world.result(handle)
    assert status.outcome is Outcome.REVERTED
    assert world.writes() == [100]
    assert [s.status for s in status.stages] == ["skipped", "skipped", "verified"]
    assert "stage 1 (10%) skipped: 50% of users are already on the previous model" in next(
        e.message for e in status.audit if e.kind == "stage_skipped")


async def test_a_group_that_is_not_on_the_gate_gives_no_right_to_decide(world: World) -> None:
    # eng_manager has no group; only S_SAFETY (safety_lead) is on the gate
    world.signals.timeline = SUSTAINED
    handle = await world.start(snapshot(roles={"marketing": {"users": ["U_MARKETER"], "groups": ["S_MARKETING"]}}))
    gate = (await world.at_phase(handle, Phase.AWAITING_DECISION)).gate
    assert gate is not None and gate.groups == ["S_SAFETY"]
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(RollbackWorkflow.decide, approve("U_SOMEONE", groups=["S_MARKETING", "S_ALL"]))
    assert "U_SOMEONE holds none of the roles that may decide here" in str(refused.value.cause)
    status = await world.status(handle)
    assert status.phase is Phase.AWAITING_DECISION and status.gate and status.gate.approvals == []
    assert world.flags.writes == []


async def test_an_alert_that_resolved_and_fires_again_keeps_the_incident_going(world: World) -> None:
    first_start = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
    world.signals.timeline = SUSTAINED
    firing = Alert(source="alertmanager", name="GenAIQualityDegraded", fingerprint="fp-1", starts_at=first_start,
                   labels={"alertname": "GenAIQualityDegraded", "release": "chat-v2"})
    handle = await world.start(snapshot(), alert=firing)
    await world.until(handle, lambda s: any(e.kind == "poll" for e in s.audit))
    # Alertmanager: the alert resolved, then the same label set fired again: same fingerprint, a new startsAt
    resolved = firing.model_copy(update={"status": AlertStatus.RESOLVED})
    again = firing.model_copy(update={"starts_at": first_start + timedelta(minutes=3)})
    await handle.signal(RollbackWorkflow.alerts, AlertBatch(alerts=[resolved, again]))
    await handle.signal(RollbackWorkflow.alerts, AlertBatch(alerts=[again]))  # a repeat notification: a duplicate
    status = await world.at_phase(handle, Phase.AWAITING_DECISION)
    assert [(a.status, a.starts_at) for a in status.alerts] == [
        (AlertStatus.FIRING, first_start), (AlertStatus.RESOLVED, first_start),
        (AlertStatus.FIRING, first_start + timedelta(minutes=3))]
    assert status.outcome is None  # not dismissed as transient: the alert is firing again


async def test_a_reposted_incident_message_is_the_one_edited_from_then_on(world: World) -> None:
    # Someone deleted the incident's message: the chat notifier posts a fresh one (Slack: message_not_found ->
    # chat.postMessage) and returns its ref. Later news must edit that new message, not post one each time.
    world.signals.timeline = SUSTAINED
    original = world.chat.send

    async def first_message_deleted(note: Notification, text: str) -> MessageRef:
        if note.thread_ref == "1":
            return MessageRef(channel=note.channel, ref="reposted", text=text)
        return await original(note, text)

    world.chat.send = first_message_deleted  # type: ignore[method-assign]
    handle = await world.start(snapshot(decision={"mode": "automatic"}))
    assert (await world.result(handle)).outcome is Outcome.REVERTED
    refs = [note.thread_ref for note, _ in world.chat.sent if note.channel == "#ml-incidents"]
    assert refs[0] is None and len(refs) > 2 and set(refs[1:]) == {"reposted"}, refs


# --- decision rights -----------------------------------------------------------------------------------------

PER_ROLE = {"quorum": 2, "require": {"on_call": 1, "safety_lead": 1}}


async def test_per_role_quorum_needs_each_role_and_distinct_people(world: World) -> None:
    world.signals.timeline = SUSTAINED
    handle = await world.start(snapshot(roles={"safety_lead": {"users": ["U_SAFETY", "U_SAFETY2", "U_BOTH"]},
                                               "on_call": {"users": ["U_ONCALL", "U_BOTH"]}},
                                        decision=PER_ROLE))
    await world.at_phase(handle, Phase.AWAITING_DECISION)
    first = await handle.execute_update(RollbackWorkflow.decide, approve("U_SAFETY"))
    assert first.message == "approval recorded; still needed: 1 on_call"
    # a second safety lead cannot stand in for the on-call engineer
    with pytest.raises(WorkflowUpdateFailedError) as wrong_role:
        await handle.execute_update(RollbackWorkflow.decide, approve("U_SAFETY2"))
    assert "U_SAFETY2's approval cannot count: the gate still needs 1 on_call" in str(wrong_role.value.cause)
    assert (await world.status(handle)).gate.approvals == ["U_SAFETY"]
    assert world.flags.writes == []
    # someone holding both roles fills the on-call seat (and counts once)
    second = await handle.execute_update(RollbackWorkflow.decide, approve("U_BOTH"))
    assert second.message == "approved"
    status = await world.result(handle)
    assert status.outcome is Outcome.REVERTED
    assert "approved by U_SAFETY, U_BOTH" in next(e.message for e in status.audit if e.kind == "decided")


async def test_one_person_holding_two_roles_is_not_a_quorum(world: World) -> None:
    world.signals.timeline = SUSTAINED
    handle = await world.start(snapshot(roles={"safety_lead": {"users": ["U_SAFETY", "U_BOTH"]},
                                               "on_call": {"users": ["U_ONCALL", "U_BOTH"]}},
                                        decision=PER_ROLE))
    await world.at_phase(handle, Phase.AWAITING_DECISION)
    result = await handle.execute_update(RollbackWorkflow.decide, approve("U_BOTH"))
    assert result.message.startswith("approval recorded; still needed: 1 ")
    with pytest.raises(WorkflowUpdateFailedError) as repeated:
        await handle.execute_update(RollbackWorkflow.decide, approve("U_BOTH"))
    assert "already decided" in str(repeated.value.cause)
    assert (await world.status(handle)).phase is Phase.AWAITING_DECISION
    await handle.execute_update(RollbackWorkflow.operate, act("abort", "U_ONCALL", "test over"))
    assert (await world.result(handle)).outcome is Outcome.ABORTED


async def test_actions_outside_the_gate_need_a_role(world: World) -> None:
    world.signals.timeline = SUSTAINED
    handle = await world.start(snapshot(decision={**PER_ROLE, "actions": {"revert_now": ["safety_lead"],
                                                                           "break_glass": ["eng_manager"]}}))
    await world.at_phase(handle, Phase.AWAITING_DECISION)
    for action in ("revert_now", "abort", "pause", "resume"):
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(RollbackWorkflow.operate, act(action, "intern", "looks bad"))
        assert f"intern holds none of the roles that may {action} here" in str(refused.value.cause)
    with pytest.raises(WorkflowUpdateFailedError) as not_listed:
        await handle.execute_update(RollbackWorkflow.operate, act("revert_now", "U_ONCALL", "not my call"))
    assert "may revert_now here (safety_lead, eng_manager)" in str(not_listed.value.cause)
    with pytest.raises(WorkflowUpdateFailedError) as no_reason:
        await handle.execute_update(RollbackWorkflow.operate, act("revert_now", "U_MANAGER"))
    assert "only as break-glass (eng_manager), which needs a reason" in str(no_reason.value.cause)
    # the raw signal (what a client with Temporal access could send) is refused and recorded, not obeyed
    await handle.signal(RollbackWorkflow.revert_all_now, Command(by="intern", reason="skip the gate"))
    status = await world.status(handle)
    assert status.phase is Phase.AWAITING_DECISION and world.flags.writes == []
    assert any(e.kind == "action_refused" and e.actor == "intern" for e in status.audit)

    glass = await handle.execute_update(RollbackWorkflow.operate,
                                        act("revert_now", "U_MANAGER", "legal asked to stop exposure now"))
    assert glass.break_glass and "break-glass" in glass.message
    status = await world.result(handle)
    assert status.outcome is Outcome.REVERTED and world.writes() == [100]
    flagged = next(e for e in status.audit if e.kind == "break_glass")
    assert flagged.actor == "U_MANAGER" and "legal asked" in flagged.message


# --- one incident per target; the alerted release must be the one served ---------------------------------------


async def test_a_second_incident_on_a_held_flag_waits_and_never_writes_it(world: World) -> None:
    world.signals.timeline = SUSTAINED
    automatic = snapshot(decision={"mode": "automatic"})
    first = await world.start(automatic, release="chat-v3.0.0")
    await world.until(first, lambda s: s.previous_percent == 10)
    second = await world.start(automatic, release="chat-v9.9.9")
    waiting = await world.until(second, lambda s: any(e.kind == "target_held" for e in s.audit))
    assert waiting.gate is not None and waiting.gate.purpose == f"target held by {first.id}"
    held = next(e for e in waiting.audit if e.kind == "target_held")
    assert held.data["holder"] == first.id and "nothing is written meanwhile" in held.message
    # nobody can approve their way past a hold
    with pytest.raises(WorkflowUpdateFailedError):
        await second.execute_update(RollbackWorkflow.decide, approve("U_SAFETY"))
    assert all(w.idempotency_key.startswith(first.id) for w in world.flags.writes)
    assert (await world.result(first)).outcome is Outcome.REVERTED
    status = await world.result(second)  # the first let go: the second goes on, and finds everyone already back
    assert all(w.idempotency_key.startswith(first.id) for w in world.flags.writes)
    assert [s.status for s in status.stages] == ["skipped", "skipped", "skipped"]
    assert [e.kind for e in (await world.result(first)).audit].count("targets_released") == 1


async def test_a_playbook_may_join_the_incident_that_holds_the_flag(world: World) -> None:
    world.signals.timeline = SUSTAINED
    first = await world.start(snapshot(decision={"mode": "automatic"}), release="chat-v3.0.0")
    await world.until(first, lambda s: s.previous_percent == 10)
    joining = await world.start(snapshot(decision={"mode": "automatic"}, rollback={"on_target_held": "join"}),
                                release="chat-v3.0.1")
    status = await world.result(joining)
    assert status.outcome is Outcome.DISMISSED and f"joined incident {first.id}" in closing(status)
    await world.result(first)


async def test_a_release_that_is_not_the_served_candidate_stops_at_a_gate(world: World) -> None:
    world.signals.timeline = SUSTAINED
    world.flags.served["flag:flagd:chat-model"] = "chat-v3.0.0"
    handle = await world.start(snapshot(decision={"mode": "automatic"}), release="chat-v9.9.9")
    status = await world.until(handle, lambda s: s.gate is not None and s.gate.purpose == "release_mismatch")
    mismatch = next(e for e in status.audit if e.kind == "release_mismatch")
    assert "the alert names release chat-v9.9.9, but flag:flagd:chat-model serves 'chat-v3.0.0'" in mismatch.message
    assert world.flags.writes == []
    await handle.execute_update(RollbackWorkflow.decide, DecisionRequest(
        user="U_SAFETY", verdict=Verdict.REJECT, reason="chat-v9.9.9 was never released"))
    status = await world.result(handle)
    assert status.outcome is Outcome.REJECTED and world.flags.writes == []

    served = await world.start(snapshot(decision={"mode": "automatic"}), release="chat-v3.0.0")
    done = await world.result(served)
    assert done.outcome is Outcome.REVERTED
    assert any(e.kind == "served_release_checked" for e in done.audit)


async def test_launchdarkly_and_kserve_targets_refuse_to_move_users_for_a_release_they_do_not_serve(
        time_skipping_env: WorkflowEnvironment, tmp_path: Path) -> None:
    """The served-release check over real adapters (the LaunchDarkly and Kubernetes API fakes), not the script."""
    with FakeLaunchDarkly() as ld, FakeKubernetes() as k8s:
        ld.add_flag("default", "chat-model", [("previous", {"release": "chat-v2.4.0"}),
                                              ("candidate", {"release": "chat-v3.0.0"})])
        k8s.add_inference_service("ml", "chat-llm", previous="chat-llm-predictor-00001",
                                  latest="chat-llm-predictor-00002",
                                  labels={"app.kubernetes.io/version": "chat-v3.0.0"})
        async with httpx.AsyncClient(timeout=5) as client:
            flags = FlagRouter({
                "launchdarkly": LaunchDarklyProvider(ld.token, url=ld.url, client=client),
                "kserve": KServeProvider(k8s.url, k8s.token, client=client, poll_interval=0.01, settle_timeout=5),
            })
            made = await make_world(time_skipping_env, tmp_path, flags=flags)
            made.world.signals.timeline = SUSTAINED
            targets = {"targets": [{"kind": "flag", "provider": "launchdarkly", "key": "chat-model"},
                                   {"kind": "serving", "provider": "kserve", "key": "chat-llm", "namespace": "ml"}]}
            async with Worker(time_skipping_env.client, task_queue=made.world.task_queue, workflows=WORKFLOWS,
                              activities=made.activities.all()):
                wrong = await made.world.start(snapshot(decision={"mode": "automatic"}, rollback=targets),
                                               release="chat-v9.9.9")
                status = await made.world.until(
                    wrong, lambda s: s.gate is not None and s.gate.purpose == "release_mismatch")
                mismatch = next(e for e in status.audit if e.kind == "release_mismatch")
                assert "variation 'candidate' serves 'chat-v3.0.0'" in mismatch.message
                assert "label app.kubernetes.io/version is 'chat-v3.0.0'" in mismatch.message
                assert {s.target: s.release for s in status.served} == {
                    "flag:launchdarkly:chat-model": "chat-v3.0.0", "serving:kserve:chat-llm": "chat-v3.0.0"}
                assert ld.patches_applied == 0 and k8s.patches_applied == 0  # no user moved
                await wrong.execute_update(RollbackWorkflow.decide, DecisionRequest(
                    user="U_SAFETY", verdict=Verdict.REJECT, reason="chat-v9.9.9 was never released"))
                assert (await made.world.result(wrong)).outcome is Outcome.REJECTED
                right = await made.world.start(snapshot(decision={"mode": "automatic"}, rollback=targets),
                                               release="chat-v3.0.0")
                done = await made.world.result(right)
                await made.world.terminate_leftovers()
    assert done.outcome is Outcome.REVERTED and any(e.kind == "served_release_checked" for e in done.audit)
    assert ld.patches_applied > 0 and k8s.patches_applied > 0


def _scheduled_per_task(history: object) -> list[list[str]]:
    """The activities each workflow task completion scheduled, in order."""
    scheduled: list[list[str]] = []
    for event in history.events:  # type: ignore[attr-defined]
        if event.HasField("workflow_task_completed_event_attributes"):
            scheduled.append([])
        elif event.HasField("activity_task_scheduled_event_attributes"):
            scheduled[-1].append(event.activity_task_scheduled_event_attributes.activity_type.name)
    return scheduled


async def test_an_automatic_revert_writes_first_and_still_audits_and_announces_everything(world: World) -> None:
    """Alert to first cohort in two activities, as the engine's floor: the first workflow task holds the targets
    and nothing else; the next schedules the first write and nothing else (one activity checks the served
    release, reads the split and compares-and-sets against it: no separate check or read, no audit or chat
    competing with it). Everything recorded on the way (alert, opened, confirmed, decided, held, checked) still
    reaches the store and the chat, in order, right after."""
    world.signals.timeline = SUSTAINED
    world.flags.served = {"flag:flagd:chat-model": "r1"}
    handle = await world.start(snapshot(confirmation={"window": 0}, decision={"mode": "automatic"}), release="r1")
    status = await world.result(handle)
    assert status.outcome is Outcome.REVERTED
    assert world.writes() == [10, 50, 100]

    scheduled = _scheduled_per_task(await handle.fetch_history())
    assert scheduled[0] == ["hold_targets"]  # nothing competing with it
    assert scheduled[1] == ["apply_cohort"]  # the first write, alone
    # the held audit and messages go out right after: one audit batch, and the messages in one activity
    assert scheduled[2][:2] == ["record_audit", "notify_batch"]
    assert "notify" not in [name for task in scheduled for name in task]
    assert not {"read_cohort", "served_release"} & set(scheduled[0] + scheduled[1] + scheduled[2])

    history = await handle.fetch_history()
    first_write = next(e.event_id for e in history.events if e.HasField("activity_task_scheduled_event_attributes")
                       and e.activity_task_scheduled_event_attributes.activity_type.name == "apply_cohort")
    on_the_way = [e for e in history.events if e.event_id < first_write]
    # one patch marker (each also upserts TemporalChangeVersion: a history event and a visibility write)
    assert sum(e.HasField("marker_recorded_event_attributes") for e in on_the_way) == 1
    assert sum(e.HasField("upsert_workflow_search_attributes_event_attributes") for e in on_the_way) == 1

    stored = [e.kind for e in await world.store.events(handle.id)]
    assert stored[:7] == ["alert", "opened", "confirmed", "decided", "targets_held", "served_release_checked",
                          "stage_applied"]
    assert stored[:len(status.audit)] == [e.kind for e in status.audit]  # the review adds its own after
    applied = next(e for e in status.audit if e.kind == "stage_applied")
    assert applied.data["idempotency_key"] == f"{handle.id}:revert:0" and applied.data["read_back"]
    sent = [n for n, _ in world.chat.sent if n.incident_id == handle.id]
    assert [n.kind.value for n in sent[:3]] == ["opened", "decided", "stage"] and sent[-1].kind.value == "completed"
    # the incident's message is posted once and edited in place by the news after it, batched or not
    assert sent[0].thread_ref is None and {n.thread_ref for n in sent[1:]} == {"1"}
    assert [s.status for s in status.stages] == ["verified", "verified", "verified"]
    await world.terminate_leftovers()


async def test_messages_that_did_not_go_out_are_on_the_audit_trail_each_by_name(world: World) -> None:
    """The chat refuses the decided message for good and is down when the stage news goes out: the incident
    still reverts, the opened message went out once, and the audit names exactly the two that did not."""
    world.signals.timeline = SUSTAINED
    send = world.chat.send
    attempts: list[str] = []

    async def chat(note: Notification, text: str) -> MessageRef:
        attempts.append(note.kind.value)
        if note.kind.value == "decided":
            raise ApplicationError("slack: not_in_channel", non_retryable=True)
        if note.kind.value == "stage":
            raise ApplicationError("slack: HTTP 503")
        return await send(note, text)

    world.chat.send = chat  # type: ignore[method-assign]
    handle = await world.start(snapshot(confirmation={"window": 0}, decision={"mode": "automatic"}))
    status = await world.result(handle)
    assert status.outcome is Outcome.REVERTED and world.writes() == [10, 50, 100]
    failed = [e.message for e in status.audit if e.kind == "notification_failed"]
    assert failed[:2] == ["could not send the decided message to #ml-incidents: slack: not_in_channel",
                          "could not send the stage message to #ml-incidents: slack: HTTP 503"]
    assert attempts[:2] == ["opened", "decided"] and attempts.count("opened") == 1  # resumed, never re-sent
    assert attempts[2:7] == ["stage"] * 5  # the evidence retry policy: 5 attempts, then recorded
    await world.terminate_leftovers()


async def test_the_first_write_skips_what_an_earlier_incident_already_reverted(world: World) -> None:
    """The first write reads the split itself: at 60% already back, the 10% and 50% stages write nothing and
    the revert continues at 100% (compare-and-set against the 60% it read), with the skips on the audit trail
    and no stage announced that did not happen."""
    world.signals.timeline = SUSTAINED
    world.flags.state["flag:flagd:chat-model"] = 60
    handle = await world.start(snapshot(confirmation={"window": 0}, decision={"mode": "automatic"}))
    status = await world.result(handle)
    assert status.outcome is Outcome.REVERTED
    assert world.writes() == [100]
    assert [s.status for s in status.stages] == ["skipped", "skipped", "verified"]
    skipped = [e.message for e in status.audit if e.kind == "stage_skipped"]
    assert skipped == ["stage 1 (10%) skipped: 60% of users are already on the previous model",
                       "stage 2 (50%) skipped: 60% of users are already on the previous model"]
    stages = [n.context["stage"] for n, _ in world.chat.sent if n.incident_id == handle.id and n.kind.value == "stage"]
    assert stages == ["stage 3 (100%)"]
    assert "drift_detected" not in [e.kind for e in status.audit]
    await world.terminate_leftovers()


async def test_the_first_write_checks_the_served_release_and_writes_nothing_until_a_person_decides(
        world: World) -> None:
    """The served-release check lives in the first write: a flag serving another release as the candidate is
    neither read nor written; the incident stops at a gate with the evidence, and writes once approved."""
    world.signals.timeline = SUSTAINED
    world.flags.served = {"flag:flagd:chat-model": "someone-else-v9"}
    handle = await world.start(snapshot(confirmation={"window": 0}, decision={"mode": "automatic"}),
                               release="mismatch-v1")
    status = await world.at_phase(handle, Phase.AWAITING_DECISION)
    assert status.gate is not None and status.gate.purpose == "release_mismatch"
    assert world.writes() == []
    mismatch = next(e for e in status.audit if e.kind == "release_mismatch")
    assert "someone-else-v9" in mismatch.message and "mismatch-v1" in mismatch.message
    await handle.execute_update(RollbackWorkflow.decide, DecisionRequest(
        user="U_SAFETY", verdict=Verdict.APPROVE, reason="the flag names the release wrongly; revert anyway"))
    status = await world.result(handle)
    assert status.outcome is Outcome.REVERTED and world.writes() == [10, 50, 100]
    kinds = [e.kind for e in status.audit]
    assert kinds.index("release_mismatch") < kinds.index("stage_applied")
    await world.terminate_leftovers()
