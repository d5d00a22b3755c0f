"""``python -m workers.cli``: the same as the ``unship`` command."""

from workers.cli import main

main()
