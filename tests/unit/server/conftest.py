"""Fixtures the server tests share with the store tests (one copy: tests/unit/state/conftest.py)."""

from tests.unit.state.conftest import counters  # noqa: F401  (memory and real-Redis counters, cleaned up)
