"""Every side effect of unship, one module per concern.

Adapters to external systems (flags, serving, signals, chat, incident store) sit behind the Protocols in
``activities.contracts``; ``activities.rollback`` exposes them to Temporal as activities. Workflows import
only ``activities.contracts`` (pure data), so nothing here may be imported at package import time.
"""
