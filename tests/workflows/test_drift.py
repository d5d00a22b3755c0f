"""Flags changed behind unship's back (issue 13, defects 2 and 4), on the time-skipping server.

Every write is a compare-and-set against what the incident last wrote or read; every bake reads the targets back
mid-way and at its end. A difference is recorded with the evidence (expected vs found) and either re-applied
(``on_drift: reapply``) or put to a person at a gate; users are never moved toward the suspect release.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import WorkflowHandle

from tests.support.playbooks import snapshot
from tests.support.world import World
from workflows.messages import DecisionRequest, IncidentStatus, Outcome, Verdict
from workflows.rollback import RollbackWorkflow

FLAG = "flag:flagd:chat-model"


def automatic(**rollback: object) -> dict:
    return {"confirmation": {"window": "0s"}, "decision": {"mode": "automatic"},
            "rollback": {"stages": [{"percent": 10, "bake": "5m"}, {"percent": 50, "bake": "5m"},
                                    {"percent": 100, "bake": "5m"}], **rollback}}


def stage_baking(n: int) -> object:
    return lambda s: len(s.stages) > n and s.stages[n].status == "baking"


def gate_open(s: IncidentStatus) -> bool:
    return s.gate is not None and s.gate.purpose == "drift"


async def decide(handle: WorkflowHandle, verdict: Verdict) -> None:
    await handle.execute_update(RollbackWorkflow.decide, DecisionRequest(user="U_ONCALL", verdict=verdict,
                                                                        reason="checked the flag", via="cli"))


async def test_two_incidents_on_one_flag_never_move_users_back_toward_the_release(world: World) -> None:
    """r1 wrote 10%; r2 on the same flag reached 100% meanwhile; r1 used to write 50% over it."""
    r1 = await world.start(snapshot(**automatic(stages=[{"percent": 10, "bake": "1h"}, {"percent": 50, "bake": "5m"},
                                                        {"percent": 100, "bake": "5m"}])), "r1")
    await world.until(r1, stage_baking(0), step=timedelta(seconds=1))
    # r2's stages take 20 s; r1 reads its flag back every minute of its hour-long bake
    r2 = await world.start(snapshot(**automatic(stages=[{"percent": 10, "bake": "10s"}, {"percent": 50, "bake": "10s"},
                                                        {"percent": 100, "bake": "10s"}])), "r2")
    assert (await r2.result()).outcome is Outcome.REVERTED
    assert world.writes() == [10, 50, 100]

    status = await world.until(r1, gate_open)
    assert status.gate is not None and f"{FLAG}: expected 10%, found 100%" in status.gate.evidence
    [drift] = [e for e in status.audit if e.kind == "drift_detected"]
    assert drift.data["targets"][0]["expected"] == 10 and drift.data["targets"][0]["found"] == 100
    await decide(r1, Verdict.APPROVE)
    final = await r1.result()
    assert final.outcome is Outcome.REVERTED
    assert world.writes() == [10, 50, 100], "r1 wrote over r2's 100%"
    assert [s.status for s in final.stages] == ["verified", "skipped", "skipped"]


async def test_a_flag_lowered_by_hand_during_a_bake_is_put_to_a_person_with_the_evidence(world: World) -> None:
    handle = await world.start(snapshot(**automatic(stages=[{"percent": 10, "bake": "5m"},
                                                            {"percent": 50, "bake": "5m", "verify": ["latency_p95"]},
                                                            {"percent": 100, "bake": "5m"}])))
    await world.until(handle, stage_baking(1), step=timedelta(seconds=1))
    world.flags.state[FLAG] = 0  # someone sets the flag to 0% by hand, 4 s into the 50% bake
    status = await world.until(handle, gate_open, step=timedelta(seconds=30))
    assert status.gate is not None and f"{FLAG}: expected 50%, found 0%" in status.gate.evidence
    assert [s.previous_percent for s in status.flag_read] == [0], "the status must show the flag as read"
    assert not any(e.kind == "stage_verified" and "stage 2" in e.message for e in status.audit), \
        "the record said stage 2 was verified while users were back on the release"
    await decide(handle, Verdict.APPROVE)
    final = await handle.result()
    assert final.outcome is Outcome.REVERTED
    assert world.writes() == [10, 50, 50, 100]  # re-applied after the approval, then on as planned
    kinds = [e.kind for e in final.audit]
    assert kinds.index("drift_detected") < kinds.index("drift_decided") < kinds.index("stage_verified")


async def test_on_drift_reapply_writes_the_stage_again_and_bakes_anew(world: World) -> None:
    handle = await world.start(snapshot(**automatic(on_drift="reapply")))
    await world.until(handle, stage_baking(1), step=timedelta(seconds=1))
    world.flags.state[FLAG] = 0
    final = await handle.result()
    assert final.outcome is Outcome.REVERTED
    assert world.writes() == [10, 50, 50, 100]
    drift = next(e for e in final.audit if e.kind == "drift_detected")
    assert "expected 50%, found 0%" in drift.message
    assert any(e.kind == "drift_reapply" for e in final.audit)
    assert [s.previous_percent for s in final.flag_read] == [100]


async def test_a_drift_in_the_last_bake_that_a_person_keeps_halts_with_the_flag_as_read(world: World) -> None:
    handle = await world.start(snapshot(**automatic()))
    await world.until(handle, stage_baking(2), step=timedelta(seconds=1))
    world.flags.state[FLAG] = 0
    await world.until(handle, gate_open, step=timedelta(seconds=30))
    await decide(handle, Verdict.REJECT)
    final = await handle.result()
    assert final.outcome is Outcome.HALTED
    [closed] = [e for e in final.audit if e.kind == "closed"]
    assert "left as found (flag:flagd:chat-model at 0%)" in closed.message
    assert [s.previous_percent for s in final.flag_read] == [0]
    assert world.writes() == [10, 50, 100]
