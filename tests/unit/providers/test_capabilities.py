"""Optional adapter capabilities are found by `discover()` from what an adapter implements; an adapter with
none (every built-in today, and the outside Acme adapter) is complete."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import pytest

from modelyard.config.model import Deployment
from modelyard.providers import load_adapter
from modelyard.providers.base import Capabilities, Completion, HttpCall, SSEEvent, discover
from modelyard.schema.chat import ChatRequest, Usage
from tests.plugins.acme_adapter import AcmeAdapter


class CountingAdapter(AcmeAdapter):
    """Acme plus a token-count endpoint and NDJSON stream framing."""

    def count_tokens_call(self, dep: Deployment, req: ChatRequest) -> HttpCall:
        return HttpCall("POST", "http://acme/count", {}, b"{}")

    def parse_count_tokens(self, dep: Deployment, body: bytes) -> int:
        return 7

    def stream_decoder(self, dep: Deployment) -> Any:
        return NDJSON()


class NDJSON:
    def feed(self, data: bytes) -> list[SSEEvent]:
        return [SSEEvent(line) for line in data.splitlines() if line]

    def flush(self) -> list[SSEEvent]:
        return []


class EverythingAdapter(CountingAdapter):
    native_formats: ClassVar[frozenset[str]] = frozenset({"acme"})
    endpoints: ClassVar[frozenset[str]] = frozenset({"rerank"})

    def native_call(
        self,
        dep: Deployment,
        fmt: str,
        body: dict[str, Any],
        stream: bool,
        headers: Mapping[str, str],
        *,
        raw: bytes = b"",
    ) -> HttpCall:
        return HttpCall("POST", "http://acme/native", {}, b"{}")

    def parse_native(self, dep: Deployment, fmt: str, body: bytes) -> Completion:
        return Completion({}, Usage(), dep.model, native=body)

    def native_stream(self, dep: Deployment, fmt: str) -> Any:
        return None

    async def authorize(self, dep: Deployment, call: HttpCall) -> HttpCall:
        call.headers["authorization"] = "Bearer fresh"
        return call

    def credentials_rejected(self, dep: Deployment) -> None:
        return None

    def endpoint_call(self, dep: Deployment, req: Any) -> HttpCall:
        return HttpCall("POST", f"http://acme/{req.endpoint}", {}, b"{}")

    def parse_endpoint(self, dep: Deployment, req: Any, body: bytes, headers: Mapping[str, str]) -> Any:
        return None


class HalfACounter(AcmeAdapter):
    """Asks for the count but cannot read the answer: not a TokenCounter."""

    def count_tokens_call(self, dep: Deployment, req: ChatRequest) -> HttpCall:
        return HttpCall("POST", "http://acme/count", {}, b"{}")


# The Anthropic adapter has native pass-through and token counting (tests/unit/providers/test_anthropic_native.py),
# the OpenAI adapter native pass-through of Responses bodies (tests/unit/server/test_responses_passthrough.py), the
# Gemini adapter the audio endpoints (below).
@pytest.mark.parametrize("provider", ["tests.plugins.acme_adapter:AcmeAdapter"])
def test_an_adapter_with_no_capability_discovers_none(provider: str) -> None:
    assert discover(load_adapter(provider)) == Capabilities()
    assert discover(load_adapter(provider)).names == ()


def test_the_capabilities_an_adapter_implements_are_found_and_typed() -> None:
    adapter = CountingAdapter()
    found = discover(adapter)
    assert found.names == ("count_tokens", "framing")
    assert found.count_tokens is adapter and found.framing is adapter
    assert found.native is None and found.credentials is None and found.endpoints is None
    assert found.framing.stream_decoder(Deployment(name="d", provider="openai", model="m")).feed(b"a\nb\n") == [
        SSEEvent(b"a"),
        SSEEvent(b"b"),
    ]


def test_every_capability_is_discoverable() -> None:
    assert discover(EverythingAdapter()).names == ("native", "count_tokens", "framing", "credentials", "endpoints")


def test_half_a_capability_is_no_capability() -> None:
    assert discover(HalfACounter()).names == ()


@pytest.mark.parametrize(
    ("provider", "names"),
    [
        ("gemini", ("endpoints",)),
        ("bedrock", ("framing", "credentials")),
        ("vertex", ("credentials",)),
        ("vertex_anthropic", ("native", "count_tokens", "credentials")),
        ("cohere", ("endpoints",)),
    ],
)
def test_the_built_in_adapters_capabilities(provider: str, names: tuple[str, ...]) -> None:
    assert set(discover(load_adapter(provider)).names) >= set(names)
