"""Guardrails on the live path: which checks apply to a request, and the pipeline's hooks that run them.

The checks themselves are `modelyard.guardrails` (pure, no I/O); this module decides which apply (the model
group's sets, the key's `guardrails` metadata, the request's `extra_body.modelyard.guardrails`, compiled once
at start or cached per request, bounded) and turns their verdicts into the gateway's behaviour:

- input: after decode and admission, before anything is sent upstream: `block` → 422 naming the check;
  `redact` → the canonical request rewritten (and the client's own bytes never forwarded);
- output, whole answers: a per-attempt vet in the executor (`retry` → the next candidate, `block` → 422);
- output, streams: `StreamFilter` between the executor's batches and the codec's encoder (held tail only);
  checks that need the whole answer make the executor read the stream whole before the client sees a byte.

Every finding goes to `x-modelyard-guardrails`, the spend log's `guardrails` column and `/metrics`.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

import msgspec

from modelyard.guardrails.compile import GuardSet, combine, compile_checks
from modelyard.guardrails.findings import Finding, header_value
from modelyard.guardrails.run import check_input, check_output
from modelyard.guardrails.stream import StreamGuard
from modelyard.routing.executor import Chunk, as_dict
from modelyard.schema.errors import ErrorKind, GatewayError, ProviderError
from modelyard.schema.guardrails import REDACTABLE, CheckSpec

if TYPE_CHECKING:
    from modelyard.config.model import Config
    from modelyard.providers.base import Completion
    from modelyard.schema.chat import ChatRequest
    from modelyard.server.codecs.base import Inbound
    from modelyard.server.context import RequestContext

__all__ = ["GuardIndex", "RequestGuards", "StreamFilter", "guard_error"]

#: Compiled per-request check lists kept (by their JSON); a client can send arbitrary specs, so bounded.
REQUEST_CACHE = 256
#: Combined sets kept, per (model, key sets, request specs).
COMBINED_CACHE = 1024
#: Request specs larger than this (JSON bytes) are compiled per request and never cached.
CACHEABLE_SPEC_BYTES = 4096
#: The built-in check names: always valid metric labels.
BUILT_IN = frozenset(
    {"pii", "secrets", "regex", "keywords", "json_schema", "injection", "empty", "truncated", "max_length", "python"}
)
HEADER = b"x-modelyard-guardrails"

_encode = msgspec.json.Encoder().encode
log = logging.getLogger("modelyard.guardrails")


class GuardIndex:
    """The gateway's guardrails, compiled once from the config; per-request combinations cached (bounded)."""

    def __init__(self, config: Config) -> None:
        self.sets: dict[str, GuardSet] = {name: compile_checks(specs) for name, specs in config.guardrails.items()}
        self.models: dict[str, GuardSet] = {}
        labels = set(BUILT_IN)
        for specs in config.guardrails.values():
            labels.update(spec.label for spec in specs)
        for name, group in config.models.items():
            if not group.guardrails:
                continue
            parts = [self.sets[e] if isinstance(e, str) else compile_checks([e]) for e in group.guardrails]
            labels.update(e.label for e in group.guardrails if isinstance(e, CheckSpec))
            self.models[name] = combine(*parts)
        #: Label values /metrics may show: configured names and built-in checks (a client's own `name`s map
        #: to their check's name, so traffic cannot grow the series).
        self.labels: frozenset[str] = frozenset(labels)
        self._requests: OrderedDict[bytes, GuardSet] = OrderedDict()
        self._combined: OrderedDict[tuple[str | None, tuple[str, ...], bytes], GuardSet] = OrderedDict()

    def metric_label(self, finding: Finding) -> str:
        return finding.label if finding.label in self.labels else finding.check

    def for_request(self, req: ChatRequest, ctx: RequestContext, target: str) -> RequestGuards | None:
        """The checks for one request (None when none apply: the usual case costs two dict probes).
        `target`: the configured model name the request resolved to."""
        model_set = self.models.get(target) if self.models else None
        key = ctx.key
        key_sets = key.guardrails if key is not None and key.guardrails else ()
        specs = req.modelyard.guardrails if req.modelyard is not None else None
        if model_set is None and not key_sets and not specs:
            return None
        spec_json = _encode(specs) if specs else b""
        cache_key = (target if model_set is not None else None, key_sets, spec_json)
        cacheable = len(spec_json) <= CACHEABLE_SPEC_BYTES
        guards = self._combined.get(cache_key) if cacheable else None
        if guards is None:
            guards = self._combine(model_set, key_sets, specs, spec_json, cacheable)
            if cacheable:
                _remember(self._combined, cache_key, guards, COMBINED_CACHE)
        else:
            self._combined.move_to_end(cache_key)
        return RequestGuards(guards, self)

    def _combine(
        self,
        model_set: GuardSet | None,
        key_sets: tuple[str, ...],
        specs: list[CheckSpec] | None,
        spec_json: bytes,
        cacheable: bool,
    ) -> GuardSet:
        parts: list[GuardSet] = [] if model_set is None else [model_set]
        for name in key_sets:
            found = self.sets.get(name)
            if found is None:  # fail closed: the key requires checks this gateway does not have
                raise GatewayError(
                    500,
                    f"this key requires the guardrail set {name!r}, which the gateway does not configure",
                    type="server_error",
                    code="guardrail_config",
                )
            parts.append(found)
        if specs:
            parts.append(self._request_set(specs, spec_json, cacheable))
        return combine(*parts)

    def _request_set(self, specs: list[CheckSpec], spec_json: bytes, cacheable: bool) -> GuardSet:
        compiled = self._requests.get(spec_json) if cacheable else None
        if compiled is not None:
            self._requests.move_to_end(spec_json)
            return compiled
        # A client's check is named as its own (`request.<name>`): it cannot pass for a configured check in
        # the header, the spend log or the metrics (the metric then counts it under the check's name).
        specs = [msgspec.structs.replace(spec, name=f"request.{spec.label}"[:80]) for spec in specs]
        try:
            compiled = compile_checks(specs, trusted=False)
        except ValueError as exc:
            raise GatewayError(400, f"modelyard.guardrails: {exc}", param="modelyard.guardrails") from None
        if cacheable:
            _remember(self._requests, spec_json, compiled, REQUEST_CACHE)
        return compiled


