"""Deterministic Temporal workflows and the pure decision logic they use.

No I/O, no wall clock, no randomness here: every side effect is an activity (``activities/``). Changes to a
workflow must keep saved histories replayable (``tests/workflows/histories``); use ``workflow.patched``.
"""
