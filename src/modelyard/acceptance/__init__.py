"""Acceptance suites: the same cases run against every model; pass rates feed routing (docs/acceptance.md)."""
