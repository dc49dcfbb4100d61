"""An OpenAI-compatible adapter with every optional capability the executor uses (issue 17): a credential that
is awaited per attempt and can be made to fail, NDJSON stream framing, and a `rerank` endpoint. For the
executor's tests; nothing in src/ knows it."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, ClassVar

import msgspec

from modelyard.config.model import Deployment
from modelyard.providers.base import Completion, HttpCall, SSEEvent
from modelyard.providers.openai import OpenAIAdapter
from modelyard.schema.chat import Usage
from modelyard.schema.endpoints import EndpointRequest


class NDJSONDecoder:
    """One event per line."""

    def __init__(self) -> None:
        self.fed = 0

    def feed(self, data: bytes) -> list[SSEEvent]:
        self.fed += 1
        return [SSEEvent(line) for line in data.splitlines() if line]

    def flush(self) -> list[SSEEvent]:
        return []


class CapableAdapter(OpenAIAdapter):
    """State lives on the class so a test can read it whatever instance the router made."""

    endpoints: ClassVar[frozenset[str]] = frozenset({"rerank"})
    authorized: ClassVar[list[str]] = []
    rejected: ClassVar[list[str]] = []
    decoders: ClassVar[list[NDJSONDecoder]] = []
    #: Deployment names whose credential chain fails (with a message naming a secret file).
    broken: ClassVar[set[str]] = set()
    #: Deployment names whose token endpoint hangs.
    hanging: ClassVar[set[str]] = set()

    async def authorize(self, dep: Deployment, call: HttpCall) -> HttpCall:
        if dep.name in self.hanging:
            await asyncio.sleep(3600)
        if dep.name in self.broken:
            raise RuntimeError("could not read /home/ops/.secrets/credentials for role admin")
        self.authorized.append(dep.name)
        call.headers["authorization"] = f"Bearer token-for-{dep.name}"
        return call

    def credentials_rejected(self, dep: Deployment) -> None:
        self.rejected.append(dep.name)

    def stream_decoder(self, dep: Deployment) -> NDJSONDecoder:
        decoder = NDJSONDecoder()
        self.decoders.append(decoder)
        return decoder

    def endpoint_call(self, dep: Deployment, req: EndpointRequest) -> HttpCall:
        body = {"model": dep.model, "query": req.fields["query"], "documents": req.fields["documents"]}
        return HttpCall("POST", self.url(dep, "rerank"), self.auth_headers(dep), msgspec.json.encode(body))

    def parse_endpoint(
        self, dep: Deployment, req: EndpointRequest, body: bytes, headers: Mapping[str, str]
    ) -> Completion:
        data: dict[str, Any] = msgspec.json.decode(body)
        return Completion(data, Usage(search_units=int(data.get("search_units", 0))), dep.model)

    @classmethod
    def clear(cls) -> None:
        cls.authorized.clear()
        cls.rejected.clear()
        cls.decoders.clear()
        cls.broken.clear()
        cls.hanging.clear()
