"""The permanent abuse suite (issue #10, item 7): hypothesis against the real gateway process.

Every route a client can reach gets thousands of generated requests per run — well-formed-ish OpenAI and
Anthropic shapes with hostile values anywhere inside, raw garbage, odd headers — under the master key, a key
restricted to one model, a key the fuzzer made itself with fuzzed limits, a bad key and none. Every answer
must be below 500 (the simulator has no faults, so a 5xx is the gateway's), free of traceback text, and an
error in its ingress's shape; afterwards the server is alive, its memory bounded and /metrics small.

A new endpoint joins with a strategy of `Probe`s and one `Route(...)` line in ROUTES.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import strategies as st

from .fuzzing import (
    DEPLOYMENTS,
    MODELS,
    SCALE,
    Probe,
    Route,
    Stack,
    fuzz,
    garbage_bodies,
    guardrail_specs,
    headers,
    hostile,
    huge_strings,
    json_bodies,
    key_headers,
    keys,
    mutated,
    odd_text,
    report,
    sometimes,
)

# --------------------------------------------------------------------------- value strategies

NAMES = MODELS + DEPLOYMENTS + ("no-such-model", "VIA-OPENAI", " via-openai")
model_names = sometimes(st.sampled_from(NAMES), st.one_of(odd_text(), huge_strings(), hostile()), 12)
prompt_text = st.one_of(st.sampled_from(("Repeat: ok", "hi", "")), odd_text(60))
small_ints = st.one_of(st.integers(0, 64), st.sampled_from((4096, 128_000, 10_000_000)))
strategy_names = st.sampled_from(
    ("priority", "weighted", "least-latency", "least-busy", "cost", "learned", "rules", "bogus", "")
)
schemas = st.sampled_from(
    (
        {"type": "object"},
        {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
        {},
        {"$ref": "#"},
    )
)


def optional(required: dict[str, Any], **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(required, optional=fields)


# OpenAI Chat Completions

text_part = optional({"type": st.just("text"), "text": prompt_text})
content_parts = st.one_of(
    text_part,
    optional(
        {
            "type": st.just("image_url"),
            "image_url": optional(
                {
                    "url": st.sampled_from(
                        (
                            "data:image/png;base64,iVBORw0KGgo=",
                            "https://example.invalid/a.png",
                            "data:,",
                            "",
                            "javascript:alert(1)",
                            "data:image/png;base64,%%%",
                        )
                    )
                },
                detail=st.sampled_from(("low", "high", "auto", "x")),
            ),
        }
    ),
    optional(
        {
            "type": st.just("input_audio"),
            "input_audio": optional(
                {"data": st.sampled_from(("AAAA", "", "!!")), "format": st.sampled_from(("wav", "mp3", "x"))}
            ),
        }
    ),
    optional(
        {
            "type": st.just("file"),
            "file": optional(
                {},
                file_data=st.sampled_from(("data:application/pdf;base64,JVBERi0=", "")),
                file_id=st.just("file-1"),
                filename=st.sampled_from(("a.pdf", "")),
            ),
        }
    ),
    optional({"type": st.just("refusal"), "refusal": prompt_text}),
)
chat_content = st.one_of(prompt_text, st.lists(content_parts, min_size=1, max_size=3))
tool_calls = st.lists(
    optional(
        {
            "id": st.sampled_from(("call_1", "")),
            "type": st.just("function"),
            "function": optional(
                {"name": st.sampled_from(("f", "")), "arguments": st.sampled_from(("{}", '{"a":1}', "not json"))}
            ),
        }
    ),
    min_size=1,
    max_size=2,
)
chat_message = st.one_of(
    optional(
        {"role": st.sampled_from(("user", "system", "developer")), "content": chat_content},
        name=st.sampled_from(("bob", "", "a b")),
    ),
    optional(
        {"role": st.just("assistant")},
        content=st.one_of(prompt_text, st.none()),
        tool_calls=tool_calls,
        reasoning_content=prompt_text,
        refusal=prompt_text,
    ),
    optional({"role": st.just("tool"), "content": chat_content, "tool_call_id": st.sampled_from(("call_1", ""))}),
)
chat_tool = optional(
    {
        "type": st.just("function"),
        "function": optional(
            {"name": st.sampled_from(("f", "get_weather", "", "bad name!", "n" * 200))},
            description=prompt_text,
            parameters=schemas,
            strict=st.booleans(),
        ),
    }
)
modelyard_overrides = optional(
    {},
    strategy=strategy_names,
    candidates=st.lists(st.sampled_from(NAMES), max_size=3),
    fallbacks=st.lists(st.sampled_from(NAMES), max_size=3),
    task=st.sampled_from(("coding", "", "x" * 500)),
    tags=st.lists(odd_text(10), max_size=3),
    explain=st.booleans(),
    cache=st.one_of(st.booleans(), hostile()),
    guardrails=guardrail_specs(),
    constraints=optional(
        {},
        max_cost_per_request=st.one_of(st.floats(0, 10), hostile()),
        max_latency_ms=st.one_of(st.floats(0, 1e5), hostile()),
        min_quality=st.one_of(st.floats(0, 1), hostile()),
        accepted=st.one_of(st.booleans(), hostile()),
    ),
)
chat_request = optional(
    {"model": model_names, "messages": st.lists(chat_message, min_size=1, max_size=4)},
    stream=st.booleans(),
    stream_options=optional({}, include_usage=st.booleans()),
    max_tokens=small_ints,
    max_completion_tokens=small_ints,
    temperature=st.floats(0, 2),
    top_p=st.floats(0, 1),
    n=st.one_of(st.integers(1, 3), st.just(128)),
    stop=st.one_of(prompt_text, st.lists(prompt_text, max_size=4)),
    seed=st.integers(-(2**63), 2**63 - 1),
    tools=st.lists(chat_tool, max_size=3),
    tool_choice=st.sampled_from(("none", "auto", "required", {"type": "function", "function": {"name": "f"}})),
    parallel_tool_calls=st.booleans(),
    response_format=st.sampled_from(
        ({"type": "text"}, {"type": "json_object"}, {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}})
    ),
    presence_penalty=st.floats(-2, 2),
    frequency_penalty=st.floats(-2, 2),
    logprobs=st.booleans(),
    top_logprobs=st.integers(0, 20),
    user=prompt_text,
    metadata=st.dictionaries(odd_text(8), odd_text(8), max_size=3),
    reasoning_effort=st.sampled_from(("low", "medium", "high", "minimal", "x")),
    logit_bias=st.just({"50256": -100}),
    top_k=st.integers(0, 100),
    modelyard=modelyard_overrides,
)

# Anthropic Messages

anthropic_text = optional({"type": st.just("text"), "text": prompt_text}, cache_control=st.just({"type": "ephemeral"}))
anthropic_source = st.one_of(
    optional(
        {
            "type": st.just("base64"),
            "media_type": st.sampled_from(("image/png", "application/pdf", "")),
            "data": st.sampled_from(("iVBORw0KGgo=", "", "%%%")),
        }
    ),
    optional({"type": st.just("url"), "url": st.sampled_from(("https://example.invalid/a.png", ""))}),
    optional({"type": st.just("text"), "data": prompt_text}),
    optional({"type": st.just("content"), "content": st.one_of(prompt_text, st.lists(anthropic_text, max_size=2))}),
)
anthropic_block = st.one_of(
    anthropic_text,
    optional({"type": st.just("image"), "source": anthropic_source}),
    optional({"type": st.just("document"), "source": anthropic_source}, title=prompt_text),
    optional(
        {
            "type": st.just("tool_use"),
            "id": st.just("toolu_1"),
            "name": st.just("f"),
            "input": st.sampled_from(({}, {"a": 1})),
        }
    ),
    optional(
        {"type": st.just("tool_result"), "tool_use_id": st.just("toolu_1")},
        content=st.one_of(prompt_text, st.lists(anthropic_text, max_size=2)),
        is_error=st.booleans(),
    ),
    optional({"type": st.just("thinking"), "thinking": prompt_text, "signature": st.just("sig")}),
    optional({"type": st.sampled_from(("redacted_thinking", "server_tool_use", "web_search_tool_result", "video"))}),
)
anthropic_message = optional(
    {
        "role": st.sampled_from(("user", "assistant", "system")),
        "content": st.one_of(prompt_text, st.lists(anthropic_block, min_size=1, max_size=3)),
    }
)
anthropic_tool = optional(
    {"name": st.sampled_from(("f", "", "bad name!")), "input_schema": schemas},
    description=prompt_text,
    type=st.sampled_from(("custom", "web_search_20250305")),
    strict=st.booleans(),
)
messages_request = optional(
    {"model": model_names, "max_tokens": small_ints, "messages": st.lists(anthropic_message, min_size=1, max_size=4)},
    system=st.one_of(prompt_text, st.lists(anthropic_text, max_size=2)),
    temperature=st.floats(0, 1),
    top_p=st.floats(0, 1),
    top_k=st.integers(0, 500),
    stop_sequences=st.lists(prompt_text, max_size=3),
    stream=st.booleans(),
    tools=st.lists(anthropic_tool, max_size=2),
    tool_choice=st.sampled_from(
        (
            {"type": "auto"},
            {"type": "any"},
            {"type": "tool", "name": "f"},
            {"type": "none"},
            {"type": "auto", "disable_parallel_tool_use": True},
        )
    ),
    thinking=st.sampled_from(({"type": "enabled", "budget_tokens": 1024}, {"type": "adaptive"}, {"type": "disabled"})),
    metadata=optional({}, user_id=prompt_text),
    output_config=optional(
        {},
        format=st.just({"type": "json_schema", "schema": {"type": "object"}}),
        effort=st.sampled_from(("low", "medium", "high", "max")),
    ),
    modelyard=modelyard_overrides,
)

# Embeddings

embeddings_request = optional(
    {
        "model": sometimes(
            st.sampled_from(("embed", "embed-gemini", "embed@openai", "via-openai", "nope")),
            st.one_of(odd_text(), hostile()),
            10,
        ),
        "input": st.one_of(
            prompt_text,
            st.lists(prompt_text, min_size=1, max_size=4),
            st.lists(st.integers(0, 200_000), min_size=1, max_size=8),
            st.lists(st.lists(st.integers(0, 200_000), max_size=4), min_size=1, max_size=3),
        ),
    },
    encoding_format=st.sampled_from(("float", "base64", "x")),
    dimensions=st.one_of(st.integers(1, 64), st.sampled_from((65_536, 0))),
    user=prompt_text,
)

# Admin API

queue_classes = st.one_of(st.sampled_from(("interactive", "default", "batch", " batch ", "Batch", "")), odd_text(10))
queue_texts = st.one_of(queue_classes, st.sampled_from(("100", "0", "-1", "3600001", "nan", "inf", "1e400", "9" * 400)))
admin_key_body = optional(
    {"name": sometimes(st.sampled_from(("k1", "team a")), odd_text(), 20)},
    models=st.lists(st.sampled_from(NAMES), max_size=3),
    rpm=st.one_of(st.integers(1, 1000), st.sampled_from((0, 10**6))),
    tpm=st.integers(1, 10**7),
    budget_usd=st.one_of(st.floats(0, 1000), st.sampled_from((0.000001, 1e9))),
    period=st.sampled_from(("1d", "30d", "1h", "0s", "-1d", "x", "1e400d", "999999999d", "")),
    expires_in=st.sampled_from(("1h", "30d", "0s", "-5m", "10y", "1e9d")),
    metadata=st.one_of(
        st.dictionaries(odd_text(8), odd_text(20), max_size=3),
        st.dictionaries(st.sampled_from(("priority", "max_priority", "max_queue_ms")), queue_texts, max_size=3),
    ),
    priority=sometimes(queue_classes, hostile(), 30),
    max_priority=sometimes(queue_classes, hostile(), 30),
    max_queue_ms=st.one_of(
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from((0, -1, 1, 3_600_000, 3_600_001, 10**400, True, "100", "nan", "1e400", "")),
        hostile(),
    ),
)
query_values = st.one_of(
    st.sampled_from(
        (
            "model",
            "key",
            "day",
            "deployment",
            "7d",
            "all",
            "1h",
            "0s",
            "-1d",
            "1e308",
            "nan",
            "9" * 400,
            "2024-01-01",
            "2024-13-45T99:99",
            "true",
            "",
        )
    ),
    odd_text(12),
)


def q(value: str) -> str:
    return quote(value.encode("utf-8", "surrogatepass"), safe="")


# OpenAI Responses
response_parts = st.one_of(
    optional({"type": st.just("input_text"), "text": prompt_text}),
    optional(
        {"type": st.just("input_image")},
        image_url=st.sampled_from(("data:image/png;base64,iVBORw0KGgo=", "", "https://example.invalid/a.png")),
        file_id=st.just("file-1"),
        detail=st.sampled_from(("low", "auto", "x")),
    ),
    optional({"type": st.just("output_text"), "text": prompt_text}),
    optional({"type": st.just("input_file")}, file_data=st.just("data:application/pdf;base64,JVBERi0=")),
)
response_items = st.one_of(
    optional(
        {
            "role": st.sampled_from(("user", "assistant", "system", "developer", "tool")),
            "content": st.one_of(prompt_text, st.lists(response_parts, min_size=1, max_size=3)),
        },
        type=st.just("message"),
    ),
    optional(
        {
            "type": st.just("function_call"),
            "call_id": st.sampled_from(("c1", "")),
            "name": st.sampled_from(("f", "ns__f", "")),
            "arguments": st.sampled_from(("{}", '{"a":1}', "not json")),
        }
    ),
    optional({"type": st.just("function_call_output"), "call_id": st.sampled_from(("c1", "")), "output": prompt_text}),
    optional({"type": st.just("reasoning"), "summary": st.just([])}, encrypted_content=st.just("opaque")),
    optional({"type": st.sampled_from(("custom_tool_call", "item_reference", "web_search_call"))}, id=st.just("x")),
)
response_tools = st.lists(
    st.one_of(
        optional({"type": st.just("function"), "name": st.sampled_from(("f", "g", ""))}, parameters=schemas),
        st.sampled_from(({"type": "web_search"}, {"type": "file_search"}, {"type": "teleport"})),
        optional(
            {
                "type": st.just("namespace"),
                "name": st.just("ns"),
                "description": st.just("d"),
                "tools": st.just([{"type": "function", "name": "f"}]),
            }
        ),
        optional({"type": st.just("custom"), "name": st.just("patch")}),
    ),
    max_size=3,
)
responses_request = optional(
    {"model": model_names, "input": st.one_of(prompt_text, st.lists(response_items, min_size=1, max_size=4))},
    instructions=prompt_text,
    stream=st.booleans(),
    store=st.booleans(),
    max_output_tokens=small_ints,
    temperature=st.floats(0, 2),
    top_p=st.floats(0, 1),
    previous_response_id=st.sampled_from(("resp_nope", "", "resp_" + "0" * 24)),
    tools=response_tools,
    tool_choice=st.sampled_from(
        ("none", "auto", "required", {"type": "function", "name": "f"}, {"type": "web_search"}, {"type": "x"})
    ),
    parallel_tool_calls=st.booleans(),
    text=st.sampled_from(
        (
            {"format": {"type": "json_schema", "name": "o", "schema": {"type": "object"}}},
            {"format": {"type": "json_object"}},
            {"format": {"type": "json_schema"}},
        )
    ),
    reasoning=st.sampled_from(({"effort": "low"}, {"effort": "high", "summary": "auto"})),
    metadata=st.dictionaries(odd_text(8), odd_text(8), max_size=2),
    include=st.just(["reasoning.encrypted_content"]),
    prompt_cache_key=odd_text(10),
    user=odd_text(10),
)


# Feedback (server/feedback.py): `{request_id}` is the id of the fuzzer's last answered request.

feedback_request = optional(
    {
        "request_id": st.one_of(
            st.just("{request_id}"),
            st.just("{request_id}"),
            st.sampled_from(("req_nope", "", "req_" + "0" * 24, "../../etc/passwd", "r" * 129)),
            odd_text(),
            hostile(),
        )
    },
    score=st.one_of(
        st.floats(0, 1),
        st.sampled_from((0, 1, -0.0, 1.0000001, -1, True, "1", None, 10**400, [0.5])),
        hostile(),
    ),
    thumbs=st.one_of(st.sampled_from(("up", "down", "UP", "", "sideways")), hostile()),
    label=st.one_of(odd_text(40), huge_strings(), st.just("x" * 201), hostile()),
)

# --------------------------------------------------------------------------- probes per route


def json_posts(
    path: str,
    requests: st.SearchStrategy[Any],
    header_names: tuple[str, ...] | None = None,
    key_choice: st.SearchStrategy[str] | None = None,
) -> st.SearchStrategy[Probe]:
    """POSTs of `requests` (mutated in two of three draws) to `path`, with drawn headers and credentials."""
    names = header_names or (
        "x-modelyard-timeout-ms",
        "x-modelyard-strategy",
        "x-modelyard-tags",
        "x-modelyard-task",
        "x-modelyard-explain",
        "x-modelyard-priority",
        "content-type",
        "accept",
        "x-request-id",
        "x-sim-fault",
    )
    return st.builds(
        Probe,
        st.just("POST"),
        st.just(path),
        json_bodies(mutated(requests)),
        headers(names),
        keys() if key_choice is None else key_choice,
        key_headers(),
    )


model_probes = st.builds(
    Probe,
    st.sampled_from(("GET", "GET", "GET", "POST", "DELETE")),
    st.one_of(
        st.just("/v1/models"),
        st.sampled_from(NAMES).map(lambda m: f"/v1/models/{q(m)}"),
        odd_text(30).map(lambda m: f"/v1/models/{q(m)}"),
    ),
    st.just(b""),
    headers(("accept",)),
    keys(),
    key_headers(),
)

response_object_probes = st.builds(
    Probe,
    st.sampled_from(("GET", "GET", "DELETE", "POST")),
    st.one_of(
        st.sampled_from(("resp_nope", "resp_" + "0" * 24, "", "%00")).map(lambda r: f"/v1/responses/{r}"),
        odd_text(30).map(lambda r: f"/v1/responses/{q(r)}"),
        st.tuples(odd_text(12), st.sampled_from(("", "?limit=5", "?limit=0", "?order=asc", "?order=x&after=a"))).map(
            lambda ra: f"/v1/responses/{q(ra[0])}/input_items{ra[1]}"
        ),
    ),
    st.just(b""),
    headers(("accept",)),
    keys(),
    key_headers(),
)

ADMIN_KEYS = keys((("master", 6), ("restricted", 1), ("fresh", 1), ("bad", 1), ("none", 1)))
admin_probes = st.one_of(
    json_posts("/admin/keys", admin_key_body, ("content-type",), ADMIN_KEYS),
    st.builds(Probe, st.just("GET"), query_values.map(lambda v: f"/admin/keys?all={q(v)}"), key=ADMIN_KEYS),
    st.builds(
        Probe,
        st.just("DELETE"),
        st.one_of(st.just("/admin/keys/{fresh_id}"), odd_text(20).map(lambda v: f"/admin/keys/{q(v)}")),
        key=ADMIN_KEYS,
    ),
    st.builds(
        Probe,
        st.just("GET"),
        st.tuples(query_values, query_values).map(lambda bq: f"/admin/spend?by={q(bq[0])}&since={q(bq[1])}"),
        key=ADMIN_KEYS,
    ),
    st.builds(
        Probe,
        st.sampled_from(("GET", "GET", "POST", "DELETE")),
        st.one_of(st.just("/admin/queues"), query_values.map(lambda v: f"/admin/queues?model={q(v)}")),
        key=ADMIN_KEYS,
    ),
    st.builds(
        Probe,
        st.sampled_from(("POST", "POST", "GET", "DELETE")),
        st.one_of(st.just("/admin/reload"), query_values.map(lambda v: f"/admin/reload?all={q(v)}")),
        garbage_bodies(),
        key=ADMIN_KEYS,
    ),
)

RANGES = st.one_of(st.sampled_from(("15m", "1h", "6h", "24h", "7d", "30d", "99y", "", "0s", "-1h", "nan")), odd_text(8))
REQUEST_FILTERS = st.fixed_dictionaries(
    {},
    optional={
        name: query_values
        for name in (
            "key",
            "model",
            "deployment",
            "status",
            "min_cost",
            "min_latency_ms",
            "since",
            "until",
            "guardrail",
            "q",
            "before",
            "limit",
        )
    },
)


def query_string(values: dict[str, str]) -> str:
    """Each value cut to 300 characters: a request line beyond the HTTP parser's own limit is refused by the
    server's protocol layer (400, text/plain) before any route runs."""
    return "&".join(f"{q(name)}={q(value[:300])}" for name, value in values.items())


