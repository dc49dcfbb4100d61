"""Fixtures for end-to-end tests: the provider simulator and the real gateway on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from modelyard.config.loader import parse_config
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim.server import SimServer

WIRES = ("openai", "anthropic", "gemini")


def gateway_yaml(sim_url: str, extra: str = "") -> str:
    """One deployment of the simulator's sim-small per wire format, a model per wire, and `extra`."""
    bases = {"openai": f"{sim_url}/v1", "anthropic": sim_url, "gemini": sim_url}
    lines = ["deployments:"]
    for wire in WIRES:
        lines.append(
            f'  - {{name: small@{wire}, provider: {wire}, model: sim-small, api_base: "{bases[wire]}", '
            f"api_key: sk-test-{wire}-secret, price: {{input: 0.1, output: 0.4}}, "
            "timeouts: {connect: 2, first_token: 5, total: 10}}"
        )
    lines.append(
        "  - {name: embed@openai, provider: openai, kind: embedding, model: sim-embed, "
        f'api_base: "{sim_url}/v1", price: {{input: 0.02, output: 0}}}}'
    )
    lines.append(
        "  - {name: embed@gemini, provider: gemini, kind: embedding, model: sim-embed, "
        f'api_base: "{sim_url}", price: {{input: 0.02, output: 0}}}}'
    )
    lines.append("models:")
    for wire in WIRES:
        lines.append(f"  via-{wire}: {{candidates: [small@{wire}]}}")
    lines.append("  embed: {candidates: [embed@openai]}")
    lines.append("  embed-gemini: {candidates: [embed@gemini]}")
    return "\n".join(lines) + "\n" + extra


@pytest.fixture(scope="session")
def sim() -> Iterator[SimServer]:
    with SimServer(seed=11, instant=True) as server:
        yield server


@pytest.fixture(scope="session")
def gateway(sim: SimServer) -> Iterator[BackgroundServer]:
    config = parse_config(gateway_yaml(sim.url), source="e2e.yaml")
    with BackgroundServer(create_app(config)) as server:
        yield server
