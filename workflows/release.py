"""ReleaseWorkflow: re-release a fixed candidate, the same machinery run forward.

Users move back to the candidate stage by stage; after each bake the playbook's signals are polled with the
same composite rule, and a breach sends everyone back to the previous model and stops. A fairness
investigation on the same release pauses it through the ``pause`` signal.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.contracts import MessageKind
    from workflows.base import IncidentWorkflowBase, _cause
    from workflows.confirmation import PollVerdict, assess_poll, fairness_rule, quality_rule
    from workflows.messages import (
        IncidentStatus,
        Outcome,
        Phase,
        ReleaseInput,
        StageProgress,
    )


def release_id(playbook: str, release: str) -> str:
    return f"unship-release:{playbook}:{release}"


@workflow.defn
class ReleaseWorkflow(IncidentWorkflowBase):
    @workflow.init
    def __init__(self, input: ReleaseInput) -> None:
        self._init_incident(input.snapshot, input.release, Phase.RELEASING)

    @workflow.run
    async def run(self, input: ReleaseInput) -> IncidentStatus:
        self._start_background()
        pb = self._playbook
        targets = pb.rollback.targets
        self._audit("release_started", f"re-release of {input.release} in stages "
                    + " -> ".join(f"{p:g}%" for p in input.stages), actor=input.started_by)
        self._notify(MessageKind.OPENED, reason="re-release started")
        self._status.stages = [StageProgress(index=i, percent=p, status="pending")
                               for i, p in enumerate(input.stages)]
        rules = [r for r in (quality_rule(pb), fairness_rule(pb)) if r is not None]
        watched = {n for r in rules for n in r.names}
        signals = [s for s in pb.signals if s.name in watched]
        for i, percent in enumerate(input.stages):
            await workflow.wait_condition(lambda: not self._paused or self._aborted is not None)
            if self._aborted is not None:
                self._close(Outcome.ABORTED, self._aborted.reason or "aborted", self._aborted.by)
                break
            progress = self._status.stages[i]
            try:
                await self._apply(targets, 100 - percent, f"release:{i}")
            except ActivityError as err:
                progress.status = "failed"
                self._close(Outcome.HALTED, f"stage {i + 1} could not be applied: {_cause(err)}")
                break
            progress.status, progress.applied_at = "baking", workflow.now()
            self._audit("stage_applied", f"stage {i + 1}: {percent:g}% of users on release {input.release}",
                        percent=percent)
            self._notify(MessageKind.STAGE, stage=f"release stage {i + 1} ({percent:g}% on the candidate)")
            try:
                await workflow.wait_condition(lambda: self._aborted is not None,
                                              timeout=timedelta(seconds=input.bake_seconds))
            except TimeoutError:
                pass
            observations = await self._poll(signals, i, "release")
            breached = [a for a in (assess_poll(r, observations) for r in rules) if a.verdict is PollVerdict.BREACH]
            if breached:
                progress.status = "failed"
                names = sorted({n for a in breached for n in a.breached})
                self._audit("guard_tripped", f"signals breached after stage {i + 1}: {', '.join(names)}; "
                            "moving everyone back to the previous model")
                try:
                    await self._apply(targets, 100, "release:guard")
                except ActivityError as err:
                    self._audit("apply_failed", f"could not move users back: {_cause(err)}")
                self._close(Outcome.HALTED, f"re-release stopped at stage {i + 1}: {', '.join(names)} breached")
                break
            progress.status = "verified"
        else:
            self._close(Outcome.RELEASED, f"{input.stages[-1]:g}% of users on release {input.release}")
        self._notify(MessageKind.COMPLETED, reason=self._status.audit[-1].message)
        await self._drain()
        return self._status