#: The admin API endpoints the dashboard added (its pages are clients of them).
dashboard_admin_probes = st.one_of(
    st.builds(
        Probe,
        st.just("GET"),
        st.tuples(RANGES, st.sampled_from(("", "model", "deployment", "key", "bogus")), query_values).map(
            lambda r: f"/admin/overview?range={q(r[0])}&{r[1]}={q(r[2])}"
        ),
        key=ADMIN_KEYS,
    ),
    st.builds(
        Probe, st.just("GET"), REQUEST_FILTERS.map(lambda f: f"/admin/requests?{query_string(f)}"), key=ADMIN_KEYS
    ),
    st.builds(
        Probe,
        st.sampled_from(("GET", "GET", "DELETE")),
        st.one_of(st.just("/admin/requests/req_nope"), odd_text(30).map(lambda r: f"/admin/requests/{q(r)}")),
        key=ADMIN_KEYS,
    ),
    json_posts("/admin/keys/{fresh_id}", admin_key_body, ("content-type",), ADMIN_KEYS).map(
        lambda p: Probe("PATCH", p.path, p.body, p.headers, p.key, p.key_header)
    ),
    st.builds(
        Probe,
        st.sampled_from(("GET", "PATCH")),
        st.tuples(odd_text(20), RANGES).map(lambda kr: f"/admin/keys/{q(kr[0])}?range={q(kr[1])}"),
        garbage_bodies(),
        key=ADMIN_KEYS,
    ),
    st.builds(
        Probe,
        st.just("GET"),
        st.sampled_from(("/admin/deployments", "/admin/runs", "/admin/runs?limit=x")),
        key=ADMIN_KEYS,
    ),
    st.builds(
        Probe,
        st.just("GET"),
        st.one_of(odd_text(30), st.sampled_from(("../etc", "run_x", "%00"))).map(lambda r: f"/admin/runs/{q(r)}"),
        key=ADMIN_KEYS,
    ),
    json_posts(
        "/admin/whatif",
        optional(
            {},
            data=st.one_of(st.sampled_from(("../../etc/passwd", "/etc/passwd", "nope.jsonl", "")), odd_text(20)),
            policy=st.one_of(
                st.sampled_from(("candidates: [small@openai]", "strategy: bogus", "[", "", "{a: {b: 1}}")), odd_text()
            ),
            compare=st.lists(st.sampled_from(NAMES), max_size=3),
            limit=st.one_of(st.integers(-5, 10_000), hostile()),
            name=odd_text(20),
        ),
        ("content-type",),
        ADMIN_KEYS,
    ),
)

