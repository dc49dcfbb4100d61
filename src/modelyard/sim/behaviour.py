"""What a simulated model answers: deterministic text, tool calls and JSON from a seeded RNG.

Conventions tests rely on (checked in this order):

* the last user text is the prompt of an answer key's case (`sim/answer_keys.py`), no tool result follows it
  and no tools are given → the case's `reference` verbatim with probability `SimModel.accuracy(task)`, else
  its `wrong` answer (or a derived plausible wrong one); JSON mode changes nothing (the reference is the
  document). Right or wrong is drawn from (model, prompt, the request's `seed`) alone, so it is reproducible;

* tools given and the tool choice asks for a call (required / any / a named tool), or is `auto` and the
  last user text names a tool (or says ``call all tools``) and the last message is not a tool result
  → tool calls. Arguments: the JSON object the last user text writes right after the tool's name, verbatim
  (``Use Read {"file_path": "/tmp/x"}``), else generated from the tool's JSON-Schema parameters with only the
  required top-level properties. The tool called is the named
  one, else the one the last user text names first (the first declared when it names none), as a model
  would; ``call all tools`` gives two calls unless parallel calls are off;
* JSON mode → a JSON document: an instance of the request's schema when one is given (whatever the system
  prompt says), else of the schema the system prompt gives, else ``{"answer": "..."}``;
  a system prompt asking for ``valid JSON`` counts as JSON mode (real models follow such instructions, and
  the gateway writes one for providers without a native JSON mode), with the JSON Schema that follows the
  words ``JSON Schema`` in it, if any;
* the last message is a tool result → ``Tool result received: `` + its first 200 characters;
* the last user text contains ``Repeat: <text>`` → exactly ``<text>`` (everything after the marker);
* otherwise words from a fixed vocabulary, as many tokens as the model's `output_tokens` draw.

Text answers honour `stop` sequences and are cut at `max_tokens` (finish "length"); JSON and tool
arguments are never cut. Token counts are the cheap estimate `count_tokens` (about 4 characters a token).
"""

from __future__ import annotations

import json
import random
from typing import Any

import msgspec

from modelyard.sim.answer_keys import AnswerKeys
from modelyard.sim.fleet import SimModel, TokenRange
from modelyard.sim.instance import instance
from modelyard.sim.shapes import Ask, Finish, Reply, ToolCallOut, ToolSpec

#: Tokens an image part counts for in a prompt.
IMAGE_TOKENS = 85
TOOL_RESULT_PREFIX = "Tool result received: "
REPEAT_MARKER = "Repeat: "
CALL_ALL_MARKER = "call all tools"
JSON_INSTRUCTION = "valid json"
SCHEMA_MARKER = "JSON Schema"

VOCAB: tuple[str, ...] = (
    "the",
    "a",
    "model",
    "router",
    "gateway",
    "token",
    "stream",
    "answer",
    "request",
    "latency",
    "budget",
    "cache",
    "fallback",
    "provider",
    "quickly",
    "carefully",
    "simply",
    "always",
    "often",
    "never",
    "system",
    "signal",
    "value",
    "vector",
    "route",
    "path",
    "retry",
    "window",
    "prompt",
    "result",
    "context",
    "quality",
    "price",
    "fast",
    "slow",
    "small",
    "large",
    "medium",
    "every",
    "some",
    "many",
    "few",
    "because",
    "while",
    "and",
    "but",
    "so",
    "then",
    "when",
    "where",
    "how",
    "why",
    "this",
    "that",
    "these",
    "those",
    "it",
    "we",
    "they",
    "you",
    "is",
    "are",
    "was",
    "be",
    "will",
    "can",
    "may",
    "should",
    "could",
    "would",
    "plan",
    "step",
    "tool",
    "check",
    "build",
    "test",
    "measure",
    "serve",
    "send",
    "read",
    "write",
    "find",
    "choose",
    "keep",
    "clear",
    "bright",
    "steady",
    "calm",
    "open",
    "local",
    "remote",
    "shared",
    "simple",
    "direct",
    "final",
    "first",
    "next",
    "last",
    "new",
    "old",
    "good",
)

_encode = msgspec.json.Encoder().encode


def count_tokens(text: str) -> int:
    """The simulator's token estimate: about four characters a token."""
    return (len(text) + 3) // 4


