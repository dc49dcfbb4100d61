"""Streamed workflow output end to end: `modelyard run --stream` on the research example over the embedded
simulator prints the parallel search items' tokens interleaved, each line prefixed with its item; and the
HTTP backend streams through a real gateway's `stream: true` path with the same answer and price as a whole
call."""

from __future__ import annotations

import re
from pathlib import Path

from modelyard.server.background import BackgroundServer
from modelyard.workflows.backend import HttpBackend, ModelCall
from tests.e2e.test_workflow_cli import EXAMPLES, cli

_PREFIX = re.compile(r"^\[(?P<label>[a-z]+(?:#\d+)?)\] ")


def test_run_stream_interleaves_the_parallel_items_with_their_index(tmp_path: Path) -> None:
    store = str(tmp_path / "runs.db")
    done = cli("run", str(EXAMPLES / "research.yaml"), "--store", store, "--stream", simulator=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    labels = [m.group("label") for m in map(_PREFIX.match, lines) if m]
    searches = [label for label in labels if label.startswith("search#")]
    assert len(set(searches)) >= 3, labels  # the plan asks for several queries; each item speaks
    # Interleaved: some item's lines resume after another item spoke (not one block per item).
    runs = [label for i, label in enumerate(searches) if i == 0 or searches[i - 1] != label]
    assert len(runs) > len(set(runs)), searches
    assert "plan" in labels and "analyze" in labels
    assert "-- search[0] started" in lines and "-- search[0] finished" in lines
    # The report is printed as without --stream.
    assert "status: succeeded" in done.stdout and "critical path" in done.stdout
    plain = cli("run", str(EXAMPLES / "research.yaml"), "--store", store, simulator=True, timeout=180)
    assert plain.returncode == 0 and not any(map(_PREFIX.match, plain.stdout.splitlines()))


async def test_the_http_backend_streams_through_the_gateway(gateway: BackgroundServer) -> None:
    call = ModelCall(model="via-openai", messages=[{"role": "user", "content": "Repeat: alpha beta gamma"}])
    async with HttpBackend(gateway.url, api_key="sk-client") as remote:
        whole = await remote.call(call)
        pieces: list[str] = []
        streamed = await remote.call_streaming(call, pieces.append)
    assert pieces and "".join(pieces) == streamed.text == whole.text == "alpha beta gamma"
    assert streamed.usage == whole.usage and streamed.deployment == whole.deployment == "small@openai"
    assert streamed.cost_usd == whole.cost_usd > 0 and streamed.attempts == 1
