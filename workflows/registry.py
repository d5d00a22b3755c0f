"""The incident workflows, named once: every worker, test and benchmark registers this tuple."""

from __future__ import annotations

from workflows.release import ReleaseWorkflow
from workflows.review import ReviewWorkflow
from workflows.rollback import RollbackWorkflow

INCIDENT_WORKFLOWS: tuple[type, ...] = (RollbackWorkflow, ReviewWorkflow, ReleaseWorkflow)
"""Rollback (the incident), its review child, and the guarded re-release."""
