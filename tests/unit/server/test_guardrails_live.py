"""The server side of guardrails (server/guards.py): which checks apply to a request, the bounded caches of
per-request combinations, the key's sets, the stream filter between the executor and the codec, and the
spend log's `guardrails` column on both stores (a database from before it upgraded in place)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from modelyard.accounting.spend import SpendRecord
from modelyard.config.loader import parse_config
from modelyard.schema.chat import ChatRequest
from modelyard.schema.errors import GatewayError
from modelyard.server import guards as guards_module
from modelyard.server.access import KeyState
from modelyard.server.guards import GuardIndex, RequestGuards, StreamFilter
from modelyard.state import migrations
from modelyard.state.keys import KeyRecord
from tests.unit.state.conftest import make_store

EMAIL = "alice.smith@example.com"
CONFIG = """
deployments:
  - {name: d, provider: openai, model: m, api_base: "http://d.invalid/v1"}
guardrails:
  pii-out: [{check: pii, action: redact}]
  no-secrets: [{check: secrets, action: block, name: no-secrets}]
  cards-in: [{check: pii, stage: input, action: block, name: cards-in}]
models:
  plain: {candidates: [d]}
  guarded: {candidates: [d], guardrails: [pii-out, {check: keywords, words: [forbidden], name: words}]}
