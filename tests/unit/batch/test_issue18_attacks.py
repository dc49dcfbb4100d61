"""Attacks on the batch pieces below the CLI: a rewrite of the results file killed mid-way, hostile provider
results files, and hostile uploads to the simulator's Batch APIs.

Each test asserts the SAFE behaviour; where the product fails it today the test is `xfail(strict=True)` with
the defect in one line.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.batch.model import RowResult
from modelyard.batch.provider_jobs import AnthropicBatches, JobStatus, OpenAIBatches
from modelyard.batch.results import ResultsWriter
from modelyard.batch.store_sqlite import SqliteBatchStore
from modelyard.sim.batch_api import BatchLimits, BatchState, batch_state
from modelyard.sim.server import SimServer

# --------------------------------------------------------------------------- the final rewrite, killed

ROWS = 60_000
CHILD = """
import sys, time
from pathlib import Path
from modelyard.batch.results import ResultsWriter
from modelyard.batch.store_sqlite import SqliteBatchStore
store = SqliteBatchStore(Path(sys.argv[1]))
writer = ResultsWriter(Path(sys.argv[2]), store, "b")
writer.__enter__()
print("open", flush=True)
sys.stdin.readline()
writer.finish()
print("done", flush=True)
"""


def _store_with_rows(path: Path, rows: int) -> SqliteBatchStore:
    store = SqliteBatchStore(path)
    for row in range(rows):
        store.save_row("b", RowResult(row, "succeeded", outputs={"label": f"row {row} " + "x" * 40}, cost_usd=0.001))
    store.flush()
    return store


def _rows_in(path: Path) -> list[int]:
    return [json.loads(line)["row"] for line in path.read_text("utf-8").splitlines()]


@pytest.fixture
def big_store(tmp_path: Path) -> Iterator[SqliteBatchStore]:
    store = _store_with_rows(tmp_path / "b.db", ROWS)
    try:
        yield store
    finally:
        store.close()


def _kill_in_rewrite(db: Path, out: Path) -> None:
    """A real process opens the writer, then SIGKILL lands while `finish` has its temp file half written."""
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(db), str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "open"

        def temps() -> list[Path]:
            found = []
            for path in out.parent.glob(f".{out.name}.*.tmp"):
                try:
                    if path.stat().st_size > 0:
                        found.append(path)
                except FileNotFoundError:  # replaced between the listing and the stat
                    pass
            return found

        assert not temps()
        child.stdin.write("go\n")
        child.stdin.flush()
        deadline = time.monotonic() + 30
        while not temps():
            assert child.poll() is None, "the rewrite finished before it could be killed"
            assert time.monotonic() < deadline
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(10)


def test_sigkill_during_the_final_rewrite_leaves_the_old_file_whole(
    big_store: SqliteBatchStore, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    old = b"".join(json.dumps({"row": r, "status": "old"}).encode() + b"\n" for r in range(3))
    out.write_bytes(old)  # what a previous session left (the child's open rebuilds it: read what it made)
    _kill_in_rewrite(tmp_path / "b.db", out)
    lines = _rows_in(out)  # every line whole JSON: the file is the rebuilt one, never the half-written temp
    assert lines == list(range(ROWS))  # the open rebuilt it from the store; the killed finish changed nothing
    with ResultsWriter(out, big_store, "b") as writer:  # a later --resume
        writer.finish()
    assert _rows_in(out) == list(range(ROWS))


def test_a_later_session_removes_the_temp_file_of_a_killed_rewrite(big_store: SqliteBatchStore, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    _kill_in_rewrite(tmp_path / "b.db", out)
    assert list(tmp_path.glob(".out.jsonl.*.tmp")), "the kill should have left a temp file to clean up"
    with ResultsWriter(out, big_store, "b") as writer:
        writer.finish()
    assert not list(tmp_path.glob(".out.jsonl.*.tmp")), "a stale temp file (as big as the output) is never removed"


# --------------------------------------------------------------------------- hostile provider results files


class _FakeHttp:
    """Serves one results payload for any GET (the provider's results file)."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    async def request(self, method: str, url: str, *, json: Any = None, data: Any = None) -> bytes:
        return self.payload


def _openai_line(custom_id: Any, content: str = "ok", usage: dict[str, Any] | None = None) -> bytes:
    body = {
        "id": "x",
        "object": "chat.completion",
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": usage or {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    return json.dumps({"custom_id": custom_id, "response": {"status_code": 200, "body": body}}).encode()


def _openai_results(payload: bytes) -> dict[str, Any]:
    client = OpenAIBatches.__new__(OpenAIBatches)
    client.http = _FakeHttp(payload)  # type: ignore[assignment]
    client.base = "http://unused/v1"
    status = JobStatus(True, "completed", None, {"output_file_id": "file-1"})
    return asyncio.run(client.results("batch-1", status))


def _anthropic_results(payload: bytes) -> dict[str, Any]:
    client = AnthropicBatches.__new__(AnthropicBatches)
    client.http = _FakeHttp(payload)  # type: ignore[assignment]
    client.base = "http://unused/v1/messages/batches"
    return asyncio.run(client.results("msgbatch_1", JobStatus(True, "ended", None, {})))


def test_openai_results_with_foreign_and_duplicate_custom_ids_keep_one_outcome_per_id() -> None:
    payload = b"\n".join(
        [
            _openai_line("mine_0", "first"),
            _openai_line("mine_0", "second"),  # duplicated: one outcome, not two
            _openai_line("other-batch_0", "theirs"),  # another batch's row: a key our rows never ask for
            _openai_line("mine_999999", "not in the job"),
            _openai_line(None, "no id"),
        ]
    )
    found = _openai_results(payload)
    assert sum(1 for key in found if key.startswith("mine_0")) == 1
    assert "mine_1" not in found  # a row the file does not answer gets nothing (the engine fails it)


@pytest.mark.parametrize(
    "bad", [b"{not json", b"[1, 2]", b'"a string"', b"\xff\xfe"], ids=["json", "array", "str", "utf8"]
)
def test_a_malformed_line_in_openai_results_fails_only_itself(bad: bytes) -> None:
    found = _openai_results(b"\n".join([_openai_line("mine_0"), bad, _openai_line("mine_1")]))
    assert {"mine_0", "mine_1"} <= set(found)


@pytest.mark.parametrize("bad", [b"{not json", b"[1, 2]", b"\xff\xfe"], ids=["json", "array", "utf8"])
def test_a_malformed_line_in_anthropic_results_fails_only_itself(bad: bytes) -> None:
    good = [
        json.dumps({"custom_id": f"mine_{i}", "result": {"type": "errored", "error": {"message": "x"}}}).encode()
        for i in range(2)
    ]
    found = _anthropic_results(b"\n".join([good[0], bad, good[1]]))
    assert {"mine_0", "mine_1"} <= set(found)


# --------------------------------------------------------------------------- the simulator's batch endpoints


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(instant=True, seed=1) as server:
        server.app.cloud_state["batch_api"] = BatchState(
            BatchLimits(max_files=3, max_file_bytes=4096, max_total_bytes=8192, max_batches=2, max_openai_requests=5)
        )
        assert isinstance(batch_state(server.app), BatchState)
        yield server


def _upload(client: httpx.Client, sim: SimServer, data: bytes) -> httpx.Response:
    files = {"file": ("in.jsonl", data, "application/jsonl")}
    return client.post(f"{sim.openai_base}/files", data={"purpose": "batch"}, files=files)


def _openai_error(response: httpx.Response) -> str:
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["type"]
    return str(error["message"])


def _request_line(i: int, custom_id: str | None = None) -> bytes:
    body = {"model": "sim-fast", "messages": [{"role": "user", "content": "hi"}]}
    item = {"custom_id": custom_id or f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
    return json.dumps(item).encode()


def test_sim_refuses_a_too_large_upload_in_openais_error_shape(sim: SimServer) -> None:
    with httpx.Client(headers={"authorization": "Bearer sim"}, timeout=10) as client:
        response = _upload(client, sim, b"x" * 200_000)
        assert response.status_code in (400, 413)
        assert "limit" in _openai_error(response)
        assert not batch_state(sim.app).files  # nothing of it kept


def test_sim_refuses_too_many_files_and_holds_its_byte_bound(sim: SimServer) -> None:
    with httpx.Client(headers={"authorization": "Bearer sim"}, timeout=10) as client:
        codes = [_upload(client, sim, b"y" * 3000).status_code for _ in range(6)]
        assert codes[:2] == [200, 200] and codes[-1] == 400
        state = batch_state(sim.app)
        assert len(state.files) <= 3 and sum(len(f.data) for f in state.files.values()) <= 8192


def test_sim_reports_malformed_input_lines_by_line_in_the_failed_batch(sim: SimServer) -> None:
    lines = [_request_line(0), b"{nope", b"[1]", _request_line(3, "r0"), _request_line(4)]
    with httpx.Client(headers={"authorization": "Bearer sim"}, timeout=10) as client:
        file_id = _upload(client, sim, b"\n".join(lines)).json()["id"]
        body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        job = client.post(f"{sim.openai_base}/batches", json=body).json()
        for _ in range(50):
            job = client.get(f"{sim.openai_base}/batches/{job['id']}").json()
            if job["status"] in ("failed", "completed"):
                break
            time.sleep(0.05)
        assert job["status"] == "failed"
        assert {e["line"] for e in job["errors"]["data"]} == {2, 3, 4}  # not JSON, not an object, duplicate id


def test_sim_refuses_a_batch_over_its_request_bound(sim: SimServer) -> None:
    with httpx.Client(headers={"authorization": "Bearer sim"}, timeout=10) as client:
        file_id = _upload(client, sim, b"\n".join(_request_line(i) for i in range(8))).json()["id"]
        body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        response = client.post(f"{sim.openai_base}/batches", json=body)
        job = response.json()
        if response.status_code == 200:
            for _ in range(50):
                job = client.get(f"{sim.openai_base}/batches/{job['id']}").json()
                if job["status"] in ("failed", "completed"):
                    break
                time.sleep(0.05)
            assert job["status"] == "failed", job
        else:
            assert response.status_code == 400 and _openai_error(response)
        assert sim.stats()["models"].get("sim-fast", {}).get("requests", 0) == 0  # nothing answered


@pytest.mark.parametrize(
    "body",
    [
        b"x" * 10_000,
        b"{not json",
        b"[]",
        json.dumps({"requests": "no"}).encode(),
        json.dumps({"requests": []}).encode(),
    ],
    ids=["too-large", "not-json", "not-object", "requests-not-list", "no-requests"],
)
def test_sim_answers_hostile_anthropic_batches_in_anthropics_error_shape(sim: SimServer, body: bytes) -> None:
    headers = {"x-api-key": "sim", "anthropic-version": "2023-06-01", "content-type": "application/json"}
    with httpx.Client(headers=headers, timeout=10) as client:
        response = client.post(f"{sim.anthropic_base}/v1/messages/batches", content=body)
    assert response.status_code in (400, 413), response.text
    data = response.json()
    assert data["type"] == "error" and data["error"]["type"] and isinstance(data["error"]["message"], str)
