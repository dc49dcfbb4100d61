"""The Azure OpenAI wire in the conformance suite: the simulator's deployment `sim-small` on the dated API,
authenticated with an `api-key` header. Azure serves every feature the suite asks for."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.cloud import CloudWire


def _deployment(sim_url: str, workdir: Path) -> str:
    return f'api_base: "{sim_url}", api_key: sk-test-azure-secret, options: {{api_version: "2024-10-21"}}'


WIRES: dict[str, CloudWire] = {"azure": CloudWire(deployment=_deployment)}