"""


class Ctx:
    """What GuardIndex reads of a RequestContext: the key."""

    def __init__(self, key: KeyState | None = None) -> None:
        self.key = key


def index() -> GuardIndex:
    return GuardIndex(parse_config(CONFIG, source="guards.yaml"))


def request(model: str, guardrails: list[dict[str, Any]] | None = None) -> ChatRequest:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    if guardrails is not None:
        body["modelyard"] = {"guardrails": guardrails}
    return msgspec.convert(body, ChatRequest)


def key_with(sets: str) -> KeyState:
    record = KeyRecord(id="k1", name="k", key_hash="h", key_prefix="p", created_at=0.0, metadata={"guardrails": sets})
    return KeyState.from_record(record)


def labels(found: RequestGuards) -> list[str]:
    return [c.spec.label for c in (*found.guards.input_checks, *found.guards.output_checks)]


# ---------------------------------------------------------------------------- which checks apply


def test_nothing_applies_to_a_plain_request():
    assert index().for_request(request("plain"), Ctx(), "plain") is None  # type: ignore[arg-type]


def test_the_models_sets_are_compiled_once_and_shared():
    idx = index()
    first = idx.for_request(request("guarded"), Ctx(), "guarded")  # type: ignore[arg-type]
    second = idx.for_request(request("guarded"), Ctx(), "guarded")  # type: ignore[arg-type]
    assert first is not None and second is not None
    assert labels(first) == ["pii", "words"]
    assert first.guards is second.guards  # no compile per request
    assert first.findings is not second.findings  # but each request has its own findings


def test_a_keys_sets_are_added_and_an_unknown_one_fails_closed():
    idx = index()
    key = key_with(" no-secrets , cards-in,no-secrets")
    assert key.guardrails == ("no-secrets", "cards-in")
    found = idx.for_request(request("guarded"), Ctx(key), "guarded")  # type: ignore[arg-type]
    assert found is not None and labels(found) == ["cards-in", "pii", "words", "no-secrets"]
    alone = idx.for_request(request("plain"), Ctx(key), "plain")  # type: ignore[arg-type]
    assert alone is not None and labels(alone) == ["cards-in", "no-secrets"]
    with pytest.raises(GatewayError) as info:
        idx.for_request(request("plain"), Ctx(key_with("missing")), "plain")  # type: ignore[arg-type]
    assert info.value.status == 500 and "missing" in info.value.message


def test_a_request_adds_built_in_checks_and_cannot_add_code_or_patterns():
    idx = index()
    found = idx.for_request(request("guarded", [{"check": "empty"}]), Ctx(), "guarded")  # type: ignore[arg-type]
    assert found is not None and labels(found) == ["pii", "words", "request.empty"]
    for spec in ({"check": "regex", "patterns": ["a+"]}, {"check": "python", "function": "os:getcwd"}):
        with pytest.raises(GatewayError) as info:
            idx.for_request(request("plain", [spec]), Ctx(), "plain")  # type: ignore[arg-type]
        assert info.value.status == 400 and info.value.param == "modelyard.guardrails"
        assert spec["check"] in info.value.message


def test_a_request_cannot_drop_or_weaken_a_configured_check():
    idx = index()
    weaker = [{"check": "pii", "action": "warn"}, {"check": "keywords", "words": ["other"], "name": "words"}]
    found = idx.for_request(request("guarded", weaker), Ctx(), "guarded")  # type: ignore[arg-type]
    assert found is not None
    actions = [(c.spec.label, c.spec.action) for c in found.guards.output_checks]
    assert ("pii", "redact") in actions and ("words", "block") in actions  # still there, unchanged


def test_per_request_caches_are_bounded(monkeypatch):
    monkeypatch.setattr(guards_module, "REQUEST_CACHE", 8)
    monkeypatch.setattr(guards_module, "COMBINED_CACHE", 8)
    idx = index()
    first = [{"check": "keywords", "words": ["w0"]}]
    a = idx.for_request(request("plain", first), Ctx(), "plain")  # type: ignore[arg-type]
    b = idx.for_request(request("plain", first), Ctx(), "plain")  # type: ignore[arg-type]
    assert a is not None and b is not None and a.guards is b.guards  # the same specs: compiled once
    for i in range(100):
        idx.for_request(request("plain", [{"check": "keywords", "words": [f"w{i}"]}]), Ctx(), "plain")  # type: ignore[arg-type]
    assert len(idx._requests) <= 8 and len(idx._combined) <= 8
    huge = [{"check": "keywords", "words": [f"word{i}" for i in range(1000)]}]
    idx.for_request(request("plain", huge), Ctx(), "plain")  # type: ignore[arg-type]
    assert all(len(k) <= guards_module.CACHEABLE_SPEC_BYTES for k in idx._requests)  # compiled, not kept


def test_metric_labels_are_bounded_by_the_config():
    idx = index()
    found = idx.for_request(  # type: ignore[arg-type]
        request("plain", [{"check": "pii", "name": "client-chosen-name"}]), Ctx(), "plain"
    )
    assert found is not None
    from modelyard.guardrails.findings import Finding

    assert idx.metric_label(Finding("client-chosen-name", "pii", "output", "block", True, 0.1)) == "pii"
    assert idx.metric_label(Finding("no-secrets", "secrets", "output", "block", True, 0.1)) == "no-secrets"


def test_output_checks_turn_pass_through_off_and_refuse_an_upstream_conversation():
    from types import SimpleNamespace

    from modelyard.routing.executor import NativeBody
    from modelyard.server.codecs.base import Inbound

    found = index().for_request(request("guarded"), Ctx(), "guarded")  # type: ignore[arg-type]
    assert found is not None
    req = request("guarded")
    inbound = Inbound(req, {}, NativeBody("anthropic-messages", {}, {}, b"{}"))
    found.check_input(inbound)
    assert inbound.native is None  # the answer must be read: never the provider's bytes as they are
    pinned = SimpleNamespace(native=True, req=SimpleNamespace(previous_response_id="resp_1"))
    stored_upstream = Inbound(req, {}, NativeBody("openai-responses", {}, {}, b"{}"), pinned)
    with pytest.raises(GatewayError) as info:
        found.check_input(stored_upstream)
    assert info.value.status == 400 and info.value.param == "previous_response_id"
    input_only = index().for_request(  # type: ignore[arg-type]
        request("plain", [{"check": "pii", "stage": "input", "action": "block"}]), Ctx(), "plain"
    )
    assert input_only is not None
    kept = Inbound(req, {}, NativeBody("anthropic-messages", {}, {}, b"{}"))
    input_only.check_input(kept)
    assert kept.native is not None  # input checks alone (nothing found) keep pass-through


# ---------------------------------------------------------------------------- the stream filter


def chunk(text: str | None, finish: str | None = None, index: int = 0) -> dict[str, Any]:
    delta: dict[str, Any] = {} if text is None else {"content": text}
    choice = {"index": index, "delta": delta, "finish_reason": finish}
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice]}


async def source(batches: list[list[Any]]) -> AsyncIterator[list[Any]]:
    for batch in batches:
        yield batch


def screened(model: str = "guarded", extra: list[dict[str, Any]] | None = None) -> tuple[RequestGuards, StreamFilter]:
    found = index().for_request(request(model, extra), Ctx(), model)  # type: ignore[arg-type]
    assert found is not None
    screen = found.stream_filter()
    assert screen is not None
    return found, screen


def sent_text(batches: list[list[Any]]) -> str:
    return "".join(
        (c.get("delta") or {}).get("content") or "" for batch in batches for ch in batch for c in ch["choices"]
    )


@pytest.mark.parametrize("cut", range(0, 60, 3))
async def test_an_address_split_anywhere_is_never_sent_unredacted(cut):
    answer = f"write to {EMAIL} today, or call later. Thanks!"
    pieces = [answer[i : i + 1] for i in range(cut)] + [answer[cut:]] if cut < len(answer) else list(answer)
    batches = [[chunk(p)] for p in pieces] + [[chunk(None, "stop")]]
    found, screen = screened()
    out: list[list[Any]] = []
    async for batch in screen.batches(source(batches)):
        out.append(batch)
        so_far = sent_text(out)
        assert not any(EMAIL[i : i + 6] in so_far for i in range(len(EMAIL) - 5))
    text = sent_text(out)
    assert text == "write to [email] today, or call later. Thanks!"
    assert out[-1][-1]["choices"][0]["finish_reason"] == "stop"
    assert any(f.check == "pii" and f.fired and f.spans == 1 for f in found.findings)


async def test_a_tail_held_at_a_stream_without_finish_is_flushed():
    _, screen = screened()
    out = [b async for b in screen.batches(source([[chunk("mail me: " + EMAIL)]]))]
    assert sent_text(out) == "mail me: [email]"


async def test_a_block_stops_the_stream_before_the_blocked_text():
    _, screen = screened()
    batches = [[chunk("fine words, and then ")], [chunk("the forbidden")], [chunk(" word and more")]]
    out = [b async for b in screen.batches(source(batches))]
    assert "forbidden" not in sent_text(out)
    assert screen.blocked is not None and screen.blocked.label == "words"
    error = screen.error()
    assert error.after_first_byte and "words" in error.message and error.client_status == 422


async def test_usage_and_tool_call_chunks_pass_untouched():
    _, screen = screened()
    usage = {"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 1}}
    tool = chunk(None)
    tool["choices"][0]["delta"] = {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}
    out = [b async for b in screen.batches(source([[tool], [chunk("ok", "stop")], [usage]]))]
    flat = [c for batch in out for c in batch]
    assert flat[0] is tool and flat[-1] is usage and sent_text(out) == "ok"


def test_raw_chunks_are_decoded_when_guards_are_on():
    _, screen = screened()
    raw = msgspec.Raw(json.dumps(chunk(f"to {EMAIL}", "stop")).encode())
    assert sent_text([screen._filter([raw])]) == "to [email]"


def test_a_span_check_that_retries_is_decided_on_the_buffered_stream():
    found = index().for_request(request("plain", [{"check": "pii", "action": "warn"}]), Ctx(), "plain")  # type: ignore[arg-type]
    assert found is not None and not found.buffers_stream  # nothing needs the whole answer: streamed as it comes
    idx = index()
    retrying = idx.for_request(request("plain", [{"check": "pii", "action": "retry"}]), Ctx(), "plain")  # type: ignore[arg-type]
    assert retrying is not None and retrying.buffers_stream
    problem = retrying.vet_chunks([chunk("mail "), chunk(EMAIL, "stop")])
    assert problem is not None and problem.kind.value == "guardrail" and "pii" in problem.message
    assert [f.label for f in retrying.findings] == ["request.pii"]  # reported once, by the vet
    clean = idx.for_request(request("plain", [{"check": "pii", "action": "retry"}]), Ctx(), "plain")  # type: ignore[arg-type]
    assert clean is not None and clean.vet_chunks([chunk("no address here", "stop")]) is None
    assert clean.findings == []  # the span check's pass is reported by the stream filter, not twice


def test_whole_answer_checks_on_a_buffered_stream():
    found = index().for_request(request("plain", [{"check": "empty", "action": "block"}]), Ctx(), "plain")  # type: ignore[arg-type]
    assert found is not None and found.buffers_stream
    problem = found.vet_chunks([chunk(None), chunk(None, "stop")])
    assert problem is not None and problem.kind.value == "guardrail_blocked" and "empty" in problem.message
    assert found.vet_chunks([chunk("text", "stop")]) is None


# ---------------------------------------------------------------------------- the spend log column


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_the_spend_logs_guardrails_column(kind, tmp_path: Path, monkeypatch):
    """A store from before the column (migrations 1-3) is upgraded in place: old rows read as None, new rows
    keep what the guardrails did."""
    module = "modelyard.state.sqlite_store" if kind == "sqlite" else "modelyard.state.postgres_store"
    before = migrations.MIGRATIONS[:3]
    monkeypatch.setattr(f"{module}.MIGRATIONS", before)
    old = await make_store(kind, tmp_path)
    schema = getattr(old, "schema", None)
    try:
        assert await old.schema_version() == 3
        if kind == "sqlite":
            await old._run(
                lambda c: (
                    c.execute("INSERT INTO modelyard_spend (id, at, status) VALUES ('old', 1, 'ok')"),
                    c.commit(),
                )
            )
        else:
            async with old._pool.acquire() as conn:  # type: ignore[attr-defined]
                await conn.execute("INSERT INTO modelyard_spend (id, at, status) VALUES ('old', 1, 'ok')")
    finally:
        await old.close()
    monkeypatch.setattr(f"{module}.MIGRATIONS", migrations.MIGRATIONS)
    if kind == "sqlite":
        from modelyard.state.sqlite_store import SQLiteStore

        store: Any = SQLiteStore(str(tmp_path / "modelyard.db"))
    else:
        from modelyard.state.postgres_store import PostgresStore
        from tests.unit.state.conftest import PG_DSN

        store = PostgresStore(PG_DSN, schema=schema)
    await store.open()
    try:
        assert await store.schema_version() == migrations.LATEST >= 4  # the guardrails column came in 4
        logged = "pii:output:redact fired 1 0.05ms, cards-in:input:block pass 0 0.01ms"
        await store.write_spend([SpendRecord(id="new", at=time.time(), guardrails=logged)])
        rows = {r.id: r for r in await store.spend_records()}
        assert rows["old"].guardrails is None and rows["new"].guardrails == logged
    finally:
        drop = getattr(store, "drop", None)
        if drop is not None:
            await drop()
        await store.close()


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_spend_batches_with_and_without_guardrails_keep_every_field(kind, tmp_path: Path):
    """SQLite leaves the column out of a batch where no request ran guardrails (a json_extract per row saved):
    every other field must still land, and a batch mixing both keeps each row's own value."""
    store: Any = await make_store(kind, tmp_path)
    try:
        full = {
            "at": 1.5,
            "key_id": "k",
            "key_name": "n",
            "model": "m",
            "deployment": "d",
            "provider": "openai",
            "endpoint": "/v1/chat/completions",
            "attempts": 2,
            "attempt_log": "2; a guardrail 1ms, b ok 2ms",
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "cached_tokens": 1,
            "cache_write_tokens": 2,
            "reasoning_tokens": 3,
            "cost_usd": 0.25,
            "latency_ms": 3.0,
            "ttft_ms": 1.0,
            "status": "ok",
            "error_kind": "x",
            "content": "c",
        }
        plain = [SpendRecord(id=f"plain{i}", **full) for i in range(3)]
        guarded = SpendRecord(id="g", guardrails="pii:output:redact fired 1 0.05ms", **full)
        mixed = [guarded, SpendRecord(id="n", **full)]
        await store.write_spend(plain)
        await store.write_spend(mixed)
        rows = {r.id: r for r in await store.spend_records()}
        for rid in ("plain0", "plain2", "n", "g"):
            got = msgspec.to_builtins(rows[rid])
            assert {k: got[k] for k in full} == full
        assert rows["plain1"].guardrails is None and rows["n"].guardrails is None
        assert rows["g"].guardrails == "pii:output:redact fired 1 0.05ms"
    finally:
        drop = getattr(store, "drop", None)
        if drop is not None:
            await drop()
        await store.close()


