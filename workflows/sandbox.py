"""The sandbox every worker runs the workflows in.

Workflow code logs through ``workflow.logger``, whose records reach the process's logging handlers while the
workflow task runs inside Temporal's sandbox. A handler that imports lazily (rich's ``RichHandler`` imports
``rich.table`` on its first record) would then import inside the sandbox, fail, fail the workflow task on every
retry and leave the incident stuck. Logging libraries are therefore passed through: the sandbox uses the
process's own modules for them, as it does for the standard library's ``logging``.
"""

from __future__ import annotations

from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

LOGGING_MODULES = ("rich", "pygments", "markdown_it", "mdurl", "opentelemetry")
"""Modules a logging handler of the CLI may import while it formats a record (rich and what it renders with;
OpenTelemetry, whose current span gives every line its trace id)."""


def workflow_runner() -> SandboxedWorkflowRunner:
    """The runner every unship worker (service, demo, tabletop, tests) registers its workflows with."""
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(*LOGGING_MODULES))
