"""The semantic cache's partition for one request: the model, the key, and a digest of everything else the
request says except the text the embedding compares (its last user turn's text).

The embedding reads only that text, so two requests that share it but differ elsewhere (another system
prompt, other earlier turns, another image, `n`, tools, a response format) must never share an entry: each
field that can change the answer is in the digest. Fields that only change how the answer is delivered or
who is billed are left out, as the exact-match response cache leaves them out (`response_cache.IGNORED_FIELDS`).
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from modelyard.server.response_cache import IGNORED_FIELDS

_canonical = msgspec.json.Encoder(order="sorted").encode


def _without_last_user_text(messages: Any) -> Any:
    """The messages with the last user turn's text parts emptied (its images and audio kept)."""
    if not isinstance(messages, list):
        return messages
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = [p for p in content if not (isinstance(p, dict) and p.get("type") == "text")]
            else:
                content = ""
            return [*messages[:index], {**message, "content": content}, *messages[index + 1 :]]
    return messages


def semantic_namespace(model: str, key_id: str | None, raw: dict[str, Any]) -> str:
    """`model`, the key, and the SHA-256 of the request without its compared text (module docstring)."""
    kept = {k: v for k, v in raw.items() if k not in IGNORED_FIELDS}
    kept["messages"] = _without_last_user_text(kept.get("messages"))
    digest = hashlib.sha256(_canonical(kept)).hexdigest()[:32]
    return f"{model}\x00{key_id or ''}\x00{digest}"
