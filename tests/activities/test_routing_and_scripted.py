"""Classification shared by all sources, dispatch by provider/type, the scripted world and the log chat."""

from __future__ import annotations

import logging
import math

import pytest
from temporalio.exceptions import ApplicationError

from activities.chat import LogNotifier
from activities.contracts import (
    ChatNotifier,
    FlagProvider,
    Measurement,
    MessageKind,
    Notification,
    PollRequest,
    SignalSource,
)
from activities.routing import FlagRouter, SignalRouter, classify
from activities.scripted import FlagWrite, ScriptedFlagProvider, ScriptedSignalSource
from playbooks.models import Signal, Target


def signal(name: str = "hallucinations", threshold: float = 25, direction: str = "above", min_samples: int = 0,
           no_data: str = "skip", source_type: str = "scripted") -> Signal:
    return Signal.model_validate({
        "name": name, "category": "model_quality", "source": {"type": source_type, **({"query": "up"} if source_type == "prometheus" else {})},
        "threshold": {"value": threshold, "direction": direction}, "min_samples": min_samples, "no_data": no_data,
    })


def poll(n: int, phase: str = "confirm") -> PollRequest:
    return PollRequest(incident_id="unship:chat:r1", release="r1", signals=[], poll=n, phase=phase)


def test_classify_breach_healthy_and_direction() -> None:
    assert classify(signal(), 30, None).measurement is Measurement.BREACH
    assert classify(signal(), 25, None).measurement is Measurement.HEALTHY  # at the threshold is not above it
    low = signal("csat", threshold=4.0, direction="below")
    obs = classify(low, 3.2, 800, "from survey")
    assert (obs.measurement, obs.value, obs.samples, obs.threshold) == (Measurement.BREACH, 3.2, 800, "< 4")
    assert obs.detail == "from survey" and obs.observed_at is not None


def test_classify_no_data_follows_policy_but_too_few_samples_never_breaches() -> None:
    for policy, expected in (("skip", Measurement.NO_DATA), ("healthy", Measurement.HEALTHY),
                             ("breach", Measurement.BREACH)):
        for value in (None, math.nan, math.inf, -math.inf):
            obs = classify(signal(no_data=policy), value, None)
            assert (obs.value, obs.measurement) == (None, expected), (policy, value)
    few = classify(signal(min_samples=100, no_data="breach"), 80.0, 12)
    assert few.measurement is Measurement.NO_DATA
    assert "only 12 outputs, fewer than min_samples 100" in few.detail


async def test_scripted_source_replays_the_timeline_and_holds_the_last_value() -> None:
    source = ScriptedSignalSource(
        {"hallucinations": [10, 40, None, 50]},
        phases={"stage": {"hallucinations": [5]}},
        samples={"hallucinations": [2000, 2000, 2000, 10]},
    )
    assert isinstance(source, SignalSource)
    sig = signal(min_samples=100)
    seen = [await source.observe(sig, poll(n)) for n in range(6)]
    assert [o.value for o in seen] == [10, 40, None, 50, 50, 50]
    assert [o.measurement for o in seen] == [Measurement.HEALTHY, Measurement.BREACH, Measurement.NO_DATA,
                                             Measurement.NO_DATA, Measurement.NO_DATA, Measurement.NO_DATA]
    assert (await source.observe(sig, poll(3, phase="stage"))).value == 5
    unscripted = await source.observe(signal("toxicity"), poll(0))
    assert unscripted.measurement is Measurement.NO_DATA and "no scripted values" in unscripted.detail
    assert source.polls[:2] == [("hallucinations", "confirm", 0), ("hallucinations", "confirm", 1)]


async def test_scripted_flags_record_writes_apply_once_and_inject_faults() -> None:
    flags = ScriptedFlagProvider()
    assert isinstance(flags, FlagProvider)
    target = Target(key="chat-model")
    assert await flags.get_previous_percent(target) == 0
    assert await flags.set_previous_percent(target, 25, "wf:stage:0") is True
    assert await flags.set_previous_percent(target, 25, "wf:stage:0") is False
    assert await flags.get_previous_percent(target) == 25
    assert flags.writes == [FlagWrite("flag:flagd:chat-model", 25, "wf:stage:0")]

    flags.fail_next_writes(2)
    for _ in range(2):
        with pytest.raises(ApplicationError) as err:
            await flags.set_previous_percent(target, 50, "wf:stage:1")
        assert not err.value.non_retryable
    assert await flags.set_previous_percent(target, 50, "wf:stage:1") is True

    flags.fail_next_writes(1, retryable=False)
    with pytest.raises(ApplicationError) as err:
        await flags.set_previous_percent(target, 100, "wf:stage:2")
    assert err.value.non_retryable and "403" in err.value.message

    flags.fail_next_reads(1)
    with pytest.raises(ApplicationError):
        await flags.get_previous_percent(target)
    flags.readback_overrides[target.ref] = 40
    assert await flags.get_previous_percent(target) == 40


async def test_routers_dispatch_and_name_what_is_configured() -> None:
    flagd, unleash = ScriptedFlagProvider(), ScriptedFlagProvider()
    router = FlagRouter({"flagd": flagd, "unleash": unleash})
    assert isinstance(router, FlagProvider)
    await router.set_previous_percent(Target(key="a", provider="unleash"), 30, "k")
    assert unleash.writes and not flagd.writes
    assert await router.get_previous_percent(Target(key="a", provider="unleash")) == 30
    with pytest.raises(ApplicationError) as err:
        await router.set_previous_percent(Target(key="a", provider="launchdarkly"), 30, "k")
    assert err.value.non_retryable
    assert "'launchdarkly'" in err.value.message and "configured: flagd, unleash" in err.value.message

    signals = SignalRouter({"scripted": ScriptedSignalSource({"hallucinations": [30]})})
    assert (await signals.observe(signal(), poll(0))).measurement is Measurement.BREACH
    with pytest.raises(ApplicationError) as err:
        await signals.observe(signal(source_type="prometheus"), poll(0))
    assert err.value.non_retryable and "UNSHIP_PROMETHEUS_URL" in err.value.message


async def test_log_notifier_logs_keeps_and_numbers_messages(caplog: pytest.LogCaptureFixture) -> None:
    chat = LogNotifier()
    assert isinstance(chat, ChatNotifier)
    opened = Notification(incident_id="unship:chat:r1", kind=MessageKind.OPENED, channel="#ml-incidents")
    with caplog.at_level(logging.INFO, logger="unship.chat"):
        first = await chat.send(opened, "Incident opened for r1")
        update = await chat.send(opened.model_copy(update={"thread_ref": first.ref}), "Now reverting")
        second = await chat.send(opened.model_copy(update={"channel": "#exec"}), "Escalated")
    assert (first.ref, update.ref, second.ref) == ("1", "1", "2")
    assert first.text == "Incident opened for r1" and first.channel == "#ml-incidents"
    assert "[#ml-incidents] Incident opened for r1" in caplog.text
    assert [text for _, text in chat.sent] == ["Incident opened for r1", "Now reverting", "Escalated"]


def test_exactly_min_samples_outputs_is_measured() -> None:
    # "fewer than min_samples" is no data; exactly min_samples is enough traffic to judge
    at_minimum = classify(signal(min_samples=100), 30.0, 100)
    assert (at_minimum.measurement, at_minimum.value, at_minimum.samples) == (Measurement.BREACH, 30.0, 100)
    assert classify(signal(min_samples=100), 30.0, 99).measurement is Measurement.NO_DATA
