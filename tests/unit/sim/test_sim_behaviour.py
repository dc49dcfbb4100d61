"""What simulated models answer: text lengths, conventions, stop/max_tokens, tool choice, JSON, embeddings."""

from __future__ import annotations

import math
import random
from typing import Any

import jsonschema
import pytest

from modelyard.sim.behaviour import (
    TOOL_RESULT_PREFIX,
    VOCAB,
    cached_tokens,
    compose,
    count_tokens,
    generate,
    text_pieces,
)
from modelyard.sim.embedding import embed, to_base64
from modelyard.sim.faults import Fault, draw_fault, fault_edges, lognormal_ms, ttft_seconds
from modelyard.sim.fleet import Faults, Latency, SimModel, TokenRange
from modelyard.sim.shapes import Ask, ToolSpec

WEATHER = ToolSpec(
    "get_weather",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
        "required": ["city", "unit"],
    },
)
CLOCK = ToolSpec("get_time", {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]})


def model(**kw: Any) -> SimModel:
    return SimModel(name="m", **kw)


def ask(text: str = "hello", **kw: Any) -> Ask:
    return Ask(model="m", prompt_tokens=count_tokens(text), last_user_text=text, **kw)


def test_count_tokens_is_about_four_characters() -> None:
    assert [count_tokens(t) for t in ("", "a", "abcd", "abcde", "x" * 400)] == [0, 1, 1, 2, 100]


@pytest.mark.parametrize("tokens", [1, 2, 5, 17, 40, 120, 900])
def test_compose_hits_the_token_target_within_a_word(tokens: int) -> None:
    text = compose(tokens, random.Random(tokens))
    assert count_tokens(text) <= tokens
    assert count_tokens(text) >= tokens - 3
    assert text.endswith(".")
    assert text[0].isupper()
    words = {w.strip(".").lower() for w in text.split()}
    assert words <= set(VOCAB) or tokens <= 2  # a one-token answer may be a clipped word


def test_output_length_follows_the_model_distribution() -> None:
    m = model(output_tokens=TokenRange(min=30, max=60))
    lengths = [generate(ask(), m, random.Random(i)).completion_tokens for i in range(200)]
    assert min(lengths) >= 27 and max(lengths) <= 60
    assert len(set(lengths)) > 10  # actually drawn, not constant


def test_repeat_convention_answers_exactly_the_text() -> None:
    reply = generate(ask("Please. Repeat: the quick  brown fox\nand more"), model(), random.Random(1))
    assert reply.text == "the quick  brown fox\nand more"
    assert reply.finish == "stop" and reply.completion_tokens == count_tokens(reply.text)


def test_tool_result_convention_quotes_the_first_200_characters() -> None:
    result = "R" * 150 + "S" * 100
    question = ask("what is the weather", tool_result=result, tools=[WEATHER])
    reply = generate(question, model(), random.Random(1))
    assert reply.text == TOOL_RESULT_PREFIX + result[:200]
    assert not reply.tool_calls  # auto mode never loops on a tool result


def test_max_tokens_cuts_the_answer_with_finish_length() -> None:
    reply = generate(ask(max_tokens=5), model(output_tokens=50), random.Random(3))
    assert reply.finish == "length"
    assert reply.completion_tokens <= 5 and reply.text


def test_stop_sequence_truncates_before_it() -> None:
    reply = generate(ask("Repeat: alpha beta STOP gamma", stop=["zzz", "STOP"]), model(), random.Random(0))
    assert reply.text == "alpha beta "
    assert reply.finish == "stop_sequence" and reply.stop_sequence == "STOP"


def test_stop_sequence_wins_over_a_later_length_cut() -> None:
    question = ask("Repeat: ab STOP " + "x" * 400, stop=["STOP"], max_tokens=20)
    reply = generate(question, model(), random.Random(0))
    assert reply.text == "ab " and reply.finish == "stop_sequence"


@pytest.mark.parametrize(
    ("kw", "text", "expected"),
    [
        ({"tool_mode": "required"}, "hi", ["get_weather"]),
        ({"tool_mode": "required", "tool_name": "get_time"}, "hi", ["get_time"]),
        ({"tool_mode": "auto"}, "please call get_time now", ["get_time"]),
        ({"tool_mode": "auto"}, "no tool named here", []),
        ({"tool_mode": "none"}, "please call get_time now", []),
        ({"tool_mode": "required"}, "call all tools please", ["get_weather", "get_time"]),
        ({"tool_mode": "auto"}, "Call all tools please", ["get_weather", "get_time"]),
        ({"tool_mode": "required", "parallel_tools": False}, "call all tools", ["get_weather"]),
        ({"tool_mode": "required", "tool_name": "get_time"}, "call all tools", ["get_time"]),
    ],
)
def test_tool_choice_table(kw: dict[str, Any], text: str, expected: list[str]) -> None:
    reply = generate(ask(text, tools=[WEATHER, CLOCK], **kw), model(), random.Random(7))
    assert [c.name for c in reply.tool_calls] == expected
    if expected:
        assert reply.finish == "tool_calls" and reply.text == ""
        for call in reply.tool_calls:
            schema = WEATHER.parameters if call.name == "get_weather" else CLOCK.parameters
            jsonschema.validate(call.args, schema or {})
            assert len(call.key) == 24
    else:
        assert reply.finish in ("stop", "length") and reply.text


def test_one_tool_and_call_all_tools_gives_two_calls() -> None:
    reply = generate(ask("call all tools", tools=[WEATHER], tool_mode="required"), model(), random.Random(7))
    assert [c.name for c in reply.tool_calls] == ["get_weather", "get_weather"]
    assert reply.tool_calls[0].key != reply.tool_calls[1].key


