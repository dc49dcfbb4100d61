"""Vertex AI in the conformance suite: `vertex` (Gemini) and `vertex_anthropic` (Claude), both authenticated by
a service-account key file the simulator issued (its `token_uri` is the simulator's token endpoint, so
google-auth's real JWT-bearer flow runs on loopback). The key file is the credential, not a string in the
YAML, so there is no `sk-test-<wire>-secret` value; tests/e2e/test_cloud_vertex.py checks that neither the
private key nor an access token reaches a client."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from tests.e2e.cloud import CloudWire

PROJECT = "sim-project"
LOCATION = "us-central1"


def service_account_file(sim_url: str, folder: Path, name: str = "vertex-sa.json", lifetime_s: float = 3600) -> Path:
    """A key file from the simulator (`GET /_vertex/service-account`), written to `folder/name`."""
    path = folder / name
    if not path.exists():
        url = f"{sim_url}/_vertex/service-account?project={PROJECT}&lifetime_s={lifetime_s:g}"
        with urllib.request.urlopen(url, timeout=10) as answer:  # loopback: the simulator
            path.write_text(json.dumps(json.loads(answer.read())))
        path.chmod(0o600)
    return path


def _deployment(sim_url: str, folder: Path) -> str:
    key_file = service_account_file(sim_url, folder)
    return (
        f'api_base: "{sim_url}", options: {{project: {PROJECT}, location: {LOCATION}, credentials_file: "{key_file}"}}'
    )


WIRES = {
    "vertex": CloudWire(deployment=_deployment),
    "vertex_anthropic": CloudWire(deployment=_deployment),
}
