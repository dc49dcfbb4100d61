"""Fixtures for the simulator's tests: one instant simulator per module, reset before each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from modelyard.sim import SimServer


@pytest.fixture(scope="module")
def sim_server() -> Iterator[SimServer]:
    with SimServer(instant=True, seed=0) as server:
        yield server


@pytest.fixture
def sim(sim_server: SimServer) -> SimServer:
    sim_server.reset()
    return sim_server
