"""A third-party adapter for a made-up wire format ("Acme"), written only against modelyard's public
adapter contract (`modelyard.providers.base`), as a company with an in-house endpoint would write one.

The Acme format: `POST {api_base}/acme/v2/complete` with `{"engine", "turns": [{"speaker", "says"}],
"budget", "tone"}`; the answer is `{"reply", "engine", "spent": {"read", "wrote"}}`; a streamed answer is
server-sent events, `{"bit": "..."}` per piece and a closing `{"over": true, "spent": {...}}`; an error is
`{"trouble": {"what": ..., "why": ...}}` with an HTTP error status. Embeddings are not offered.

The config names it `provider: tests.plugins.acme_adapter:AcmeAdapter`, with options of its own
(`AcmeOptions`, which does not derive from modelyard's ProviderOptions: nothing requires it to).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from modelyard.config.model import Deployment
from modelyard.providers.base import Completion, HttpCall, SSEEvent, StreamStamp, kind_from_status, upstream_error
from modelyard.schema.chat import ChatRequest, EmbeddingRequest, Message, Usage, text_of
from modelyard.schema.errors import ErrorKind, GatewayError, ProviderError

PATH = "/acme/v2/complete"


class AcmeOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`options:` of an Acme deployment."""

    tone: Literal["plain", "formal", "shouty"] = "plain"
    #: Words per reply the engine may spend when the request sets no `max_tokens`.
    default_budget: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 64


class AcmeAdapter:
    """The Acme wire format: the six methods of the contract, `name` and `options_type`; no capabilities."""

    name: ClassVar[str] = "acme"
    options_type: ClassVar[type[AcmeOptions]] = AcmeOptions

    def chat_call(self, dep: Deployment, req: ChatRequest, raw: dict[str, Any], stream: bool) -> HttpCall:
        opts: AcmeOptions = dep.options
        body = {
            "engine": dep.model,
            "turns": [{"speaker": _role(msg), "says": text_of(msg.content)} for msg in req.messages],
            "budget": req.output_limit or opts.default_budget,
            "tone": opts.tone,
            "stream": stream,
        }
        headers = {"content-type": "application/json", "x-acme-key": dep.api_key or ""}
        return HttpCall("POST", f"{(dep.api_base or '').rstrip('/')}{PATH}", headers, json.dumps(body).encode())

    def parse_chat(self, dep: Deployment, req: ChatRequest, body: bytes) -> Completion:
        data = _object(body)
        usage = _usage(data.get("spent"))
        model = str(data.get("engine") or dep.model)
        out = {
            "id": "chatcmpl-acme",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": str(data.get("reply", ""))},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage.to_openai(),
        }
        return Completion(out, usage, model)

    def stream_translator(self, dep: Deployment, req: ChatRequest) -> AcmeStreamTranslator:
        return AcmeStreamTranslator(StreamStamp(model=dep.model))

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        try:
            trouble = _object(body).get("trouble") or {}
        except ProviderError:
            trouble = {}
        kind = ErrorKind.OVERLOADED if trouble.get("what") == "busy" else kind_from_status(status)
        return upstream_error(kind, f"provider answered {status}", str(trouble.get("why") or status), status=status)

    def embeddings_call(self, dep: Deployment, req: EmbeddingRequest, raw: dict[str, Any]) -> HttpCall:
        raise GatewayError(400, "Acme deployments do not serve embeddings", param="model")

    def parse_embeddings(self, dep: Deployment, req: EmbeddingRequest, body: bytes) -> Completion:
        raise GatewayError(400, "Acme deployments do not serve embeddings", param="model")


class AcmeStreamTranslator:
    """Acme's `bit` events → OpenAI chunks; the closing `over` event → a finish and the usage."""

    def __init__(self, stamp: StreamStamp) -> None:
        self.stamp = stamp
        self.usage = Usage()
        self.model = stamp.model
        self._done = False
        self._started = False

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, event: SSEEvent) -> list[dict[str, Any] | msgspec.Raw]:
        data = _object(event.data)
        if "trouble" in data:
            raise upstream_error(ErrorKind.SERVER, "provider stream error", str(data["trouble"]))
        if data.get("over"):
            self._done = True
            self.usage = _usage(data.get("spent"))
            return [self._chunk({}, "stop")]
        delta: dict[str, Any] = {"content": str(data.get("bit", ""))}
        if not self._started:
            self._started = True
            delta["role"] = "assistant"
        return [self._chunk(delta, None)]

    def finish(self) -> list[dict[str, Any]]:
        if not self._done:
            raise ProviderError(ErrorKind.CONNECTION, "stream ended before it was complete", after_first_byte=True)
        return []

    def _chunk(self, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {
            "id": self.stamp.id,
            "object": "chat.completion.chunk",
            "created": self.stamp.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }


def _role(message: Message) -> str:
    """A canonical message's role: the tag of its msgspec Struct (`user`, `assistant`, ...)."""
    return str(type(message).__struct_config__.tag)


def _object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        raise ProviderError(ErrorKind.SERVER, "malformed Acme body (not JSON)") from None
    if not isinstance(data, dict):
        raise ProviderError(ErrorKind.SERVER, "malformed Acme body (not an object)")
    return data


def _usage(spent: Any) -> Usage:
    spent = spent if isinstance(spent, dict) else {}
    return Usage(prompt=int(spent.get("read") or 0), completion=int(spent.get("wrote") or 0))