def test_output_checks_reach_every_text_of_a_whole_answer():
    """Not only `content`: reasoning, refusals and tool-call arguments reach the client too, and logprobs
    spell out each token (a hostile upstream put an address in each of them)."""
    from modelyard.providers.base import Completion
    from modelyard.schema.chat import Usage

    found = index().for_request(request("guarded"), Ctx(), "guarded")  # type: ignore[arg-type]
    assert found is not None
    message = {
        "role": "assistant",
        "content": [{"type": "text", "text": f"mail {EMAIL}"}],
        "reasoning_content": f"the user is {EMAIL}",
        "refusal": f"not for {EMAIL}",
        "tool_calls": [
            {"id": "t", "type": "function", "function": {"name": "f", "arguments": json.dumps({"to": EMAIL})}}
        ],
    }
    body = {
        "choices": [
            {"index": 0, "message": message, "finish_reason": "stop", "logprobs": {"content": [{"token": EMAIL}]}}
        ]
    }
    assert found.vet(Completion(body, Usage(), "m")) is None
    assert EMAIL not in json.dumps(body)
    assert message["content"] == "mail [email]" and json.loads(message["tool_calls"][0]["function"]["arguments"]) == {
        "to": "[email]"
    }
    assert "logprobs" not in body["choices"][0]


