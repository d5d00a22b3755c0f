"""The Temporal runtime: settings, the Temporal client, the embedded dev server, the worker and the incident
service that every front end (HTTP, Slack, CLI) goes through to start, signal, update and query incidents.

May import: playbooks, activities, workflows. Never: tabletop, workers.web, workers.cli.
"""