def draw_count(spec: int | TokenRange, rng: random.Random) -> int:
    if isinstance(spec, int):
        return spec
    return rng.randint(spec.min, spec.max)


def generate(ask: Ask, model: SimModel, rng: random.Random, keys: AnswerKeys | None = None) -> Reply:
    """One answer (one choice) to `ask`; `keys`: the answer keys of the simulator, if any."""
    reasoning = draw_count(model.reasoning_tokens, rng)
    if keys and not ask.tools and ask.tool_result is None:
        key = keys.get(ask.last_user_text)
        if key is not None:
            text, _ = keys.answer(key, model.name, model.accuracy(key.task), ask.seed)
            if ask.json_mode or JSON_INSTRUCTION in ask.system_text.lower():
                return Reply(text, "stop", count_tokens(text) + reasoning, reasoning_tokens=reasoning)
            return _finish_text(text, ask, reasoning)
    calls = tool_calls(ask, rng)
    if calls:
        tokens = sum(count_tokens(c.name) + count_tokens(c.arguments) for c in calls)
        return Reply("", "tool_calls", tokens + reasoning, calls, reasoning_tokens=reasoning)
    if ask.json_mode or JSON_INSTRUCTION in ask.system_text.lower():
        text = json_document(ask, rng)
        return Reply(text, "stop", count_tokens(text) + reasoning, reasoning_tokens=reasoning)
    if ask.tool_result is not None:
        text = TOOL_RESULT_PREFIX + ask.tool_result[:200]
    elif REPEAT_MARKER in ask.last_user_text:
        text = ask.last_user_text[ask.last_user_text.index(REPEAT_MARKER) + len(REPEAT_MARKER) :]
    else:
        text = compose(draw_count(model.output_tokens, rng), rng)
    return _finish_text(text, ask, reasoning)


def _finish_text(text: str, ask: Ask, reasoning: int) -> Reply:
    """Apply stop sequences, then the token cap, as a model generating left to right would."""
    finish: Finish = "stop"
    stop_sequence = None
    if ask.stop:
        cut = len(text)
        for seq in ask.stop:
            at = text.find(seq) if seq else -1
            if 0 <= at < cut:
                cut, stop_sequence = at, seq
        if stop_sequence is not None:
            text, finish = text[:cut], "stop_sequence"
    cap = ask.max_tokens
    if cap is not None and count_tokens(text) > cap:
        text, finish, stop_sequence = _truncate(text, cap), "length", None
    return Reply(text, finish, count_tokens(text) + reasoning, stop_sequence=stop_sequence, reasoning_tokens=reasoning)


def _truncate(text: str, cap: int) -> str:
    """The longest prefix within `cap` tokens, cut at a word boundary when there is one."""
    limit = max(0, cap * 4)
    if limit == 0:
        return ""
    head = text[:limit]
    space = head.rfind(" ")
    return head[:space] if space > 0 and len(text) > limit and text[limit] != " " else head


def _sentences(words: int, rng: random.Random) -> str:
    """`words` vocabulary words in sentences of 6 to 14 words."""
    picked = rng.choices(VOCAB, k=words)
    at = 0
    while at < words:
        picked[at] = picked[at].capitalize()
        at += rng.randint(6, 14)
        picked[min(at, words) - 1] += "."
    return " ".join(picked)


#: A fixed passage answers are cut from: one slice per answer instead of one draw per word (speed).
_CORPUS = _sentences(12_000, random.Random(20240517))


