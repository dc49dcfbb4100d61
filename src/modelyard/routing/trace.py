"""A request's routing decision and attempts as compact, bounded JSON: what the spend log keeps for every
request, and what the dashboard's request page reads back.

Pure: no clock, no I/O. The writers run on the hot path (once per request, when its spend record is built),
so the stored form is positional (JSON arrays, built as tuples, one shared encoder: smaller, and about a third
of the cost of objects) and a skip reason is formatted only when there is a skip. Every list and text is capped,
so a row's size is bounded whatever the request or the config holds. The readers are for pages: they give
dicts named by the Structs' fields, and a missing or malformed value reads as empty, never as an exception.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice
from typing import Any

import msgspec

from modelyard.accounting.spend import escape_text
from modelyard.routing.attempts import ERROR_CHARS, AttemptRecord
from modelyard.routing.plan import Plan

#: Ranked deployments, skipped deployments, fallbacks and strategy notes kept per request.
MAX_RANKED = 32
MAX_SKIPPED = 32
MAX_FALLBACKS = 32
MAX_NOTES = 32
#: Attempts kept per request (a request makes at most `max_attempts`, 8 by default).
MAX_ATTEMPTS = 16
#: Characters kept of a skip reason, a strategy note, and any name or text that may come from a client.
REASON_CHARS = 200
NOTE_CHARS = 300
NAME_CHARS = 256


class RouteFeatures(msgspec.Struct, array_like=True):
    """The request features the decision read."""

    prompt_tokens: int = 0
    max_tokens: int | None = None
    tools: bool = False
    images: bool = False
    json: bool = False
    task: str | None = None


class RouteTrace(msgspec.Struct, array_like=True):
    """The routing decision of one request (its first plan; skips the executor's walk added included).

    Stored as a JSON array in this field order, trailing empty values left out (the usual request stores
    `["cost",["a","b"],[30,64],"m"]`); fields are only ever appended, so an older row reads with defaults.
    """

    strategy: str = ""
    ranked: list[str] = msgspec.field(default_factory=list)
    features: RouteFeatures = msgspec.field(default_factory=RouteFeatures)
    model: str = ""
    #: How many were skipped in all (more than `skipped` holds when it was capped).
    skipped_total: int = 0
    #: [deployment, reason] pairs.
    skipped: list[tuple[str, str]] = msgspec.field(default_factory=list)
    fallbacks: list[str] = msgspec.field(default_factory=list)
    sticky: str | None = None
    rule: str | None = None
    #: Whether the plan was made in explain mode (the client asked, or the request was sampled): only then
    #: does `notes` hold the strategy's notes and scores per deployment.
    explained: bool = False
    notes: dict[str, str] | None = None
    #: The deployment recalibration's exploration sent the request to (the learned strategy ranked it first
    #: because it was explored, not because it was predicted best).
    explored: str | None = None


class AttemptTrace(msgspec.Struct, array_like=True):
    """One attempt: where, when (ms after the request started), how long, how it ended, what it cost.

    Stored as a JSON array in this field order, trailing empty values left out (as `RouteTrace`)."""

    deployment: str = ""
    provider: str = ""
    outcome: str = ""
    start_ms: float = 0.0
    ms: float = 0.0
    cost_usd: float = 0.0
    status: int | None = None
    error: str = ""
    hedge: bool = False


_encode = msgspec.json.Encoder().encode
_read_route = msgspec.json.Decoder(RouteTrace).decode
_read_attempts = msgspec.json.Decoder(list[AttemptTrace]).decode


def _trimmed(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """`values` without its trailing empty ones (every field's default is empty: the reader restores them).
    Each byte of a spend row costs the store's batched insert ~175 instructions (callgrind), so they count."""
    end = len(values)
    while end and not values[end - 1]:
        end -= 1
    return values if end == len(values) else values[:end]


def route_json(plan: Plan) -> str:
    """The plan as compact JSON (a `RouteTrace` array, built as tuples: about 3x cheaper than objects, and
    this runs for every request); reasons formatted here, once, and only for skips."""
    ctx = plan.ctx
    features = ctx.features
    task = features.task
    skipped = ctx.skipped
    fallbacks = plan.fallbacks
    explained = ctx.explain
    return _json(
        _trimmed(
            (
                plan.strategy,
                [dep.name for dep in plan.order[:MAX_RANKED]],
                _trimmed(
                    (
                        features.prompt_tokens,
                        features.max_output_tokens,
                        features.needs_tools,
                        features.needs_vision,
                        features.needs_json,
                        task[:NAME_CHARS] if task is not None else None,
                    )
                ),
                plan.model[:NAME_CHARS],
                len(skipped),
                [(s.deployment, s.reason[:REASON_CHARS]) for s in skipped[:MAX_SKIPPED]] if skipped else (),
                [name[:NAME_CHARS] for name in fallbacks[:MAX_FALLBACKS]] if fallbacks else (),
                ctx.sticky,
                plan.rule.text[:NOTE_CHARS] if plan.rule is not None else None,
                explained,
                {name: text[:NOTE_CHARS] for name, text in islice(ctx.notes.items(), MAX_NOTES)} if explained else None,
                ctx.explored,
            )
        )
    )


def attempts_json(records: Sequence[AttemptRecord], request_start: float) -> str:
    """The attempts as JSON (an array of `AttemptTrace` arrays); `request_start` on the clock the records'
    `started` is on (the executor's), so `start_ms` is the attempt's start relative to the request's. Times
    are cut to 0.1 ms (int(): round() costs more than the rest of a record)."""
    return _json(
        [
            _trimmed(
                (
                    r.deployment,
                    r.provider,
                    r.outcome,
                    int((r.started - request_start) * 10_000) / 10,
                    int(r.latency_ms * 10) / 10,
                    r.cost_usd,
                    r.status,
                    r.error[:ERROR_CHARS],
                    r.hedge,
                )
            )
            for r in records[:MAX_ATTEMPTS]
        ]
    )


def _json(value: Any) -> str:
    """`value` encoded; a lone surrogate in some client text (which UTF-8 cannot hold) written as an escape."""
    try:
        return _encode(value).decode()
    except UnicodeEncodeError:
        return _encode(_escaped(value)).decode()


def _escaped(value: Any) -> Any:
    if isinstance(value, str):
        return escape_text(value)
    if isinstance(value, list | tuple):
        return [_escaped(item) for item in value]
    if isinstance(value, dict):
        return {escape_text(key): _escaped(item) for key, item in value.items()}
    return value


def read_route(text: str | bytes | None) -> dict[str, Any]:
    """A stored route as a dict named by `RouteTrace`'s fields (`notes` {} when not explained); {} when
    missing or malformed."""
    if not text:
        return {}
    try:
        trace = _read_route(text)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeError, TypeError):
        return {}
    out = msgspec.structs.asdict(trace)
    out["features"] = msgspec.structs.asdict(trace.features)
    out["skipped"] = [list(pair) for pair in trace.skipped]
    out["notes"] = trace.notes or {}
    return out


def read_attempts(text: str | bytes | None) -> list[dict[str, Any]]:
    """Stored attempts as a list of dicts named by `AttemptTrace`'s fields; [] when missing or malformed."""
    if not text:
        return []
    try:
        traces = _read_attempts(text)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeError, TypeError):
        return []
    return [msgspec.structs.asdict(trace) for trace in traces]