async def test_a_stream_screens_reasoning_and_tool_arguments_too():
    _, screen = screened()
    pieces = [EMAIL[i : i + 3] for i in range(0, len(EMAIL), 3)]
    batches = []
    for piece in pieces:
        reasoning = chunk(None)
        reasoning["choices"][0]["delta"] = {"reasoning_content": piece}
        reasoning["choices"][0]["logprobs"] = {"content": [{"token": piece}]}
        batches.append([reasoning])
    for piece in ['{"to": "', *pieces, '"}']:
        tool = chunk(None)
        tool["choices"][0]["delta"] = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
        batches.append([tool])
    batches.append([chunk(None, "tool_calls")])
    out: list[list[Any]] = []
    async for batch in screen.batches(source(batches)):
        out.append(batch)
        assert not any(EMAIL[i : i + 6] in json.dumps(out) for i in range(len(EMAIL) - 5))
    choices = [c for batch in out for ch in batch for c in ch["choices"]]
    reasoning_text = "".join(c["delta"].get("reasoning_content") or "" for c in choices)
    arguments = "".join(call["function"]["arguments"] for c in choices for call in c["delta"].get("tool_calls") or ())
    assert reasoning_text == "[email]" and json.loads(arguments) == {"to": "[email]"}
    assert choices[-1]["finish_reason"] == "tool_calls"
    assert not any("logprobs" in c for c in choices)