def compose(tokens: int, rng: random.Random) -> str:
    """Sentences of vocabulary words, at most `tokens` tokens long and within a word of it."""
    budget = tokens * 4
    if budget <= 0:
        return ""
    parts: list[str] = []
    left = budget
    while left > 0:
        span = min(left, len(_CORPUS) // 2)
        start = _CORPUS.find(". ", rng.randrange(len(_CORPUS) - span - 64)) + 2
        parts.append(_CORPUS[start : start + span])
        left -= span + 1
    text = " ".join(parts)
    cut = text.rfind(" ", 0, budget)
    text = text[:cut] if cut > 0 else text[: max(1, budget - 1)]
    return text if text.endswith(".") else text + "."


def tool_calls(ask: Ask, rng: random.Random) -> list[ToolCallOut]:
    chosen = _chosen_tools(ask)
    return [_call(tool, rng, _named_arguments(tool, ask.last_user_text)) for tool in chosen]


def _chosen_tools(ask: Ask) -> list[ToolSpec]:
    if not ask.tools or ask.tool_mode == "none":
        return []
    if ask.tool_name is not None:
        named = [t for t in ask.tools if t.name == ask.tool_name]
        return named[:1] or ask.tools[:1]
    wants_all = CALL_ALL_MARKER in ask.last_user_text.lower()
    mentioned = _named_first(ask.tools, ask.last_user_text)
    if ask.tool_mode == "auto" and (ask.tool_result is not None or not (mentioned or wants_all)):
        return []
    first = mentioned or ask.tools[0]
    if not (wants_all and ask.parallel_tools):
        return [first]
    others = [t for t in ask.tools if t is not first]
    return [first, others[0] if others else first]


def _named_first(tools: list[ToolSpec], text: str) -> ToolSpec | None:
    """The tool whose name appears first in `text` (the longest name where two start at one place:
    `read_file` over `read`)."""
    best: tuple[int, int] | None = None
    found = None
    for tool in tools:
        at = text.find(tool.name) if tool.name else -1
        if at >= 0 and (best is None or (at, -len(tool.name)) < best):
            best, found = (at, -len(tool.name)), tool
    return found


def _named_arguments(tool: ToolSpec, text: str) -> dict[str, Any] | None:
    """The JSON object written right after the tool's name in the user's text (`Use Read {"file_path": …}`),
    as a model would take arguments the user spelled out; None when there is none."""
    at = text.find(tool.name) if tool.name else -1
    if at < 0:
        return None
    start = at + len(tool.name)
    while start < len(text) and text[start] in " \t\n:":
        start += 1
    if start >= len(text) or text[start] != "{":
        return None
    try:
        args, _ = json.JSONDecoder().raw_decode(text, start)
    except ValueError:
        return None
    return args if isinstance(args, dict) else None


def _call(tool: ToolSpec, rng: random.Random, named: dict[str, Any] | None = None) -> ToolCallOut:
    """A call of `tool`: the arguments the user named, else an instance of its parameters with only the required
    properties at the top level (a model leaves out what it need not say; random optional arguments make real
    agents' tools fail, e.g. Claude Code's Read with a made-up `pages`)."""
    args: Any = named
    if args is None:
        schema = tool.parameters if tool.parameters else {"type": "object", "properties": {}}
        props = schema.get("properties")
        if isinstance(props, dict):
            required = set(schema.get("required") or ())
            schema = {**schema, "properties": {k: v for k, v in props.items() if k in required}}
        args = instance(schema, rng)
    if not isinstance(args, dict):
        args = {"value": args}
    return ToolCallOut(f"{rng.getrandbits(96):024x}", tool.name, _encode(args).decode(), args)


def json_document(ask: Ask, rng: random.Random) -> str:
    schema = ask.json_schema if ask.json_mode and ask.json_schema else _instructed_schema(ask.system_text)
    if schema:
        return _encode(instance(schema, rng)).decode()
    return _encode({"answer": compose(rng.randint(4, 12), rng)}).decode()


def _instructed_schema(system: str) -> dict[str, Any] | None:
    """The JSON object that follows the words "JSON Schema" in a system prompt, if any."""
    at = system.find(SCHEMA_MARKER)
    start = system.find("{", at) if at >= 0 else -1
    if start < 0:
        return None
    try:
        schema, _ = json.JSONDecoder().raw_decode(system, start)
    except ValueError:
        return None
    return schema if isinstance(schema, dict) else None


def cached_tokens(prompt_tokens: int, model: SimModel, rng: random.Random) -> int:
    """Prompt tokens reported as a cache hit: three quarters of the prompt, `cache_hit_rate` of the time."""
    if model.cache_hit_rate <= 0.0 or rng.random() >= model.cache_hit_rate:
        return 0
    return prompt_tokens * 3 // 4


def text_pieces(text: str) -> list[str]:
    """The stream deltas of a text: one word each (a token or two), joining back to exactly `text`."""
    if not text:
        return []
    words = text.split(" ")
    pieces = [words[0]] if words[0] else []
    pieces.extend(" " + w for w in words[1:])
    return pieces
