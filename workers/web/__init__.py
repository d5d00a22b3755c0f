"""One HTTP application: the operator API, the alert gateway, the Slack endpoint and health checks.

Thin adapters: each route translates a request into an ``IncidentService`` call. May import: playbooks,
activities (contracts, Slack), workflows (messages and typed references), workers.runtime. Never:
workers.cli, tabletop.
"""
