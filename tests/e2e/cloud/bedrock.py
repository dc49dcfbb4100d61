"""AWS Bedrock in the conformance suite: wire `bedrock`, Converse/ConverseStream signed with SigV4 by explicit
keys (the simulator's one key pair, src/modelyard/sim/cloud_bedrock.py), so no credential chain runs: no
environment, no shared files, no instance metadata. The secret key is named `sk-test-bedrock-secret`, which
the leak test looks for in what clients receive."""

from __future__ import annotations

from pathlib import Path

from modelyard.sim.cloud_bedrock import ACCESS_KEY, SECRET_KEY
from tests.e2e.cloud import CloudWire

REGION = "us-east-1"


def _deployment(sim_url: str, folder: Path) -> str:
    return (
        f'api_base: "{sim_url}", '
        f"options: {{region: {REGION}, aws_access_key_id: {ACCESS_KEY}, aws_secret_access_key: {SECRET_KEY}}}"
    )


WIRES = {"bedrock": CloudWire(deployment=_deployment)}
