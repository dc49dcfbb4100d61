"""Issue 20's byte-identical guard: the recorded requests (tests/e2e/golden.py) replayed through a real
`modelyard serve` on the pinned simulator give the same status, headers, body bytes and spend row as the
fixtures in tests/data/golden/, after the normalisation golden.py documents (ids, timestamps, timings).

A failure means a client would see something else: a cost off in its last digit, a header added or dropped
or its value changed, a JSON key moved, an SSE event framed differently. If that change is meant, re-record
with `python scripts/record_golden.py` and commit the fixtures with it (docs/benchmarks.md).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import golden

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return {record["name"]: record for record in golden.run(tmp_path_factory.mktemp("golden"))}


def _lines(record: dict[str, Any]) -> list[str]:
    """A record as diffable lines: one per header and spend column, the body split at its newlines (each
    line's repr, so whitespace and `\\r` show)."""
    lines = [f"status {record['status']}"]
    lines += [f"header {name}: {value}" for name, value in record["headers"]]
    lines += [f"body   {line!r}" for line in record["body"].splitlines(keepends=True)]
    spend = record["spend"] or {}
    lines += [f"spend  {name} = {value!r}" for name, value in spend.items()] or ["spend  (no row)"]
    return lines


def test_every_request_has_a_fixture() -> None:
    """The fixtures are the request set: none missing, none left over from a removed request."""
    recorded = {path.stem for path in golden.FIXTURES.glob("*.json")}
    assert recorded == {g.name for g in golden.REQUESTS}, "re-record: python scripts/record_golden.py"


@pytest.mark.parametrize("name", [g.name for g in golden.REQUESTS])
def test_answer_is_byte_identical(name: str, replayed: dict[str, dict[str, Any]]) -> None:
    expected = json.loads(golden.fixture_path(name).read_text())
    got = replayed[name]
    if got != expected:
        diff = "\n".join(difflib.unified_diff(_lines(expected), _lines(got), "recorded", "this tree", lineterm="", n=2))
        pytest.fail(f"{name}: the answer changed (re-record only if meant: scripts/record_golden.py)\n{diff}")


def test_normalisation_masks_only_what_varies() -> None:
    """The masks keep the bytes around a masked value (spacing included) and leave other values alone."""
    body = b'{"id": "chatcmpl-9f3", "created":1796460970, "x": {"id":"call_7"}, "cost":0.0000103}'
    assert (
        golden.normalise_body(body) == b'{"id": "chatcmpl-<id>", "created":0, "x": {"id":"call_7"}, "cost":0.0000103}'
    )
    headers = golden.normalise_headers(
        [(b"X-Request-Id", b"req_1"), (b"x-modelyard-attempts", b"1; a ok 12ms"), (b"Server", b"uvicorn")]
    )
    assert headers == [["server", "uvicorn"], ["x-modelyard-attempts", "1; a ok <ms>"]]


def test_fixtures_stay_small() -> None:
    assert sum(p.stat().st_size for p in Path(golden.FIXTURES).glob("*.json")) < 300_000
