"""The simulator's Batch APIs: OpenAI's files + batches and Anthropic's message batches, their shapes, errors,
bounds and completion delay; each batched request answered (and counted) as the model answers it live."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec

from modelyard.sim import create_app
from modelyard.sim.app import SimApp
from modelyard.sim.batch_api import BatchLimits, BatchState, batch_state, claims
from tests.unit.sim.sim_helpers import Result, asgi_call, fleet

BOUNDARY = "sim-batch-boundary"


def app(api_key: str | None = None, delay_s: float = 0.0, limits: BatchLimits | None = None) -> SimApp:
    sim = create_app(fleet({"name": "chatty"}, {"name": "emb", "kind": "embedding"}, api_key=api_key))
    sim.cloud_state["batch_api"] = BatchState(limits, delay_s)
    return sim


def call(
    sim: SimApp, method: str, path: str, body: Any = b"", headers: dict[str, str] | None = None, query: bytes = b""
) -> Result:
    return asyncio.run(asgi_call(sim, method, path, body, headers, query))


def jsonl(*lines: dict[str, Any]) -> bytes:
    return b"\n".join(msgspec.json.encode(line) for line in lines) + b"\n"


def chat_line(custom_id: str, text: str = "hello", model: str = "chatty") -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 20}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def upload(sim: SimApp, data: bytes, purpose: str = "batch", headers: dict[str, str] | None = None) -> Result:
    parts = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    head = {"content-type": f"multipart/form-data; boundary={BOUNDARY}", **(headers or {})}
    return call(sim, "POST", "/v1/files", parts, head)


def openai_batch(sim: SimApp, data: bytes, headers: dict[str, str] | None = None) -> dict[str, Any]:
    file = upload(sim, data)
    assert file.status == 200, file.body
    body = {"input_file_id": file.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    created = call(sim, "POST", "/v1/batches", {**body, "metadata": {"modelyard_nonce": "n1"}}, headers)
    assert created.status == 200, created.body
    result: dict[str, Any] = created.json()
    return result


def requests_of(sim: SimApp, model: str = "chatty") -> int:
    return int(sim.stats.snapshot()["models"][model]["requests"])


def test_claims_the_batch_routes_only() -> None:
    assert claims("POST", "/v1/files") and claims("GET", "/v1/batches/batch_1")
    assert claims("POST", "/v1/messages/batches") and claims("GET", "/v1/messages/batches/x/results")
    assert not claims("POST", "/v1/messages") and not claims("POST", "/v1/chat/completions")


def test_openai_batch_answers_every_line_once_after_the_delay() -> None:
    sim = app(delay_s=0.3)
    created = openai_batch(sim, jsonl(*(chat_line(f"r{i}", f"question {i}") for i in range(5))))
    assert created["object"] == "batch" and created["status"] == "validating"
    assert created["metadata"] == {"modelyard_nonce": "n1"} and created["request_counts"]["total"] == 5
    polled = call(sim, "GET", f"/v1/batches/{created['id']}").json()
    assert polled["status"] == "in_progress" and polled["output_file_id"] is None
    assert requests_of(sim) == 0  # nothing answered before the delay
    time.sleep(0.35)
    done = call(sim, "GET", f"/v1/batches/{created['id']}").json()
    assert done["status"] == "completed" and done["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
    assert done["error_file_id"] is None
    content = call(sim, "GET", f"/v1/files/{done['output_file_id']}/content")
    lines = [msgspec.json.decode(line) for line in content.body.splitlines()]
    assert sorted(line["custom_id"] for line in lines) == [f"r{i}" for i in range(5)]
    first = lines[0]
    assert first["error"] is None and first["response"]["status_code"] == 200
    assert first["response"]["body"]["object"] == "chat.completion"
    assert first["response"]["body"]["usage"]["prompt_tokens"] > 0
    call(sim, "GET", f"/v1/batches/{created['id']}")
    assert requests_of(sim) == 5  # answered once, however often polled


def test_openai_bad_requests_go_to_the_error_file() -> None:
    sim = app()
    bad = chat_line("bad")
    bad["body"]["messages"] = []
    created = openai_batch(sim, jsonl(chat_line("ok"), bad))
    done = call(sim, "GET", f"/v1/batches/{created['id']}").json()
    assert done["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
    errors = call(sim, "GET", f"/v1/files/{done['error_file_id']}/content").body
    line = msgspec.json.decode(errors.splitlines()[0])
    assert line["custom_id"] == "bad" and line["response"]["status_code"] == 400
    assert "too short" in line["response"]["body"]["error"]["message"]


def test_openai_invalid_file_fails_validation_with_line_numbers() -> None:
    sim = app()
    bad = jsonl(chat_line("a"), chat_line("a"), {"custom_id": "c", "method": "GET", "url": "/v1/chat/completions"})
    created = openai_batch(sim, bad)
    assert created["status"] == "failed"
    assert [e["line"] for e in created["errors"]["data"]] == [2, 3]
    mixed = openai_batch(sim, jsonl(chat_line("a"), chat_line("b", model="other")))
    assert mixed["status"] == "failed" and "same model" in mixed["errors"]["data"][0]["message"]


def test_openai_errors_in_openai_shape() -> None:
    sim = app(api_key="k")
    assert call(sim, "GET", "/v1/batches/x").status == 401
    head = {"authorization": "Bearer k"}
    missing = call(sim, "GET", "/v1/batches/batch_nope", headers=head)
    assert missing.status == 404 and "error" in missing.json() and missing.json()["error"]["message"]
    no_file = call(
        sim,
        "POST",
        "/v1/batches",
        {"input_file_id": "file-x", "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        head,
    )
    assert no_file.status == 404
    file_id = upload(sim, jsonl(chat_line("a")), headers=head).json()["id"]
    window = call(
        sim,
        "POST",
        "/v1/batches",
        {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "1h"},
        head,
    )
    assert window.status == 400 and "completion_window" in window.json()["error"]["message"]
    embed = call(
        sim,
        "POST",
        "/v1/batches",
        {"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "24h"},
        head,
    )
    assert embed.status == 400
    assert upload(sim, b"x", purpose="fine-tune", headers=head).status == 400


def test_bounds_file_size_files_and_requests() -> None:
    sim = app(limits=BatchLimits(max_files=2, max_file_bytes=2000, max_openai_requests=3, max_anthropic_requests=2))
    assert upload(sim, b"x" * 5000).status in (400, 413)
    assert upload(sim, jsonl(chat_line("a"))).status == 200
    created = openai_batch(sim, jsonl(*(chat_line(f"r{i}") for i in range(4))))
    assert created["status"] == "failed" and "more than 3" in created["errors"]["data"][0]["message"]
    assert upload(sim, jsonl(chat_line("a"))).status == 400  # two files kept: the store is full
    too_many = call(sim, "POST", "/v1/messages/batches", {"requests": [anthropic_request(f"r{i}") for i in range(3)]})
    assert too_many.status == 400 and too_many.json()["error"]["type"] == "invalid_request_error"


def test_openai_list_newest_first_and_cancel() -> None:
    sim = app(delay_s=60)
    ids = [openai_batch(sim, jsonl(chat_line("a")))["id"] for _ in range(3)]
    page = call(sim, "GET", "/v1/batches", query=b"limit=2").json()
    assert [b["id"] for b in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    rest = call(sim, "GET", "/v1/batches", query=f"limit=2&after={ids[1]}".encode()).json()
    assert [b["id"] for b in rest["data"]] == [ids[0]] and rest["has_more"] is False
    cancelled = call(sim, "POST", f"/v1/batches/{ids[0]}/cancel").json()
    assert cancelled["status"] == "cancelling"
    after = call(sim, "GET", f"/v1/batches/{ids[0]}").json()
    assert after["status"] == "cancelled" and after["output_file_id"] is None
    line = msgspec.json.decode(call(sim, "GET", f"/v1/files/{after['error_file_id']}/content").body.splitlines()[0])
    assert line["error"]["code"] == "batch_cancelled"
    assert requests_of(sim) == 0


def anthropic_request(custom_id: str, model: str = "chatty", text: str = "hi") -> dict[str, Any]:
    params = {"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": text}]}
    return {"custom_id": custom_id, "params": params}


def test_anthropic_batch_shapes_and_results() -> None:
    sim = app(delay_s=0.2)
    head = {"anthropic-version": "2023-06-01", "x-sim-batch-expire": "1"}
    reqs = [anthropic_request("a"), anthropic_request("b", model="nope"), anthropic_request("c")]
    created = call(sim, "POST", "/v1/messages/batches", {"requests": reqs}, head)
    assert created.status == 200, created.body
    batch = created.json()
    assert batch["type"] == "message_batch" and batch["processing_status"] == "in_progress"
    assert batch["request_counts"]["processing"] == 3 and batch["results_url"] is None
    assert batch["id"].startswith("msgbatch_") and batch["created_at"].endswith("Z")
    early = call(sim, "GET", f"/v1/messages/batches/{batch['id']}/results")
    assert early.status == 400 and early.json()["type"] == "error"
    time.sleep(0.25)
    ended = call(sim, "GET", f"/v1/messages/batches/{batch['id']}").json()
    assert ended["processing_status"] == "ended" and ended["results_url"].endswith("/results")
    assert ended["request_counts"] == {"processing": 0, "succeeded": 1, "errored": 1, "canceled": 0, "expired": 1}
    results = call(sim, "GET", f"/v1/messages/batches/{batch['id']}/results").body
    by_id = {line["custom_id"]: line["result"] for line in map(msgspec.json.decode, results.splitlines())}
    assert by_id["a"]["type"] == "succeeded" and by_id["a"]["message"]["type"] == "message"
    assert by_id["a"]["message"]["usage"]["output_tokens"] > 0
    assert by_id["b"]["type"] == "errored" and by_id["b"]["error"]["error"]["type"] == "not_found_error"
    assert by_id["c"] == {"type": "expired"}
    assert requests_of(sim) == 1


def test_anthropic_create_errors_and_list() -> None:
    sim = app(api_key="k", delay_s=60)
    assert call(sim, "POST", "/v1/messages/batches", {"requests": []}).status == 401
    head = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    bad_id = call(sim, "POST", "/v1/messages/batches", {"requests": [anthropic_request("a:1")]}, head)
    assert bad_id.status == 400 and "custom_id" in bad_id.json()["error"]["message"]
    dup = call(
        sim, "POST", "/v1/messages/batches", {"requests": [anthropic_request("a"), anthropic_request("a")]}, head
    )
    assert dup.status == 400
    assert call(sim, "POST", "/v1/messages/batches", b"{", head).status == 400
    ids = [
        call(sim, "POST", "/v1/messages/batches", {"requests": [anthropic_request("a")]}, head).json()["id"]
        for _ in range(2)
    ]
    listed = call(sim, "GET", "/v1/messages/batches", headers=head).json()
    assert [b["id"] for b in listed["data"]] == ids[::-1] and listed["first_id"] == ids[1]
    call(sim, "POST", f"/v1/messages/batches/{ids[0]}/cancel", headers=head)
    ended = call(sim, "GET", f"/v1/messages/batches/{ids[0]}", headers=head).json()
    assert ended["processing_status"] == "ended" and ended["request_counts"]["canceled"] == 1
    assert (
        call(sim, "GET", "/v1/messages/batches/msgbatch_x", headers=head).json()["error"]["type"] == "not_found_error"
    )


def test_batched_answer_equals_the_live_answer() -> None:
    """Same seed, same request counter, same body: a batched request gets the live call's answer."""
    body = {"model": "chatty", "messages": [{"role": "user", "content": "same"}], "max_tokens": 20}
    live = call(app(), "POST", "/v1/chat/completions", body).json()
    sim = app()
    created = openai_batch(
        sim, jsonl({"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": body})
    )
    done = call(sim, "GET", f"/v1/batches/{created['id']}").json()
    line = msgspec.json.decode(call(sim, "GET", f"/v1/files/{done['output_file_id']}/content").body)
    batched = line["response"]["body"]
    assert batched["choices"][0]["message"]["content"] == live["choices"][0]["message"]["content"]
    assert batched["usage"] == live["usage"]
    assert sim.received.snapshot("chatty")  # recorded for upstream-side assertions


def test_delay_from_the_environment(monkeypatch: Any) -> None:
    monkeypatch.setenv("MODELYARD_SIM_BATCH_DELAY_S", "42")
    assert BatchState().delay_s == 42.0
    sim = create_app(fleet({"name": "chatty"}))
    assert batch_state(sim).delay_s == 42.0
