"""The processes: Temporal worker, HTTP API, the embedded Temporal dev-server launcher and the ``unship`` CLI.

Settings are read here (``workers.runtime.settings``) and turned into adapters that are injected into the
activities; nothing below ``workflows/`` or ``activities/`` reads the environment.
"""