#: Decisions for waiting approval steps (issue 21): odd run ids, step keys and verbs, hostile comments.
decision_paths = st.tuples(
    st.one_of(st.sampled_from(("run_x", "../etc", "%00", "20261205-000000-abcdef")), odd_text(30)),
    st.one_of(
        st.sampled_from(("gate", "build#1.review_gate", "s[3]", "..", "review[1]/gate")), odd_text(30), huge_strings()
    ),
    st.sampled_from(("approve", "reject", "approve", "reject", "APPROVE", "maybe")),
).map(lambda r: f"/admin/runs/{q(r[0])}/steps/{q(r[1][:300])}/{r[2]}")
decision_probes = st.one_of(
    st.builds(
        Probe,
        st.just("POST"),
        decision_paths,
        json_bodies(mutated(optional({}, comment=st.one_of(odd_text(60), huge_strings(), hostile())))),
        headers(("content-type",)),
        ADMIN_KEYS,
    ),
    st.builds(Probe, st.sampled_from(("POST", "GET", "PUT")), decision_paths, garbage_bodies(), key=ADMIN_KEYS),
)

UI_SESSIONS = st.sampled_from(("session", "session", "session", "stale", "none"))
UI_PAGES = st.one_of(
    st.sampled_from(("/ui", "/ui/", "/ui/keys", "/ui/requests", "/ui/deployments", "/ui/runs", "/ui/whatif")),
    st.tuples(RANGES, st.sampled_from(("model", "deployment", "key", "x")), query_values).map(
        lambda r: f"/ui/?range={q(r[0])}&{r[1]}={q(r[2])}"
    ),
    REQUEST_FILTERS.map(lambda f: f"/ui/requests?{query_string(f)}"),
    st.tuples(st.sampled_from(("requests", "keys", "runs", "static")), odd_text(30)).map(
        lambda pr: f"/ui/{pr[0]}/{q(pr[1])}"
    ),
    st.just("/ui/keys/{fresh_id}"),
    query_values.map(lambda v: f"/ui/login?next={q(v)}"),
    query_values.map(lambda v: f"/ui/whatif?from={q(v)}"),
    st.sampled_from(("/ui/static/ui.css", "/ui/static/ui.js", "/ui/static/../app.py", "/ui/static/%2e%2e%2fapp.py")),
)
form_values = st.one_of(query_values, odd_text(40), st.sampled_from(("{csrf}", "", "0", "-1", "nan", "1e400")))
UI_FORMS = st.fixed_dictionaries(
    {},
    optional={
        "csrf": st.sampled_from(("{csrf}", "{csrf}", "{csrf}", "", "wrong")),
        **{
            name: form_values
            for name in (
                "name",
                "models",
                "rpm",
                "tpm",
                "budget_usd",
                "period",
                "expires_in",
                "role",
                "id",
                "key",
                "login_token",
                "next",
                "data",
                "policy",
                "compare",
            )
        },
    },
).map(lambda form: query_string(form).encode("utf-8", "surrogatepass"))
dashboard_probes = st.one_of(
    st.builds(Probe, st.sampled_from(("GET", "GET", "GET", "POST", "DELETE")), UI_PAGES, session=UI_SESSIONS),
    st.builds(
        Probe,
        st.just("POST"),
        st.sampled_from(
            ("/ui/keys", "/ui/keys/revoke", "/ui/keys/{fresh_id}", "/ui/whatif", "/ui/login", "/ui/requests", "/ui/")
        ),
        st.one_of(UI_FORMS, garbage_bodies()),
        st.sampled_from(
            (
                (("content-type", b"application/x-www-form-urlencoded"),),
                (("content-type", b"application/x-www-form-urlencoded"), ("origin", b"http://evil.example")),
                (("content-type", b"application/x-www-form-urlencoded"), ("sec-fetch-site", b"cross-site")),
                (("content-type", b"multipart/form-data; boundary=x"),),
                (),
            )
        ),
        session=UI_SESSIONS,
    ),
    # Logging out ends a session: only ever with the stale one (the live session must survive the run).
    st.builds(Probe, st.just("POST"), st.just("/ui/logout"), UI_FORMS, session=st.just("stale")),
)

