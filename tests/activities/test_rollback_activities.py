"""The Temporal activities over real adapters (flagd file, SQLite store) and scripted ones for faults."""

from __future__ import annotations

import copy
import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.chat import LogNotifier
from activities.contracts import (
    AuditBatch,
    AuditEvent,
    CohortChange,
    IncidentRecord,
    IntegrityRequest,
    Measurement,
    MessageKind,
    MessageRef,
    Notification,
    NotificationBatch,
    PollRequest,
    ReadbackRequest,
    ReviewRequest,
    SignalObservation,
    TargetHold,
)
from activities.flagd import FlagdFileProvider
from activities.rollback import RollbackActivities
from activities.routing import FlagRouter, SignalRouter, hold_key
from activities.scripted import ScriptedFlagProvider, ScriptedSignalSource
from activities.store import SqliteIncidentStore
from playbooks.models import ReadbackCheck, Signal, Target

TARGETS = [Target(key="chat-model"), Target(key="chat-router")]
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def signal(name: str, no_data: str = "skip", source_type: str = "scripted") -> Signal:
    extra = {"query": "up"} if source_type == "prometheus" else {}
    return Signal.model_validate({"name": name, "category": "model_quality", "no_data": no_data,
                                  "source": {"type": source_type, **extra}, "threshold": {"value": 25}})


