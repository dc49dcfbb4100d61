"""The cloud wires of the conformance suite (issue 17): one module per cloud, each exporting `WIRES`, a dict of
wire name (= the provider name in the config) → `CloudWire`. tests/e2e/conftest.py adds a `small@<wire>`
deployment and a `via-<wire>` model for each to the session's gateway, so tests/e2e/test_openai_ingress.py and
test_anthropic_ingress.py (the suite the three first adapters pass) run on every cloud adapter too."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

#: Features a conformance test may need; a wire lists those its provider cannot do (the test is skipped
#: there, and the adapter must refuse them with a clear 400 instead, tested in the wire's own tests).
FEATURES = frozenset({"tools", "stream_tools", "image", "json_object", "json_schema", "stop", "max_tokens"})


@dataclass(frozen=True)
class CloudWire:
    #: (simulator URL, a scratch folder) → the YAML flow mapping of the deployment, without the braces'
    #: name/provider/model/price, e.g. `api_base: "http://127.0.0.1:1234", api_key: k, options: {...}`.
    deployment: Callable[[str, Path], str]
    unsupported: frozenset[str] = field(default_factory=frozenset)
