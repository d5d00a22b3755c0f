"""The ``unship`` command line: run the service (``up``, ``worker``, ``gateway``) and drive incidents.

Commands are grouped by topic, each module registering on the one Typer app of ``workers.cli.common``:
``serve`` (processes and the demo), ``incidents`` (through the HTTP API with your token), ``governance``
(review, legal hold, purge approval, reports, search; through the HTTP API too), ``playbooks``
(validate), ``admin`` (users, audit, playbook reload), ``rehearse`` (tabletop, backtest,
scheduled rehearsals). Exit codes: 0 ok, 1 refused or failed check, 2 usage or input error, 3 cannot reach
Temporal, 4 not found.
"""

from __future__ import annotations

from workers.cli import admin, governance, incidents, playbooks, rehearse, serve
from workers.cli.common import app

COMMAND_MODULES = (serve, incidents, governance, playbooks, rehearse, admin)
"""Imported for the commands they register on ``app``."""


def main() -> None:
    """Console-script entry point (``unship``)."""
    app(prog_name="unship")


if __name__ == "__main__":
    main()