PATHS = (
    "/v1/chat/completions",
    "/v1/messages",
    "/v1/embeddings",
    "/v1/models",
    "/admin/keys",
    "/admin/spend",
    "/admin/queues",
    "/admin/reload",
    "/metrics",
    "/health/live",
    "/health/ready",
    "/v1/chat/completions/",
    "/v1//chat/completions",
    "/V1/CHAT/COMPLETIONS",
    "/v1/chat/completions?stream=true",
    "/admin/keys/a/b",
    "/v1/models/%00",
    "/v1/messages?beta=true",
    "/v1/responses",
    "/v1/responses/",
    "/v1/responses/resp_x/input_items",
    "/%ff",
    "/" + "a" * 3000,
    "/ui",
    "/ui/",
    "/ui/login",
    "/ui/keys",
    "/ui/%00",
    "/admin/overview",
    "/admin/requests",
    "/admin/deployments",
    "/admin/whatif",
    "/v1/feedback",
)
garbage_probes = st.builds(
    Probe,
    st.sampled_from(("POST", "POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS")),
    st.sampled_from(PATHS),
    garbage_bodies(),
    headers(("content-type", "x-modelyard-timeout-ms", "accept")),
    keys(),
    key_headers(),
)

# Audio, images and rerank (server/endpoints.py): JSON bodies, and multipart forms with hostile structure.