def test_a_clients_check_cannot_pass_for_a_configured_one():
    """Named like the operator's `cards-in`, a request's own check shows (and is counted) as the request's."""
    gi = index()
    found = gi.for_request(
        request("plain", [{"check": "pii", "stage": "input", "action": "warn", "name": "cards-in"}]),
        Ctx(),  # type: ignore[arg-type]
        "plain",
    )
    assert found is not None
    (check,) = found.guards.input_checks
    assert check.spec.label == "request.cards-in"
    from modelyard.guardrails.findings import Finding

    finding = Finding(check.spec.label, "pii", "input", "warn", True, 0.1)
    assert gi.metric_label(finding) == "pii"


async def test_a_client_gone_mid_stream_stops_the_upstream_and_keeps_the_findings():
    """The pump stops reading when the client disconnects: the filter must close the upstream stream (its
    slot is freed) and still hand its findings to the spend record."""
    closed = []

    async def upstream() -> AsyncIterator[list[Any]]:
        try:
            yield [chunk(f"mail {EMAIL} now, ")]
            yield [chunk("and more text that fills the window well past the held tail")]
            yield [chunk("never read")]
        finally:
            closed.append(True)

    found, screen = screened()
    batches = screen.batches(upstream())
    first = await anext(batches)
    assert EMAIL not in json.dumps(first)
    await batches.aclose()  # what the pump does when the client is gone
    assert closed == [True]
    assert any(f.check == "pii" and f.fired for f in found.findings)