def _remember(cache: OrderedDict[Any, GuardSet], key: Any, value: GuardSet, bound: int) -> None:
    cache[key] = value
    if len(cache) > bound:
        cache.popitem(last=False)


class RequestGuards:
    """One request's checks and everything they found (`ctx.guards`)."""

    __slots__ = ("_text", "findings", "guards", "index", "response_format")

    def __init__(self, guards: GuardSet, index: GuardIndex) -> None:
        self.guards = guards
        self.index = index
        self.findings: list[Finding] = []
        self.response_format: Any = None
        self._text: tuple[int, str] | None = None

    @property
    def has_output(self) -> bool:
        return self.guards.has_output

    @property
    def buffers_stream(self) -> bool:
        """A stream is read whole before the client sees a byte: a check needs the whole answer, or a check
        may ask another candidate (only possible before the first byte)."""
        guards = self.guards
        return guards.has_output and (guards.whole_answer or guards.retries)

    def check_input(self, inbound: Inbound) -> None:
        """Input checks on the canonical request: raise the block, or rewrite the request when redacting."""
        req = inbound.req
        self.response_format = req.response_format
        if self.guards.input_checks:
            verdict = check_input(self.guards, req)
            self.findings.extend(verdict.findings)
            if verdict.blocked is not None:
                raise guard_error(verdict.blocked, "input")
            if verdict.request is not None:
                inbound.req = verdict.request
                inbound.raw = {**inbound.raw, "messages": msgspec.to_builtins(verdict.request.messages)}
                inbound.native = None  # the client's own bytes hold what was redacted
        if self.guards.has_output:
            _pinned_upstream(inbound)
            inbound.native = None  # the answer must be inspected, and may be rewritten

    def vet(self, completion: Completion) -> ProviderError | None:
        """The executor's per-attempt hook: output checks on every choice of a whole answer (its content with
        every check; reasoning, refusal and tool-call arguments with the span checks; logprobs dropped)."""
        for choice in completion.body.get("choices") or ():
            message = choice.get("message") or {}
            content = _as_text(message.get("content"))
            verdict = check_output(
                self.guards,
                content,
                finish_reason=choice.get("finish_reason"),
                response_format=self.response_format,
                tool_calls=message.get("tool_calls"),
            )
            self.findings.extend(verdict.findings)
            problem = _problem(verdict.blocked, verdict.retry)
            if problem is not None:
                return problem
            if verdict.text is not None or not isinstance(message.get("content"), str | None):
                message["content"] = verdict.text if verdict.text is not None else content
            problem = self._vet_side_texts(choice, message)
            if problem is not None:
                return problem
        return None

    def _vet_side_texts(self, choice: dict[str, Any], message: dict[str, Any]) -> ProviderError | None:
        """Text a client also receives besides `content`: the span checks run on it too."""
        spans = self.span_checks()
        if not spans:
            return None
        choice.pop("logprobs", None)  # each token's text: would spell out what was redacted
        for holder, key in _side_texts(message):
            verdict = check_output(spans, holder[key], finish_reason=None)
            self.findings.extend(verdict.findings)
            problem = _problem(verdict.blocked, verdict.retry)
            if problem is not None:
                return problem
            if verdict.text is not None:
                if key == "arguments" and not _still_json(verdict.text):
                    return ProviderError(
                        ErrorKind.GUARDRAIL_BLOCKED, "blocked by guardrails: a tool call's arguments held a match"
                    )
                holder[key] = verdict.text
        return None

    def span_checks(self) -> GuardSet:
        """The output checks that find spans (what runs on streams, reasoning, refusals and tool arguments)."""
        return self.guards.output_spans

    def vet_chunks(self, chunks: list[Chunk]) -> ProviderError | None:
        """The executor's hook for a stream read whole: the whole-answer checks, and every check whose action
        is `retry`, decided before the first byte (so a retry can still fail over). Span checks otherwise run in
        `StreamFilter`, as on any stream, and report from there (not twice)."""
        retries = self.guards.retries
        for text, finish, tools in _assemble(chunks):
            verdict = check_output(
                self.guards,
                text,
                finish_reason=finish,
                response_format=self.response_format,
                tool_calls=tools,
                skip_incremental=not retries,
            )
            self.findings.extend(
                f
                for f in verdict.findings
                if f.check not in REDACTABLE or not retries or f is verdict.retry or f is verdict.blocked
            )
            problem = _problem(verdict.blocked, verdict.retry)
            if problem is not None:
                return problem
        return None

    def stream_filter(self) -> StreamFilter | None:
        return StreamFilter(self) if self.span_checks() else None

    def header(self) -> bytes | None:
        text = self.summary()
        return text.encode() if text is not None else None

    def summary(self) -> str | None:
        """The spend log's `guardrails` column: the header's text (what ran, what fired, time); built once
        per set of findings (the header and the spend record share it)."""
        findings = self.findings
        if not findings:
            return None
        if self._text is None or self._text[0] != len(findings):
            self._text = (len(findings), header_value(findings))
        return self._text[1]