def test_json_object_mode_answers_an_answer_object() -> None:
    import json

    reply = generate(ask(json_mode=True), model(), random.Random(2))
    doc = json.loads(reply.text)
    assert isinstance(doc, dict) and isinstance(doc["answer"], str) and doc["answer"]


def test_json_schema_mode_answers_an_instance() -> None:
    import json

    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 3, "maximum": 4}},
        "required": ["n"],
        "additionalProperties": False,
    }
    for seed in range(20):
        reply = generate(ask(json_mode=True, json_schema=schema), model(), random.Random(seed))
        jsonschema.validate(json.loads(reply.text), schema)


def test_reasoning_tokens_are_part_of_completion_tokens() -> None:
    reply = generate(ask("Repeat: abcdefgh"), model(reasoning_tokens=40), random.Random(0))
    assert reply.reasoning_tokens == 40 and reply.completion_tokens == 2 + 40


def test_cached_tokens_follow_the_hit_rate() -> None:
    hits = [cached_tokens(100, model(cache_hit_rate=0.25), random.Random(i)) for i in range(2000)]
    assert set(hits) == {0, 75}
    assert 0.20 < hits.count(75) / len(hits) < 0.30
    assert cached_tokens(100, model(), random.Random(0)) == 0


def test_same_rng_seed_same_reply() -> None:
    a = generate(ask(tools=[WEATHER], tool_mode="required"), model(), random.Random(99))
    b = generate(ask(tools=[WEATHER], tool_mode="required"), model(), random.Random(99))
    assert a == b


@pytest.mark.parametrize("text", ["", "one", "one two", " lead", "a  b", "x y z\nw"])
def test_text_pieces_join_back_exactly(text: str) -> None:
    pieces = text_pieces(text)
    assert "".join(pieces) == text
    assert all(pieces)


# ---------------------------------------------------------------- embeddings


def test_embeddings_are_deterministic_unit_vectors() -> None:
    a, b = embed("the router picks a model", 384), embed("the router picks a model", 384)
    assert a == b and len(a) == 384
    assert math.isclose(sum(v * v for v in a), 1.0, rel_tol=1e-9)
    assert sum(1 for v in a if v != 0.0) > 300  # dense


def test_texts_sharing_words_are_more_similar() -> None:
    def cos(x: list[float], y: list[float]) -> float:
        return sum(p * q for p, q in zip(x, y, strict=True))

    base = embed("how do I reset my password", 256)
    near = embed("how can I reset the password", 256)
    far = embed("latency budget for streaming tokens", 256)
    assert cos(base, near) > 0.5 > cos(base, far)


def test_base64_is_little_endian_float32() -> None:
    import base64
    import struct

    vec = embed("x", 8)
    decoded = struct.unpack("<8f", base64.b64decode(to_base64(vec)))
    assert all(math.isclose(p, q, rel_tol=1e-6, abs_tol=1e-7) for p, q in zip(decoded, vec, strict=True))


# ---------------------------------------------------------------- faults and latency draws


def test_fault_slices_match_rates() -> None:
    edges = fault_edges(Faults(rate_limit=0.1, hang=0.2, cut_stream=0.05))
    assert draw_fault(edges, 0.05) is Fault.RATE_LIMIT
    assert draw_fault(edges, 0.15) is Fault.HANG
    assert draw_fault(edges, 0.32) is Fault.CUT_STREAM
    assert draw_fault(edges, 0.36) is None
    assert draw_fault(fault_edges(Faults()), 0.0) is None


def test_lognormal_quantiles_match_p50_and_p95() -> None:
    spec = Latency(p50=200, p95=800)
    assert math.isclose(lognormal_ms(spec, 0.0), 200)
    assert math.isclose(lognormal_ms(spec, 1.6448536269514722), 800, rel_tol=1e-9)
    assert lognormal_ms(spec, 50.0) == 800 * 4.0  # the tail is capped
    assert lognormal_ms(Latency(p50=0), 1.0) == 0.0


def test_ttft_draws_have_the_configured_percentiles() -> None:
    m = model(ttft_ms=Latency(p50=100, p95=400))
    draws = sorted(ttft_seconds(m, random.Random(i)) * 1000 for i in range(4000))
    p50, p95 = draws[len(draws) // 2], draws[int(len(draws) * 0.95)]
    assert 90 < p50 < 110
    assert 340 < p95 < 460
    assert ttft_seconds(model(ttft_ms=30), random.Random(0)) == 0.03


def test_a_system_prompt_asking_for_valid_json_gets_json() -> None:
    import json

    plain = ask(system_text="Respond with a single valid JSON object only.")
    doc = json.loads(generate(plain, model(), random.Random(1)).text)
    assert set(doc) == {"answer"}
    schema = {
        "type": "object",
        "properties": {"label": {"enum": ["yes", "no"]}, "score": {"type": "number"}},
        "required": ["label", "score"],
        "additionalProperties": False,
    }
    instruction = "Respond with a single valid JSON object only, conforming to this JSON Schema (no prose):\n"
    instructed = ask(system_text=instruction + json.dumps(schema) + "\nThanks.")
    for seed in range(10):
        jsonschema.validate(json.loads(generate(instructed, model(), random.Random(seed)).text), schema)
    chatty = ask(system_text="You explain JSON to beginners.")
    assert not generate(chatty, model(), random.Random(1)).text.startswith("{")
