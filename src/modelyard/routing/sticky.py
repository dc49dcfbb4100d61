"""Prompt-cache-aware stickiness: one conversation keeps to one deployment, with no shared state.

Providers cache a prompt's prefix per deployment (per account and region), so an agent session that hops
between equal deployments pays the full input price on every hop. Each request of a session carries a
*session key*; rendezvous (highest-random-weight) hashing of that key over the healthy candidates picks the
same deployment on every replica, with no map to share. When the chosen deployment leaves the candidates
(open circuit, out of headroom, outside a constraint) only its sessions move, and they move back when it
returns, because the choice is a pure function of (key, candidate names, weights).

Stickiness never overrides a strategy's intent: deterministic rankings (priority tiers, cost, rules) are
left as they are; where a strategy would draw at random (a weighted draw, a tie within a latency buffer,
equally busy deployments) the rendezvous choice replaces the draw.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

from modelyard.config.model import Deployment
from modelyard.schema.chat import (
    ChatRequest,
    DeveloperMessage,
    FunctionTool,
    SystemMessage,
    UserMessage,
    text_of,
)

#: Strategies whose ranking depends on a random draw or on a tie; only they are made sticky.
STICKY_STRATEGIES = frozenset({"weighted", "priority", "least-latency", "latency", "least-busy", "learned"})

#: The header a client may name its session with (any string; scoped by the API key like every session).
SESSION_HEADER = b"x-modelyard-session"

#: Characters hashed from each end of a long prefix part (the system prompt, the first user message).
SAMPLE_CHARS = 1024

#: The longest explicit session id kept (ids are hashed, so a longer one only costs hashing time).
MAX_EXPLICIT = 512

_TWO53 = float(1 << 53)


def explicit_session(header: str | None, body: Mapping[str, Any] | None) -> str | None:
    """The client's own session id, if it names one: the `x-modelyard-session` header, else the body's
    `prompt_cache_key` (OpenAI chat completions and Responses), else Anthropic's `metadata.user_id`
    (Claude Code puts its session id there). A Responses `previous_response_id` changes every turn, so it is
    no session id; the conversation it restores has a stable prefix, which the prefix hash finds."""
    if header:
        return header
    if not body:
        return None
    key = body.get("prompt_cache_key")
    if isinstance(key, str) and key:
        return key
    metadata = body.get("metadata")
    user = metadata.get("user_id") if isinstance(metadata, dict) else None  # decoded JSON: a dict, no ABC check
    return user if isinstance(user, str) and user else None


def session_key(key_id: str | None, explicit: str | None, req: ChatRequest) -> str:
    """The session a request belongs to, scoped by the API key (so two tenants never share one).

    `explicit`: an id the client sent (see `explicit_session`). Without one, a hash of the conversation's
    stable prefix: the system/developer instructions, the tool names and the first user message, which stay
    the same on every turn of an agent session while the rest of the conversation grows. Each part is
    sampled (its length, its first and last `SAMPLE_CHARS`) so the cost stays flat for a 50 KB system prompt;
    a collision only makes two conversations of one key share a deployment.
    """
    digest = hashlib.sha1(usedforsecurity=False)  # a spreading hash, not a secret; about 3x blake2b's speed here
    digest.update((key_id or "").encode())
    if explicit:
        digest.update(b"\x00e\x00")
        digest.update(explicit[:MAX_EXPLICIT].encode())
        return digest.hexdigest()[:24]
    digest.update(b"\x00p\x00")
    for message in req.messages:
        if isinstance(message, SystemMessage | DeveloperMessage):
            _sample(digest, b"s", text_of(message.content))
        elif isinstance(message, UserMessage):
            _sample(digest, b"u", text_of(message.content))
            break
    if req.tools:
        names = [t.function.name if isinstance(t, FunctionTool) else t.custom.name for t in req.tools]
        _sample(digest, b"t", "\x00".join(names))
    return digest.hexdigest()[:24]


def _sample(digest: Any, tag: bytes, text: str) -> None:
    digest.update(tag + len(text).to_bytes(8, "little"))
    if len(text) > 2 * SAMPLE_CHARS:
        text = text[:SAMPLE_CHARS] + text[-SAMPLE_CHARS:]
    digest.update(text.encode())


def applies(strategy: str, sticky: bool) -> bool:
    """Whether a model group's requests should carry a session key (so the key is computed only then)."""
    return sticky and strategy in STICKY_STRATEGIES


def _unit(session: str, name: str) -> float:
    """A uniform draw in (0, 1) that depends only on (session, deployment name)."""
    raw = hashlib.blake2b(f"{session}\x00{name}".encode(), digest_size=8).digest()
    return ((int.from_bytes(raw, "little") >> 11) + 0.5) / _TWO53  # 53 bits: exact, never 0 or 1


def score(session: str, dep: Deployment, weighted: bool = True) -> float:
    """The rendezvous score of `dep` for `session`: highest wins.

    Weighted: -w / ln(u), so a deployment wins with probability w / Σw over sessions (the exponential
    race: -ln(u)/w is an Exp(w) arrival time, and the earliest arrival is the weighted draw). A weight
    <= 0 never wins unless every candidate has one.
    """
    u = _unit(session, dep.name)
    if not weighted:
        return u
    weight = dep.weight
    if weight <= 0:
        return -math.inf
    return -weight / math.log(u)


def choose(session: str, candidates: Sequence[Deployment], weighted: bool = True) -> int:
    """Index of the rendezvous choice among `candidates` (which must not be empty)."""
    best, best_score = 0, -math.inf
    for i, dep in enumerate(candidates):
        s = score(session, dep, weighted)
        if s > best_score or (s == best_score and dep.name < candidates[best].name):
            best, best_score = i, s
    return best


def rank(session: str, candidates: Sequence[Deployment], weighted: bool = True) -> list[Deployment]:
    """All candidates by rendezvous score, best first (deterministic for a session)."""
    return sorted(candidates, key=lambda dep: (-score(session, dep, weighted), dep.name))