#: Fields of an answer's message (besides `content`) whose text reaches the client.
SIDE_FIELDS = ("reasoning_content", "refusal")


def _side_texts(message: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(holder, key) of every non-empty side text: reasoning, refusal, each tool call's arguments."""
    out = [(message, key) for key in SIDE_FIELDS if isinstance(message.get(key), str) and message[key]]
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str) and function["arguments"]:
            out.append((function, "arguments"))
    return out


def _still_json(text: str) -> bool:
    try:
        msgspec.json.decode(text)
    except msgspec.DecodeError:
        return False
    return True


def _as_text(content: Any) -> str:
    """An answer's content as the text a client reads (a list of parts from a lenient upstream: its texts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return ""


def _pinned_upstream(inbound: Inbound) -> None:
    """A Responses conversation that lives upstream can only go through as sent: refuse it rather than send
    it translated without its history."""
    state = inbound.state
    req = getattr(state, "req", None)
    if inbound.native is not None and getattr(state, "native", False) and getattr(req, "previous_response_id", None):
        raise GatewayError(
            400,
            "this conversation is stored upstream and passes through unread; output guardrails cannot apply to "
            "it (start a new conversation on a model without pass-through)",
            param="previous_response_id",
        )


def _problem(blocked: Finding | None, retry: Finding | None) -> ProviderError | None:
    if blocked is not None:
        return ProviderError(ErrorKind.GUARDRAIL_BLOCKED, _reason(blocked, "output"))
    if retry is not None:
        return ProviderError(ErrorKind.GUARDRAIL, _reason(retry, "output"))
    return None


def _reason(finding: Finding, stage: str) -> str:
    """What the client is told: the check's name and why, never the text it looked at nor a traceback (a
    failed check's own error goes to the log)."""
    if finding.error is not None:
        log.warning("guardrail %s failed on the %s: %s", finding.label, stage, finding.error)
        return f"guardrail `{finding.label}` could not check the {stage} and fails closed"
    return f"blocked by guardrails: {finding.message or f'guardrail `{finding.label}` fired'}"


