"""Fixtures for end-to-end tests: the provider simulator and the real gateway on loopback."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.config.loader import parse_config
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim.server import SimServer
from tests.e2e.cloud import CloudWire

WIRES = ("openai", "anthropic", "gemini")


def _cloud_wires() -> dict[str, CloudWire]:
    """The cloud wires whose module exists (tests/e2e/cloud/)."""
    found: dict[str, CloudWire] = {}
    for name in ("azure", "bedrock", "vertex"):
        try:
            module = importlib.import_module(f"tests.e2e.cloud.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"tests.e2e.cloud.{name}":
                raise
            continue
        found.update(module.WIRES)
    return found


CLOUD_WIRES = _cloud_wires()
#: Every wire the conformance suite runs on: the three first adapters and the clouds'.
CONFORMANCE_WIRES = WIRES + tuple(CLOUD_WIRES)


def requires(wire: str, *features: str) -> None:
    """Skip a conformance test on a cloud wire whose provider cannot do `features` (listed per wire)."""
    cloud = CLOUD_WIRES.get(wire)
    missing = [f for f in features if cloud is not None and f in cloud.unsupported]
    if missing:
        pytest.skip(f"{wire} does not support {', '.join(missing)}")


def cloud_yaml(sim_url: str, workdir: Path) -> tuple[str, str]:
    """(deployment lines, model lines) for every cloud wire, in the shape `gateway_yaml` writes."""
    deployments, models = [], []
    for wire, cloud in CLOUD_WIRES.items():
        deployments.append(
            f"  - {{name: small@{wire}, provider: {wire}, model: sim-small, price: {{input: 0.1, output: 0.4}}, "
            f"timeouts: {{connect: 2, first_token: 5, total: 10}}, {cloud.deployment(sim_url, workdir)}}}"
        )
        models.append(f"  via-{wire}: {{candidates: [small@{wire}]}}")
    return "\n".join(deployments), "\n".join(models)


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
def gateway(sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    """The three first wires plus every cloud wire (the conformance suite's gateway)."""
    cloud_deployments, cloud_models = cloud_yaml(sim.url, tmp_path_factory.mktemp("cloud"))
    text = gateway_yaml(sim.url)
    if cloud_deployments:
        text = text.replace("models:\n", cloud_deployments + "\nmodels:\n", 1) + cloud_models + "\n"
    config = parse_config(text, source="e2e.yaml")
    with BackgroundServer(create_app(config)) as server:
        yield server
