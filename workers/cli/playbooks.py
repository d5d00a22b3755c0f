"""``unship validate``: every problem of a playbook as ``file:line: field: message``."""

from __future__ import annotations

from typing import Annotated

import typer

from playbooks.loader import validate_command
from workers.cli.common import JsonFlag, app


@app.command()
def validate(
    paths: Annotated[list[str], typer.Argument(help="Playbook files or folders of *.yaml files.")],
    as_json: JsonFlag = False,
) -> None:
    """Check playbooks and report every problem with its file and line."""
    raise typer.Exit(validate_command(paths, as_json=as_json))


