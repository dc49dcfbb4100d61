"""The simulator answers like a model where clients depend on it: a forced tool call picks the tool the
user named, and a response schema shapes the answer whatever the system prompt says."""

from __future__ import annotations

import json
import random
from typing import Any

import jsonschema
import pytest

from modelyard.sim.app import create_app
from modelyard.sim.behaviour import count_tokens, generate
from modelyard.sim.fleet import SimModel
from modelyard.sim.shapes import Ask, ToolSpec
from tests.unit.sim.sim_helpers import asgi_call, fleet

READ = ToolSpec("read", {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]})
READ_FILE = ToolSpec("read_file", {"type": "object", "properties": {"path": {"type": "string"}}})
BASH = ToolSpec("bash", {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]})
TOOLS = [READ, READ_FILE, BASH]
SCHEMA = {
    "type": "object",
    "properties": {
        "verdict": {"enum": ["pass", "fail"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "notes": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    },
    "required": ["verdict", "score", "notes"],
    "additionalProperties": False,
}


def ask(text: str, **kw: Any) -> Ask:
    return Ask(model="m", prompt_tokens=count_tokens(text), last_user_text=text, tools=list(TOOLS), **kw)


@pytest.mark.parametrize(
    ("mode", "text", "expected"),
    [
        ("required", "run bash to list the files", "bash"),
        ("required", "use read_file on setup.py, then bash", "read_file"),  # the first named, longest match
        ("required", "please read it", "read"),
        ("required", "no tool named here", "read"),  # none named: the first declared
        ("auto", "now bash it, not read", "bash"),
    ],
)
def test_a_forced_call_picks_the_tool_the_user_names(mode: str, text: str, expected: str) -> None:
    reply = generate(ask(text, tool_mode=mode), SimModel(name="m"), random.Random(3))
    assert [c.name for c in reply.tool_calls] == [expected]


@pytest.mark.parametrize(
    "system",
    [
        "Answer in French prose, never JSON.",
        'Reply with valid JSON following this JSON Schema: {"type": "object", "required": ["other"]}',
        "Repeat: not this",
    ],
)
def test_a_response_schema_wins_over_the_system_prompt(system: str) -> None:
    for seed in range(20):
        question = Ask(model="m", prompt_tokens=10, last_user_text="Repeat: hello", system_text=system, json_mode=True)
        question.json_schema = SCHEMA
        jsonschema.validate(json.loads(generate(question, SimModel(name="m"), random.Random(seed)).text), SCHEMA)


def test_json_object_mode_follows_the_schema_the_system_prompt_gives() -> None:
    system = "Reply with valid JSON. JSON Schema: " + json.dumps(SCHEMA)
    question = Ask(model="m", prompt_tokens=10, system_text=system, json_mode=True)
    jsonschema.validate(json.loads(generate(question, SimModel(name="m"), random.Random(1)).text), SCHEMA)


async def test_openai_required_tool_choice_and_json_schema_over_the_wire() -> None:
    app = create_app(fleet({"name": "m"}))
    tools = [{"type": "function", "function": {"name": t.name, "parameters": t.parameters}} for t in TOOLS]
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "run bash please"}],
        "tools": tools,
        "tool_choice": "required",
    }
    calls = (await asgi_call(app, "POST", "/v1/chat/completions", body)).json()["choices"][0]["message"]
    assert [c["function"]["name"] for c in calls["tool_calls"]] == ["bash"]
    body = {
        "model": "m",
        "messages": [{"role": "system", "content": "Write a haiku."}, {"role": "user", "content": "go"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "review", "schema": SCHEMA}},
    }
    text = (await asgi_call(app, "POST", "/v1/chat/completions", body)).json()["choices"][0]["message"]["content"]
    jsonschema.validate(json.loads(text), SCHEMA)


async def test_gemini_any_mode_and_response_schema_over_the_wire() -> None:
    app = create_app(fleet({"name": "m"}))
    decls = [{"name": t.name, "parametersJsonSchema": t.parameters} for t in TOOLS]
    body = {
        "contents": [{"role": "user", "parts": [{"text": "call read_file"}]}],
        "tools": [{"functionDeclarations": decls}],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY"}},
    }
    path, headers = "/v1beta/models/m:generateContent", {"x-goog-api-key": "k"}
    parts = (await asgi_call(app, "POST", path, body, headers)).json()["candidates"][0]["content"]["parts"]
    assert [p["functionCall"]["name"] for p in parts] == ["read_file"]
    body = {
        "systemInstruction": {"parts": [{"text": "Talk freely."}]},
        "contents": [{"role": "user", "parts": [{"text": "review"}]}],
        "generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": SCHEMA},
    }
    data = (await asgi_call(app, "POST", path, body, headers)).json()
    jsonschema.validate(json.loads(data["candidates"][0]["content"]["parts"][0]["text"]), SCHEMA)


OPTIONAL = ToolSpec(
    "Read",
    {
        "type": "object",
        "properties": {"file_path": {"type": "string"}, "pages": {"type": "string"}, "limit": {"type": "integer"}},
        "required": ["file_path"],
    },
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'Use Read {"file_path": "/tmp/x/note.txt", "limit": 3} and tell me',
            {"file_path": "/tmp/x/note.txt", "limit": 3},
        ),
        ('Read: {"file_path": "a b"}', {"file_path": "a b"}),
    ],
)
def test_arguments_the_user_spells_out_are_used_verbatim(text: str, expected: dict[str, Any]) -> None:
    reply = generate(
        Ask(model="m", prompt_tokens=9, last_user_text=text, tools=[OPTIONAL], tool_mode="required"),
        SimModel(name="m"),
        random.Random(1),
    )
    assert [json.loads(c.arguments) for c in reply.tool_calls] == [expected]


@pytest.mark.parametrize("seed", range(20))
def test_generated_arguments_hold_only_the_required_properties(seed: int) -> None:
    reply = generate(
        Ask(model="m", prompt_tokens=9, last_user_text="Use Read {broken json", tools=[OPTIONAL], tool_mode="required"),
        SimModel(name="m"),
        random.Random(seed),
    )
    (call,) = reply.tool_calls
    assert set(json.loads(call.arguments)) == {"file_path"}