def guard_error(finding: Finding, stage: str) -> GatewayError:
    """The client's error for a blocked input (422, in the ingress's shape once the codec writes it)."""
    return GatewayError(
        422, _reason(finding, stage), type="guardrail_error", param="messages", code="guardrail_blocked"
    )


def _assemble(chunks: list[Chunk]) -> list[tuple[str, str | None, list[Any] | None]]:
    """(text, finish_reason, tool calls) per choice of a streamed answer, from its canonical chunks."""
    texts: dict[int, list[str]] = {}
    finishes: dict[int, str | None] = {}
    tools: dict[int, list[Any]] = {}
    for chunk in chunks:
        for choice in as_dict(chunk).get("choices") or ():
            index = choice.get("index", 0)
            parts = texts.setdefault(index, [])
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                parts.append(content)
            if delta.get("tool_calls"):
                tools.setdefault(index, []).extend(delta["tool_calls"])
            if choice.get("finish_reason") is not None:
                finishes[index] = choice["finish_reason"]
    if not texts:
        return [("", None, None)]
    return [("".join(parts), finishes.get(i), tools.get(i)) for i, parts in texts.items()]


class StreamFilter:
    """Streamed text through one `StreamGuard` per choice and field (content, reasoning, refusal, each tool
    call's arguments): only the tail a pending match could still change is held back; a `block` ends the
    stream (nothing of the blocked text is sent). Held tails are released before the choice's finish chunk;
    logprobs are dropped (each token's text would spell out what was redacted)."""

    __slots__ = ("_done", "_guards", "_last", "_request", "blocked")

    def __init__(self, request: RequestGuards) -> None:
        self._request = request
        #: (choice index, field) → its guard; a tool call's field is ("tool", its index).
        self._guards: dict[tuple[int, Any], StreamGuard] = {}
        self._done: set[int] = set()
        self._last: dict[str, Any] = {}
        self.blocked: Finding | None = None

    async def batches(self, source: AsyncGenerator[list[Chunk]]) -> AsyncGenerator[list[Chunk]]:
        try:
            async for batch in source:
                out = self._filter(batch)
                if self.blocked is not None:
                    return
                if out:
                    yield out
            tail = self._flush()
            if self.blocked is None and tail:
                yield tail
        finally:
            await source.aclose()  # stop reading upstream (a no-op after a whole answer)
            for guard in self._guards.values():
                self._request.findings.extend(guard.findings)

    def error(self) -> ProviderError:
        assert self.blocked is not None
        return ProviderError(ErrorKind.GUARDRAIL_BLOCKED, _reason(self.blocked, "output"), after_first_byte=True)

    def _guard(self, index: int, field: Any) -> StreamGuard:
        guard = self._guards.get((index, field))
        if guard is None:
            guard = self._guards[(index, field)] = StreamGuard(self._request.span_checks())
        return guard

    def _feed(self, index: int, field: Any, text: str) -> str:
        guard = self._guard(index, field)
        out = guard.feed(text)
        if guard.blocked is not None:
            self.blocked = guard.blocked
        return out

    def _filter(self, batch: list[Chunk]) -> list[Chunk]:
        out: list[Chunk] = []
        for raw in batch:
            chunk = as_dict(raw)
            choices = chunk.get("choices")
            if not choices:
                out.append(raw)
                continue
            self._last = chunk
            keep = False
            for choice in choices:
                index = choice.get("index", 0)
                index = index if isinstance(index, int) else 0
                keep = self._choice(index, choice) or keep
                if self.blocked is not None:
                    return []
                if choice.get("finish_reason") is not None:
                    out += self._close(index)
                    if self.blocked is not None:
                        return []
            if keep:
                out.append(chunk)
        return out

    def _choice(self, index: int, choice: dict[str, Any]) -> bool:
        """Rewrite one choice's deltas to what may be sent now; whether the chunk still says anything."""
        choice.pop("logprobs", None)
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            delta = choice["delta"] = {}
        for field in ("content", *SIDE_FIELDS):
            value = delta.get(field)
            if isinstance(value, str) and value:
                delta[field] = self._feed(index, field, value)
        for call in delta.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str) and function["arguments"]:
                function["arguments"] = self._feed(index, ("tool", call.get("index", 0)), function["arguments"])
        finish = choice.get("finish_reason")
        if finish is not None and self.blocked is None:
            guard = self._guards.get((index, "content"))
            if guard is not None:
                delta["content"] = (delta.get("content") or "") + guard.finish()
                if guard.blocked is not None:
                    self.blocked = guard.blocked
        return finish is not None or any(delta.get(k) for k in delta) or len(choice) > 3

    def _close(self, index: int) -> list[Chunk]:
        """A finished choice: its side fields' held tails (its content's went into the finish chunk), as
        chunks sent before the finish chunk."""
        self._done.add(index)
        return self._tails(index, skip_content=True)

    def _flush(self) -> list[Chunk]:
        """The held tails of choices that ended without a finish chunk."""
        out: list[Chunk] = []
        for index in sorted({i for i, _ in self._guards} - self._done):
            out += self._tails(index, skip_content=False)
            if self.blocked is not None:
                return []
        return out

    def _tails(self, index: int, *, skip_content: bool) -> list[Chunk]:
        out: list[Chunk] = []
        for (i, field), guard in list(self._guards.items()):
            if i != index or (skip_content and field == "content"):
                continue
            text = guard.finish()
            if guard.blocked is not None:
                self.blocked = guard.blocked
                return []
            if text:
                if isinstance(field, tuple):
                    delta: dict[str, Any] = {"tool_calls": [{"index": field[1], "function": {"arguments": text}}]}
                else:
                    delta = {field: text}
                out.append(self._chunk(index, delta))
        return out

    def _chunk(self, index: int, delta: dict[str, Any]) -> dict[str, Any]:
        last = self._last
        return {
            "id": last.get("id"),
            "object": "chat.completion.chunk",
            "created": last.get("created"),
            "model": last.get("model"),
            "choices": [{"index": index, "delta": delta, "finish_reason": None}],
        }
