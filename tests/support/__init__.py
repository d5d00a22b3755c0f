"""Helpers that start real systems (Prometheus, PostgreSQL, Unleash, ...) for the tests, shared across folders."""
