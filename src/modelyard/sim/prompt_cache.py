"""The simulator's prompt cache: a repeated prompt prefix on the same model is reported as cached tokens.

Providers cache the prefix of a prompt (tools, system, then the messages in order) per deployment, in blocks
of tokens, for a few minutes after its last use, and only from a minimum length (OpenAI: 1024 tokens in
128-token steps, about 5-10 minutes; Anthropic: 1024 tokens at a cache breakpoint, 5 minutes; Gemini's
implicit cache: similar). This module models that much: a prompt is cut into *segments* (everything before
the messages, then one per message), the running hash at each segment boundary is a cache entry, and a
later prompt that starts with the same segments reads the longest such prefix still in the cache.

An agent session resends its whole, growing conversation each turn, so on a deployment that served the
previous turn nearly the whole prompt is a cache hit; on another deployment, none of it is. That is the
effect stickiness (routing/sticky.py) is measured by.

Wires use it in two steps: `prefix_segments` (or `segments_from_body`) when they read a request, and the
app's `PromptCache.use` once the request is admitted; the `CacheUse` it returns is what each wire reports
(OpenAI `prompt_tokens_details.cached_tokens`, Anthropic `cache_read_input_tokens` /
`cache_creation_input_tokens`, Gemini `cachedContentTokenCount`).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

BLOCK_TOKENS = 128
MIN_TOKENS = 1024
TTL_S = 300.0
MAX_ENTRIES = 16_384
#: Boundaries written per request, from the end: the full prompt and the few before it (a client that
#: branches from an earlier turn still hits); bounded so a long conversation costs a few writes per turn.
WRITES_PER_REQUEST = 4

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
#: Request fields that come before the messages in a prompt, in the order providers lay them out.
_HEAD_FIELDS = ("tools", "system", "instructions", "systemInstruction", "system_instruction", "toolConfig")
_TURN_FIELDS = ("messages", "contents", "input")


@dataclass(frozen=True, slots=True)
class CacheUse:
    """What one request did with the cache, in prompt tokens."""

    #: Served from the cache (OpenAI `cached_tokens`, Anthropic `cache_read_input_tokens`).
    read: int = 0
    #: Newly cached by this request (Anthropic `cache_creation_input_tokens`).
    written: int = 0


NO_USE = CacheUse()


def prefix_segments(head: Any, messages: Iterable[Any]) -> list[bytes]:
    """The segments of a prompt: `head` (tools, system: anything msgspec encodes) then each message."""
    return [_encode(head), *(_encode(m) for m in messages)]


def segments_from_body(body: bytes) -> list[bytes]:
    """The segments of any wire's JSON request body (OpenAI, Gemini, Responses), for a wire that set no
    `Ask.prefix`; [] if unreadable. (Anthropic's wire cuts its own: only up to its `cache_control` marks.)"""
    try:
        data = _decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return []
    if not isinstance(data, dict):
        return []
    turns: Any = next((data[f] for f in _TURN_FIELDS if isinstance(data.get(f), list)), [])
    return prefix_segments([data.get(f) for f in _HEAD_FIELDS], turns)


def _tokens(chars: int) -> int:
    return (chars + 3) // 4  # the simulator's estimate (sim.behaviour.count_tokens)


class PromptCache:
    """Cached prefixes per model: a bounded LRU of (model, prefix hash) → cached tokens, with a TTL.

    Not thread-safe: the simulator runs on one event loop. `clock` is injectable for tests.
    """

    def __init__(
        self,
        *,
        block_tokens: int = BLOCK_TOKENS,
        min_tokens: int = MIN_TOKENS,
        ttl_s: float = TTL_S,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.block_tokens = max(1, block_tokens)
        self.min_tokens = min_tokens
        self.ttl_s = ttl_s
        self.max_entries = max(1, max_entries)
        self._clock = clock
        self._entries: OrderedDict[tuple[str, bytes], tuple[int, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def use(self, model: str, segments: Sequence[bytes], prompt_tokens: int) -> CacheUse:
        """Look the prompt's longest cached prefix up on `model`, then cache its prefixes.

        `prompt_tokens`: the prompt's own count; cached tokens never exceed it.
        """
        if not segments or prompt_tokens < self.min_tokens:
            return NO_USE
        now = self._clock()
        boundaries = self._boundaries(segments, prompt_tokens)
        read = 0
        entries = self._entries
        for digest, _ in reversed(boundaries):
            entry = entries.get((model, digest))
            if entry is None:
                continue
            tokens, expires = entry
            if expires <= now:
                del entries[(model, digest)]
                continue
            read = min(tokens, prompt_tokens)
            break
        for digest, tokens in boundaries[-WRITES_PER_REQUEST:]:
            key = (model, digest)
            entries[key] = (tokens, now + self.ttl_s)  # a hit refreshes the entry's lifetime, as providers do
            entries.move_to_end(key)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
        full = boundaries[-1][1] if boundaries else 0
        return CacheUse(read=read, written=max(0, full - read))

    def _boundaries(self, segments: Sequence[bytes], prompt_tokens: int) -> list[tuple[bytes, int]]:
        """(running hash, cacheable tokens) at each segment boundary at or past the minimum length."""
        running = hashlib.sha1(usedforsecurity=False)  # a fast running hash; nothing secret here
        chars = 0
        out: list[tuple[bytes, int]] = []
        block = self.block_tokens
        for segment in segments:
            running.update(len(segment).to_bytes(4, "little"))
            running.update(segment)
            chars += len(segment)
            tokens = min(_tokens(chars), prompt_tokens) // block * block
            if tokens >= self.min_tokens:
                out.append((running.copy().digest(), tokens))
        return out