class FailingSource:
    """A signal source that is down (or misconfigured)."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def observe(self, signal: Signal, request: PollRequest) -> SignalObservation:
        raise self.error


@pytest.fixture
async def flags(tmp_path: Path) -> FlagdFileProvider:
    provider = FlagdFileProvider(tmp_path / "flags.json")
    for target in TARGETS:
        await provider.ensure_flag(target)
    return provider


def activities(tmp_path: Path, flags: Any = None, signals: Any = None) -> RollbackActivities:
    return RollbackActivities(
        flags=flags if flags is not None else ScriptedFlagProvider(),
        signals=signals if signals is not None else ScriptedSignalSource({}),
        chat=LogNotifier(),
        store=SqliteIncidentStore(tmp_path / "unship.db"),
        review_dir=tmp_path / "reviews",
    )


def test_all_lists_the_activities_the_workflows_call(tmp_path: Path) -> None:
    names = {activity._Definition.must_from_callable(fn).name for fn in activities(tmp_path).all()}
    assert names == {"poll_signals", "apply_cohort", "read_cohort", "check_integrity", "notify", "notify_batch",
                     "record_audit",
                     "write_review", "hold_targets", "release_targets", "served_release", "count_outputs",
                     "purge_outputs", "draft_report", "create_tasks", "sync_tasks", "learn"}


async def test_poll_signals_measures_all_and_a_failing_source_is_not_measured_bad(tmp_path: Path) -> None:
    router = SignalRouter({
        "scripted": ScriptedSignalSource({"hallucinations": [40]}),
        "http": FailingSource(ApplicationError("metrics API: HTTP 503; will retry", non_retryable=False)),
        "prometheus": FailingSource(RuntimeError("socket closed")),
    })
    acts = activities(tmp_path, signals=router)
    http_signal = Signal.model_validate({"name": "refusals", "category": "user_experience", "no_data": "breach",
                                         "source": {"type": "http", "url": "http://x"}, "threshold": {"value": 1}})
    req = PollRequest(incident_id="i", release="r1", poll=0, signals=[
        signal("hallucinations"), http_signal, signal("latency", source_type="prometheus")])
    result = await acts.poll_signals(req)
    hallucinations, refusals, latency = result.observations
    assert (hallucinations.value, hallucinations.measurement) == (40, Measurement.BREACH)
    # Even with no_data: breach, a source that is down is "not measured", never a breach.
    assert (refusals.value, refusals.measurement) == (None, Measurement.NO_DATA)
    assert "HTTP 503" in refusals.detail
    assert latency.measurement is Measurement.NO_DATA and "RuntimeError: socket closed" in latency.detail


async def test_poll_signals_propagates_configuration_errors(tmp_path: Path) -> None:
    acts = activities(tmp_path, signals=SignalRouter({"scripted": ScriptedSignalSource({})}))
    req = PollRequest(incident_id="i", release="r1", poll=0, signals=[signal("latency", source_type="prometheus")])
    with pytest.raises(ApplicationError) as err:
        await acts.poll_signals(req)
    assert err.value.non_retryable and "prometheus" in err.value.message


async def test_apply_cohort_writes_reads_back_and_applies_once(tmp_path: Path, flags: FlagdFileProvider) -> None:
    acts = activities(tmp_path, flags=FlagRouter({"flagd": flags}))
    env = ActivityEnvironment()
    beats: list[tuple[Any, ...]] = []
    env.on_heartbeat = lambda *details: beats.append(copy.deepcopy(details))
    change = CohortChange(incident_id="i", idempotency_key="unship:chat:r1:stage:0", targets=TARGETS,
                          previous_percent=25)

    first = await env.run(acts.apply_cohort, change)
    assert first.applied and first.matches
    assert [(s.target, s.previous_percent, s.detail) for s in first.states] == [
        ("flag:flagd:chat-model", 25, "written"), ("flag:flagd:chat-router", 25, "written")]
    # each write is announced before it is sent and reported once done (when, which attempt), so a retry
    # after a crash or a lost answer knows who wrote what
    assert [(sorted(b[0]["sending"]), sorted(b[0]["written"])) for b in beats] == [
        (["flag:flagd:chat-model"], []),
        (["flag:flagd:chat-model"], ["flag:flagd:chat-model"]),
        (["flag:flagd:chat-model", "flag:flagd:chat-router"], ["flag:flagd:chat-model"]),
        (["flag:flagd:chat-model", "flag:flagd:chat-router"], ["flag:flagd:chat-model", "flag:flagd:chat-router"])]
    assert all(s.written_by_attempt == 1 and s.written_at is not None for s in first.states)

    # The activity retried after a worker crash: nothing is written again.
    before = (tmp_path / "flags.json").read_text()
    again = await env.run(acts.apply_cohort, change)
    assert not again.applied
    assert [s.detail for s in again.states] == ["already applied", "already applied"]
    assert (tmp_path / "flags.json").read_text() == before

    readback = await acts.read_cohort(ReadbackRequest(targets=TARGETS))
    assert [s.previous_percent for s in readback.states] == [25, 25] and not readback.applied


async def test_apply_cohort_compares_before_it_sets(tmp_path: Path) -> None:
    """Issue 13, defect 2: a write over a share the incident never wrote nor read is refused with the evidence."""
    flags = ScriptedFlagProvider(state={"flag:flagd:chat-model": 10, "flag:flagd:chat-router": 100})
    acts = activities(tmp_path, flags=flags)
    change = CohortChange(incident_id="i", idempotency_key="k", targets=TARGETS, previous_percent=50,
                          expected={"flag:flagd:chat-model": 10, "flag:flagd:chat-router": 10})
    result = await ActivityEnvironment().run(acts.apply_cohort, change)
    # the first target was as expected and is written; the second was moved to 100% by someone else
    assert [(s.target, s.previous_percent, s.conflict) for s in result.states] == [
        ("flag:flagd:chat-model", 50, False), ("flag:flagd:chat-router", 100, True)]
    assert [c.expected for c in result.conflicts] == [10] and [c.found for c in result.conflicts] == [100]
    assert "expected 10%, found 100%" in result.conflicts[0].detail
    assert flags.state == {"flag:flagd:chat-model": 50, "flag:flagd:chat-router": 100}
    # a retry that finds its own write (the desired share) is no conflict
    again = await ActivityEnvironment().run(acts.apply_cohort, change.model_copy(
        update={"targets": TARGETS[:1], "expected": {"flag:flagd:chat-model": 10}}))
    assert not again.conflicts and again.states[0].previous_percent == 50


async def test_a_retry_that_finds_its_own_write_edited_by_hand_says_what_it_wrote(tmp_path: Path) -> None:
    """An attempt wrote 50%, died before answering, someone set 0% by hand: the retry's evidence names the 50%
    this incident wrote (not the 10% it read before writing), and it writes nothing."""
    flags = ScriptedFlagProvider(state={"flag:flagd:chat-model": 0})
    acts = activities(tmp_path, flags=flags)
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=2, heartbeat_details=[
        {"written": {"flag:flagd:chat-model": ["2026-11-30T01:00:00+00:00", 1]}, "sending": {}}])
    change = CohortChange(incident_id="i", idempotency_key="k", targets=TARGETS[:1], previous_percent=50,
                          expected={"flag:flagd:chat-model": 10})
    result = await env.run(acts.apply_cohort, change)
    assert [(c.expected, c.found) for c in result.conflicts] == [(50, 0)]
    assert "expected 50%, found 0%" in result.conflicts[0].detail
    assert "written by attempt 1" in result.conflicts[0].detail
    assert flags.state == {"flag:flagd:chat-model": 0} and not flags.writes


async def test_a_forward_only_write_reads_first_and_never_moves_users_toward_the_release(
        tmp_path: Path, flags: FlagdFileProvider) -> None:
    """The first write reads and compares-and-sets in one activity: targets already further back are left alone
    (skipped, with what was found); behind, or exactly at the share (e.g. written by an attempt that died before
    answering), it writes as usual, expecting what it read."""
    acts = activities(tmp_path, flags=FlagRouter({"flagd": flags}))
    env = ActivityEnvironment()
    beats: list[tuple[Any, ...]] = []
    env.on_heartbeat = lambda *details: beats.append(copy.deepcopy(details))
    for target in TARGETS:
        await flags.set_previous_percent(target, 60, "earlier-incident:revert:1")
    before = (tmp_path / "flags.json").read_text()

    def change(percent: float, key: str) -> CohortChange:
        return CohortChange(incident_id="i", idempotency_key=key, targets=TARGETS, previous_percent=percent,
                            forward_only=True)

    skipped = await env.run(acts.apply_cohort, change(50, "unship:chat:r2:revert:0"))
    assert skipped.skipped and not skipped.applied and not skipped.conflicts
    assert [(s.previous_percent, s.found) for s in skipped.states] == [(60, 60), (60, 60)]
    assert (tmp_path / "flags.json").read_text() == before  # nothing written
    assert not beats  # nothing announced either

    same = await env.run(acts.apply_cohort, change(60, "earlier-incident:revert:1"))
    assert not same.skipped and not same.applied and [s.detail for s in same.states] == ["already applied"] * 2

    forward = await env.run(acts.apply_cohort, change(100, "unship:chat:r2:revert:2"))
    assert forward.applied and not forward.skipped and not forward.conflicts
    assert [(s.expected, s.found, s.previous_percent) for s in forward.states] == [(60, 60, 100)] * 2
    # the read goes out with the announcement of the write, for a retry to expect the same
    assert beats and all(b[0]["read"] == {t.ref: 60 for t in TARGETS} for b in beats)


async def test_a_forward_only_retry_expects_what_the_first_attempt_read(tmp_path: Path) -> None:
    """Attempt 1 read 0%, wrote 10% and died before answering; someone then set 70% by hand. The retry neither
    takes 70% as where it started (a skip) nor writes over it: a conflict naming the 10% this step wrote. An
    attempt that died before its write landed leaves the read as it was: the retry writes without a conflict."""
    flags = ScriptedFlagProvider(state={"flag:flagd:chat-model": 70})
    acts = activities(tmp_path, flags=flags)
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=2, heartbeat_details=[
        {"written": {"flag:flagd:chat-model": ["2026-11-30T01:00:00+00:00", 1]}, "sending": {},
         "read": {"flag:flagd:chat-model": 0}}])
    change = CohortChange(incident_id="i", idempotency_key="k", targets=TARGETS[:1], previous_percent=10,
                          forward_only=True)
    result = await env.run(acts.apply_cohort, change)
    assert not result.skipped and [(c.expected, c.found) for c in result.conflicts] == [(10, 70)]
    assert "written by attempt 1" in result.conflicts[0].detail
    assert flags.state == {"flag:flagd:chat-model": 70} and not flags.writes

    flags.state["flag:flagd:chat-model"] = 0  # the write never landed
    env.info = dataclasses.replace(env.info, attempt=2, heartbeat_details=[
        {"written": {}, "sending": {"flag:flagd:chat-model": ["2026-11-30T01:00:00+00:00", 1]},
         "read": {"flag:flagd:chat-model": 0}}])
    result = await env.run(acts.apply_cohort, change)
    assert result.applied and not result.conflicts and flags.state == {"flag:flagd:chat-model": 10}


async def test_a_first_write_checks_the_served_release_before_reading_or_writing(tmp_path: Path) -> None:
    """check_release: a target serving another release writes nothing anywhere (a person decides); one that
    cannot tell, or cannot be asked, is evidence and the write goes ahead."""
    flags = ScriptedFlagProvider(state={"flag:flagd:chat-model": 0, "flag:flagd:chat-router": 0},
                                 served={"flag:flagd:chat-model": "r1", "flag:flagd:chat-router": "r0"})
    acts = activities(tmp_path, flags=flags)
    change = CohortChange(incident_id="i", idempotency_key="k", targets=TARGETS, previous_percent=10,
                          forward_only=True, check_release="r1")
    wrong = await ActivityEnvironment().run(acts.apply_cohort, change)
    assert wrong.release_mismatch and not wrong.applied and not wrong.states and not flags.writes
    assert [(s.target, s.release) for s in wrong.served] == [("flag:flagd:chat-model", "r1"),
                                                             ("flag:flagd:chat-router", "r0")]

    flags.served = {"flag:flagd:chat-model": "r1"}  # the router's flag does not say
    told = await ActivityEnvironment().run(acts.apply_cohort, change)
    assert not told.release_mismatch and told.applied and [w.percent for w in flags.writes] == [10, 10]
    assert [s.release for s in told.served] == ["r1", None]

    broken = ScriptedFlagProvider(state={"flag:flagd:chat-model": 0})
    broken.served_release = _unreachable  # type: ignore[method-assign]
    result = await ActivityEnvironment().run(activities(tmp_path, flags=broken).apply_cohort,
                                             change.model_copy(update={"targets": TARGETS[:1]}))
    assert result.applied and result.served[0].release is None
    assert "could not read which release flag:flagd:chat-model serves: connection refused" in result.served[0].evidence


async def _unreachable(target: Target) -> tuple[str | None, str]:
    raise ConnectionError("connection refused")


async def test_apply_cohort_read_back_mismatch_is_retryable(tmp_path: Path) -> None:
    flags = ScriptedFlagProvider(readback_overrides={"flag:flagd:chat-router": 0})
    acts = activities(tmp_path, flags=flags)
    change = CohortChange(incident_id="i", idempotency_key="k", targets=TARGETS, previous_percent=50)
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(acts.apply_cohort, change)
    assert not err.value.non_retryable
    assert "read-back mismatch" in err.value.message and "chat-router shows 0%" in err.value.message
    assert [w.target for w in flags.writes] == ["flag:flagd:chat-model", "flag:flagd:chat-router"]


async def test_apply_cohort_keeps_the_providers_error_classification(tmp_path: Path) -> None:
    flags = ScriptedFlagProvider()
    acts = activities(tmp_path, flags=flags)
    change = CohortChange(incident_id="i", idempotency_key="k", targets=TARGETS, previous_percent=100)
    flags.fail_next_writes(1, retryable=False)
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(acts.apply_cohort, change)
    assert err.value.non_retryable
    flags.fail_next_writes(1)
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(acts.apply_cohort, change)
    assert not err.value.non_retryable
    assert (await ActivityEnvironment().run(acts.apply_cohort, change)).applied


async def test_check_integrity_reports_results(tmp_path: Path, flags: FlagdFileProvider) -> None:
    acts = activities(tmp_path, flags=flags)
    for target in TARGETS:
        await flags.set_previous_percent(target, 100, "k")
    req = IntegrityRequest(incident_id="i", release="r1", checks=[ReadbackCheck(name="readback")],
                           targets=TARGETS, expected_previous_percent=100)
    result = await ActivityEnvironment().run(acts.check_integrity, req)
    assert result.passed and result.results[0].name == "readback"


async def test_notify_renders_with_the_playbook_template_and_sends(tmp_path: Path) -> None:
    acts = activities(tmp_path)
    note = Notification(incident_id="unship:chat:r1", kind=MessageKind.OPENED, channel="#ml-incidents",
                        context={"release": "r1", "phase": "confirming"},
                        template_overrides={"opened": "Watching {{ release }} ({{ phase }})"})
    ref = await acts.notify(note)
    assert (ref.channel, ref.ref, ref.text) == ("#ml-incidents", "1", "Watching r1 (confirming)")
    assert acts.chat.sent == [(note, "Watching r1 (confirming)")]  # type: ignore[attr-defined]

    # A broken override must not silence the incident: a plain message goes out and says why.
    broken = note.model_copy(update={"template_overrides": {"opened": "{{ no_such_name }}"}})
    ref = await acts.notify(broken)
    assert "unship:chat:r1" in ref.text and "r1" in ref.text and "template error" in ref.text


class FlakyChat(LogNotifier):
    """A chat system that fails the sends numbered in ``fail`` (1-based, counted over every attempt)."""

    def __init__(self, fail: dict[int, ApplicationError]) -> None:
        super().__init__()
        self.fail = fail
        self.calls = 0

    async def send(self, notification: Notification, text: str) -> MessageRef:
        self.calls += 1
        if self.calls in self.fail:
            raise self.fail[self.calls]
        return await super().send(notification, text)


def batch(*kinds_and_channels: tuple[MessageKind, str]) -> NotificationBatch:
    return NotificationBatch(incident_id="unship:chat:r1", thread_channel="#ml-incidents", notes=[
        Notification(incident_id="unship:chat:r1", kind=kind, channel=channel, context={"release": "r1"})
        for kind, channel in kinds_and_channels])


async def test_notify_batch_sends_in_order_and_later_news_edits_the_incidents_message(tmp_path: Path) -> None:
    acts = activities(tmp_path)
    env = ActivityEnvironment()
    beats: list[Any] = []
    env.on_heartbeat = lambda *details: beats.append(copy.deepcopy(details[-1]))
    done = await env.run(acts.notify_batch, batch(
        (MessageKind.OPENED, "#ml-incidents"), (MessageKind.ESCALATED, "#ml-leads"), (MessageKind.STAGE, "#ml-incidents")))
    sent = [n for n, _ in acts.chat.sent]  # type: ignore[attr-defined]
    assert [(n.kind, n.channel, n.thread_ref) for n in sent] == [
        (MessageKind.OPENED, "#ml-incidents", None), (MessageKind.ESCALATED, "#ml-leads", None),
        (MessageKind.STAGE, "#ml-incidents", "1")]  # the stage news edits the opened message, not the leads' one
    assert (done.sent, done.thread_ref, done.undelivered) == (3, "1", [])
    # progress is heartbeated while messages remain (a retry resumes there), not after the last one: a heartbeat
    # is a call to Temporal, and the batch's answer says the same a moment later
    assert [b["sent"] for b in beats] == [1, 2]


async def test_a_retried_batch_resumes_after_the_last_message_sent(tmp_path: Path) -> None:
    """The chat system rate-limits the second message: the attempt fails retryably (Retry-After kept) with how
    far it got, and the retry sends the rest: every message exactly once, in order, still edited in place."""
    acts = activities(tmp_path)
    acts.chat = FlakyChat({2: ApplicationError("slack: HTTP 429", type="slack.http_429",
                                               next_retry_delay=timedelta(seconds=7))})
    beats: list[Any] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(copy.deepcopy(details[-1]))
    req = batch((MessageKind.OPENED, "#ml-incidents"), (MessageKind.DECIDED, "#ml-incidents"),
                (MessageKind.STAGE, "#ml-incidents"))
    with pytest.raises(ApplicationError) as failed:
        await env.run(acts.notify_batch, req)
    assert not failed.value.non_retryable and failed.value.next_retry_delay == timedelta(seconds=7)
    assert failed.value.type == "slack.http_429"
    assert failed.value.details[0]["sent"] == 1 and beats[-1]["sent"] == 1

    env.info = dataclasses.replace(env.info, attempt=2, heartbeat_details=[beats[-1]])
    done = await env.run(acts.notify_batch, req)
    sent = [n for n, _ in acts.chat.sent]
    assert [(n.kind, n.thread_ref) for n in sent] == [
        (MessageKind.OPENED, None), (MessageKind.DECIDED, "1"), (MessageKind.STAGE, "1")]
    assert (done.sent, done.thread_ref) == (3, "1")


async def test_a_message_refused_for_good_is_reported_and_the_rest_still_go_out(tmp_path: Path) -> None:
    acts = activities(tmp_path)
    acts.chat = FlakyChat({1: ApplicationError("slack: channel_not_found: #ml-leads", non_retryable=True)})
    done = await ActivityEnvironment().run(acts.notify_batch, batch(
        (MessageKind.ESCALATED, "#ml-leads"), (MessageKind.OPENED, "#ml-incidents")))
    assert [(u.index, u.kind, u.channel) for u in done.undelivered] == [(0, MessageKind.ESCALATED, "#ml-leads")]
    assert "channel_not_found" in done.undelivered[0].error
    assert [n.kind for n, _ in acts.chat.sent] == [MessageKind.OPENED] and done.sent == 2


async def test_record_audit_is_idempotent(tmp_path: Path) -> None:
    acts = activities(tmp_path)
    batch = AuditBatch(
        incident=IncidentRecord(incident_id="unship:chat:r1", playbook="chat", playbook_hash="h", release="r1",
                                phase="confirming", started_at=T0, updated_at=T0),
        events=[AuditEvent(seq=1, at=T0, kind="opened", actor="alertmanager", message="alert received")])
    await acts.record_audit(batch)
    await acts.record_audit(batch)
    assert [e.message for e in await acts.store.events("unship:chat:r1")] == ["alert received"]


async def test_write_review_stores_and_writes_markdown(tmp_path: Path) -> None:
    acts = activities(tmp_path)
    tasks = [{"title": "Root cause", "owner": "ml-lead", "due": "2026-03-06T12:00:00+00:00"}]
    req = ReviewRequest(incident_id="unship:chat:r1", status={"incident_id": "unship:chat:r1", "review_tasks": tasks},
                        template="# Review of {{ incident_id }}\n{% for t in review_tasks %}- {{ t.title }}\n{% endfor %}")
    doc = await acts.write_review(req)
    assert doc.markdown.startswith("# Review of unship:chat:r1") and "- Root cause" in doc.markdown
    assert doc.tasks == tasks
    assert await acts.store.review("unship:chat:r1") == doc  # type: ignore[attr-defined]
    written = tmp_path / "reviews" / "unship_chat_r1.md"
    assert written.read_text() == doc.markdown
    assert [p.name for p in written.parent.iterdir()] == ["unship_chat_r1.md"]

    with pytest.raises(ApplicationError) as err:
        await acts.write_review(req.model_copy(update={"template": "{% for %}"}))
    assert err.value.non_retryable and "unship:chat:r1" in err.value.message


async def test_flag_file_written_by_the_activity_stays_valid_json(tmp_path: Path, flags: FlagdFileProvider) -> None:
    acts = activities(tmp_path, flags=flags)
    for i, percent in enumerate((10, 50, 100)):
        await ActivityEnvironment().run(acts.apply_cohort, CohortChange(
            incident_id="i", idempotency_key=f"k:{i}", targets=TARGETS, previous_percent=percent))
        doc = json.loads((tmp_path / "flags.json").read_text())
        assert doc["flags"]["chat-model"]["metadata"]["unship_previous_percent"] == percent


async def test_a_hold_of_an_incident_whose_workflow_ended_is_taken_over_and_a_running_ones_is_not(
        tmp_path: Path) -> None:
    statuses = {"unship:dead:1": "terminated", "unship:live:2": "running"}

    async def holder_status(incident: str) -> str | None:
        return statuses.get(incident)

    acts = activities(tmp_path)
    acts.holder_status = holder_status
    store = acts.store
    flag, other = Target(key="chat-model"), Target(key="chat-router")
    assert await store.hold_targets("unship:dead:1", [hold_key(flag), hold_key(other)]) is None
    taken = await acts.hold_targets(TargetHold(incident_id="unship:new:3", targets=[flag]))
    assert taken.held and [(t.incident, t.target, t.status) for t in taken.taken_over] == [
        ("unship:dead:1", hold_key(flag), "terminated")]
    assert {h.target: h.incident_id for h in await store.target_holds()} == {hold_key(flag): "unship:new:3"}
    await store.release_targets("unship:new:3")
    assert await store.hold_targets("unship:live:2", [hold_key(flag)]) is None
    waiting = await acts.hold_targets(TargetHold(incident_id="unship:new:3", targets=[flag]))
    assert not waiting.held and waiting.holder == "unship:live:2" and waiting.taken_over == []
    statuses.pop("unship:live:2")  # Temporal cannot say: the holder counts as running
    assert not (await acts.hold_targets(TargetHold(incident_id="unship:new:3", targets=[flag]))).held