MEDIA_MODELS = ("whisper", "tts", "image", "rerank", "via-openai", "image@openai", "nope")
media_model = sometimes(st.sampled_from(MEDIA_MODELS), st.one_of(odd_text(), hostile()), 10)
odd_numbers = st.one_of(
    st.integers(-5, 12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from((0.25, 4.0, 1e308, -0.0, True, "2", None)),
)
speech_request = optional(
    {"model": media_model, "input": st.one_of(prompt_text, st.just("x" * 4097), hostile())},
    voice=st.one_of(st.sampled_from(("alloy", "", {"id": "v"}, {"id": 3})), hostile()),
    response_format=st.sampled_from(("mp3", "wav", "opus", "pcm", "flac", "aac", "mp4", "")),
    speed=odd_numbers,
    instructions=prompt_text,
    stream_format=st.sampled_from(("audio", "sse", "")),
)
image_request = optional(
    {"model": media_model, "prompt": st.one_of(prompt_text, hostile())},
    n=odd_numbers,
    size=st.sampled_from(("256x256", "1024x1024", "huge", "")),
    response_format=st.sampled_from(("url", "b64_json", "png")),
    quality=st.sampled_from(("standard", "hd", "")),
    output_compression=odd_numbers,
    stream=st.booleans(),
)
rerank_document = st.one_of(prompt_text, st.fixed_dictionaries({"text": prompt_text}), hostile())
rerank_request = optional(
    {
        "model": media_model,
        "query": st.one_of(prompt_text, hostile()),
        "documents": st.one_of(
            st.lists(rerank_document, max_size=6),
            st.lists(st.just("d"), min_size=999, max_size=1002),
            hostile(),
        ),
    },
    top_n=odd_numbers,
    return_documents=st.one_of(st.booleans(), hostile()),
    max_tokens_per_doc=odd_numbers,
)

MEDIA_BOUNDARY = b"fuzz-media-boundary"
AUDIO_BYTES = (
    b"RIFF$\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00@\x1f\x00\x00\x80>\x00\x00\x02\x00\x10\x00"
    b"data\x00\x00\x00\x00"
)


def _part(name: bytes, value: bytes, filename: bytes | None = None, extra: bytes = b"") -> bytes:
    disposition = b'form-data; name="' + name + b'"' + (b'; filename="' + filename + b'"' if filename else b"")
    return (
        b"--"
        + MEDIA_BOUNDARY
        + b"\r\nContent-Disposition: "
        + disposition
        + b"\r\n"
        + extra
        + b"\r\n"
        + value
        + b"\r\n"
    )


@st.composite
def media_forms(draw: Any) -> bytes:
    """A transcription form: drawn fields and file, then (one draw in three) broken: many parts, a long
    header line, no closing boundary, a bare part header, or bytes cut short."""
    model = draw(st.sampled_from((b"whisper", b"tts", b"nope", b"", "w\u00e9".encode(), b"\xff\xfe")))
    parts = [_part(b"model", model)]
    for name, values in (
        (b"response_format", (b"json", b"text", b"srt", b"vtt", b"verbose_json", b"mp4")),
        (b"temperature", (b"0.2", b"nan", b"inf", b"-1", b"", b"1e999")),
        (b"language", (b"en", b"x" * 70_000)),
        (b"timestamp_granularities[]", (b"word", b"segment", b"year")),
        (b"stream", (b"true", b"false")),
    ):
        if draw(st.booleans()):
            parts.append(_part(name, draw(st.sampled_from(values))))
    file = draw(
        st.sampled_from(
            (AUDIO_BYTES, AUDIO_BYTES + b"\x00" * 16000, b"", b"not audio at all", b"ID3" + b"\x00" * 64, None)
        )
    )
    if file is not None:
        filename = draw(st.sampled_from((b"a.wav", b"a.mp3", b"", b"../../etc/passwd", b"\xff.wav")))
        parts.append(_part(b"file", file, filename, b"Content-Type: audio/wav\r\n"))
    end = b"--" + MEDIA_BOUNDARY + b"--\r\n"
    breakage = draw(st.sampled_from(("none", "none", "many", "long-header", "no-end", "bare", "cut", "two-files")))
    if breakage == "many":
        parts += [_part(b"f%d" % i, b"x") for i in range(draw(st.integers(60, 200)))]
    elif breakage == "long-header":
        parts.append(_part(b"x", b"y", None, b"X-Long: " + b"a" * draw(st.integers(4000, 20000)) + b"\r\n"))
    elif breakage == "no-end":
        end = b""
    elif breakage == "bare":
        parts.append(b"--" + MEDIA_BOUNDARY + b"\r\nX-Nothing: 1\r\n\r\nvalue\r\n")
    elif breakage == "two-files":
        parts.append(_part(b"file", AUDIO_BYTES, b"b.wav"))
    body = b"".join(parts) + end
    if breakage == "cut":
        body = body[: draw(st.integers(0, len(body)))]
    return body


form_types = st.sampled_from(
    (
        b"multipart/form-data; boundary=" + MEDIA_BOUNDARY,
        b"multipart/form-data; boundary=" + MEDIA_BOUNDARY,
        b"multipart/form-data",
        b"multipart/form-data; boundary=" + b"b" * 300,
        b"application/json",
        b"multipart/form-data; boundary=other",
    )
)


def form_posts(path: str) -> st.SearchStrategy[Probe]:
    return st.builds(
        Probe,
        st.just("POST"),
        st.just(path),
        st.one_of(media_forms(), media_forms(), garbage_bodies()),
        st.tuples(st.tuples(st.just("content-type"), form_types)),
        keys(),
    )


ROUTES = [
    Route("chat", json_posts("/v1/chat/completions", chat_request), 1800),
    Route(
        "messages",
        json_posts(
            "/v1/messages",
            messages_request,
            (
                "x-modelyard-timeout-ms",
                "x-modelyard-strategy",
                "x-modelyard-tags",
                "anthropic-version",
                "anthropic-beta",
                "content-type",
                "accept",
            ),
        ),
        1200,
    ),
    Route(
        "count-tokens",
        json_posts(
            "/v1/messages/count_tokens", messages_request, ("anthropic-version", "anthropic-beta", "content-type")
        ),
        400,
    ),
    Route("embeddings", json_posts("/v1/embeddings", embeddings_request), 600),
    Route("responses", json_posts("/v1/responses", responses_request), 1200),
    Route("response-objects", response_object_probes, 300),
    Route("models", model_probes, 300),
    Route("admin", admin_probes, 700),
    Route("dashboard-admin", dashboard_admin_probes, 500),
    Route("run-decisions", decision_probes, 300),
    Route("dashboard", dashboard_probes, 600),
    Route("garbage", garbage_probes, 600),
    Route("transcriptions", form_posts("/v1/audio/transcriptions"), 300),
    Route("translations", form_posts("/v1/audio/translations"), 150),
    Route("speech", json_posts("/v1/audio/speech", speech_request), 300),
    Route("images", json_posts("/v1/images/generations", image_request), 300),
    Route("rerank", json_posts("/v1/rerank", rerank_request), 300),
    Route("rerank-v2", json_posts("/v2/rerank", rerank_request), 100),
    Route("feedback", json_posts("/v1/feedback", feedback_request), 300),
]
MIN_REQUESTS = 5_000

# --------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("fuzz")).start()
    try:
        warm_up(running)
        running.baseline_rss = running.rss_bytes()
        running.started = time.monotonic()
        yield running
    finally:
        running.stop()


def warm_up(stack: Stack) -> None:
    """Each path once with a good request, so the baseline RSS holds the caches a first request fills."""
    chat = b'{"model": "mixed", "messages": [{"role": "user", "content": "Repeat: ok"}]}'
    messages = b'{"model": "via-anthropic", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}'
    embed = b'{"model": "embed", "input": "hi"}'
    json_type = (("content-type", b"application/json"),)
    for _ in range(20):
        for path, body in (("/v1/chat/completions", chat), ("/v1/messages", messages), ("/v1/embeddings", embed)):
            answer = stack.send(Probe("POST", path, body, json_type, key="master"))
            assert answer.status == 200, answer.body
        assert stack.get("/admin/spend?by=model", key="master").status == 200


@pytest.mark.parametrize("route", ROUTES, ids=[r.name for r in ROUTES])
def test_fuzz_route(stack: Stack, route: Route, request: pytest.FixtureRequest) -> None:
    sent, seconds = fuzz(stack, route)
    report(request, f"fuzz {route.name}: {sent} requests in {seconds:.1f}s")
    assert sent >= min(route.examples, 50)  # hypothesis ran (it may stop early only on a tiny strategy space)


def test_the_server_is_alive_and_bounded_after_the_run(stack: Stack, request: pytest.FixtureRequest) -> None:
    """After every route was fuzzed: alive, RSS within 50 MB of the warm baseline, /metrics under 1 MB."""
    live = stack.get("/health/live")
    assert live.status == 200 and b'"ok"' in live.body
    metrics = stack.get("/metrics", key="master")
    assert metrics.status == 200
    assert len(metrics.body) < 1_000_000, f"/metrics is {len(metrics.body)} bytes"
    grown = stack.rss_bytes() - stack.baseline_rss
    report(
        request,
        f"fuzz total: {stack.sent} requests in {time.monotonic() - stack.started:.1f}s "
        f"({stack.seconds:.1f}s waiting on the gateway); RSS +{grown / 2**20:.1f} MB, "
        f"/metrics {len(metrics.body)} bytes",
    )
    assert grown < 50 * 2**20, f"RSS grew {grown / 2**20:.1f} MB over the run"
    if stack.routes_run >= {r.name for r in ROUTES}:
        assert stack.sent >= MIN_REQUESTS * min(1.0, SCALE)


def test_a_clients_own_short_timeout_does_not_open_the_breaker_for_everyone(stack: Stack) -> None:
    """Found by the fuzzer: `x-modelyard-timeout-ms: 0.001` made every attempt a timeout counted against the
    deployment, so five such requests opened its circuit and every tenant got 503s for the cooldown. A timeout
    the client chose says nothing about the deployment's health."""
    body = b'{"model": "via-openai", "messages": [{"role": "user", "content": "hi"}]}'
    json_type = ("content-type", b"application/json")
    for _ in range(10):
        answer = stack.send(
            Probe(
                "POST",
                "/v1/chat/completions",
                body,
                (json_type, ("x-modelyard-timeout-ms", b"0.001")),
                key="restricted",
            )
        )
        assert answer.status in (200, 504), answer.body
    other = stack.send(Probe("POST", "/v1/chat/completions", body, (json_type,), key="master"))
    assert other.status == 200, other.body
