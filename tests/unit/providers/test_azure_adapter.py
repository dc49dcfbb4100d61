"""Azure OpenAI adapter: URLs, credentials, Entra token caching, content-filter and rate-limit mapping."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
import pytest

from modelyard.config.model import Deployment
from modelyard.config.providers import AdapterConfigError
from modelyard.providers import azure as azure_mod
from modelyard.providers.azure import DEFAULT_API_VERSION, AzureAdapter, rate_limit_wait
from modelyard.providers.base import HttpCall, SSEEvent, discover
from modelyard.schema.chat import ChatRequest, EmbeddingRequest
from modelyard.schema.errors import ErrorKind, GatewayError, ProviderError

BASE = "https://contoso.openai.azure.com"


def dep(**changes: Any) -> Deployment:
    fields: dict[str, Any] = {
        "name": "gpt4o@azure",
        "provider": "azure",
        "model": "prod-gpt4o",
        "api_base": BASE,
        "api_key": "sk-azure-key-123",
    }
    fields.update(changes)
    return Deployment(**fields)


def chat(adapter: AzureAdapter, d: Deployment, stream: bool = False) -> HttpCall:
    raw = {"model": "smart", "messages": [{"role": "user", "content": "hi"}]}
    return adapter.chat_call(d, msgspec.convert(raw, ChatRequest), raw, stream)


# ----------------------------------------------------------------------------- where


@pytest.mark.parametrize(
    ("options", "api_base", "path", "url"),
    [
        ({}, BASE, "chat/completions", f"{BASE}/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21"),
        ({}, BASE + "/", "embeddings", f"{BASE}/openai/deployments/prod-gpt4o/embeddings?api-version=2024-10-21"),
        (
            {},
            BASE + "/openai/",
            "chat/completions",
            f"{BASE}/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21",
        ),
        (
            {"api_version": "2025-04-01-preview"},
            BASE,
            "audio/transcriptions",
            f"{BASE}/openai/deployments/prod-gpt4o/audio/transcriptions?api-version=2025-04-01-preview",
        ),
        (
            {"api_version": "2025-04-01-preview"},
            BASE,
            "responses",
            f"{BASE}/openai/responses?api-version=2025-04-01-preview",
        ),
        ({"api_version": "v1"}, BASE, "chat/completions", f"{BASE}/openai/v1/chat/completions"),
        ({"api_version": "v1"}, BASE + "/openai/v1", "responses", f"{BASE}/openai/v1/responses"),
    ],
)
def test_urls(options: dict[str, Any], api_base: str, path: str, url: str) -> None:
    assert AzureAdapter().url(dep(options=options, api_base=api_base), path) == url


def test_default_api_version_is_the_latest_dated_ga() -> None:
    assert DEFAULT_API_VERSION == "2024-10-21"
    assert dep().options.api_version == "2024-10-21"


def test_deployment_name_is_quoted_in_the_path() -> None:
    url = AzureAdapter().url(dep(model="my dep/1"), "chat/completions")
    assert url.startswith(f"{BASE}/openai/deployments/my%20dep%2F1/chat/completions?")


def test_chat_call_sends_api_key_and_the_deployment_as_model() -> None:
    call = chat(AzureAdapter(), dep(headers={"x-ms-client-request-id": "r1"}))
    assert call.method == "POST"
    assert call.url == f"{BASE}/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21"
    assert call.headers == {
        "Content-Type": "application/json",
        "api-key": "sk-azure-key-123",
        "x-ms-client-request-id": "r1",
    }
    assert "Authorization" not in call.headers
    assert json.loads(call.body)["model"] == "prod-gpt4o"


def test_streaming_call_asks_for_usage() -> None:
    body = json.loads(chat(AzureAdapter(), dep(), stream=True).body)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_embeddings_call() -> None:
    raw = {"model": "e", "input": ["a", "b"]}
    call = AzureAdapter().embeddings_call(dep(model="emb"), msgspec.convert(raw, EmbeddingRequest), raw)
    assert call.url == f"{BASE}/openai/deployments/emb/embeddings?api-version=2024-10-21"
    assert json.loads(call.body) == {"model": "emb", "input": ["a", "b"]}


def test_entra_deployment_sends_no_api_key() -> None:
    d = dep(options={"entra_id": True})
    assert chat(AzureAdapter(), d).headers == {"Content-Type": "application/json"}


def test_no_api_base_is_a_400() -> None:
    with pytest.raises(GatewayError) as caught:
        chat(AzureAdapter(), dep(api_base=None))
    assert caught.value.status == 400
    assert "api_base" in caught.value.message


def test_response_object_call_keeps_the_tail_before_the_query() -> None:
    d = dep(options={"api_version": "2025-04-01-preview"})
    call = AzureAdapter().response_object_call(d, "GET", "resp_1", "/input_items?limit=5")
    assert call.url == f"{BASE}/openai/responses/resp_1/input_items?api-version=2025-04-01-preview&limit=5"
    v1 = AzureAdapter().response_object_call(dep(options={"api_version": "v1"}), "DELETE", "resp_1")
    assert v1.url == f"{BASE}/openai/v1/responses/resp_1"
    assert v1.headers["api-key"] == "sk-azure-key-123"


def test_responses_pass_through_call_on_v1() -> None:
    d = dep(options={"api_version": "v1", "responses_api": True})
    body = {"model": "smart", "input": "hi"}
    call = AzureAdapter().native_call(d, "openai-responses", body, False, {}, raw=b'{"model": "smart", "input": "hi"}')
    assert call.url == f"{BASE}/openai/v1/responses"
    assert call.headers["api-key"] == "sk-azure-key-123"
    assert call.body == b'{"model": "prod-gpt4o", "input": "hi"}'


@pytest.mark.parametrize(
    ("options", "where"),
    [
        ({"client_secret": "s"}, "client_secret needs tenant_id and client_id"),
        ({"client_secret": "s", "tenant_id": "t"}, "client_secret needs tenant_id and client_id"),
        ({"api_version": " "}, "api_version"),
        ({"api_verison": "v1"}, "options.api_verison"),
    ],
)
def test_bad_options_fail_at_load(options: dict[str, Any], where: str) -> None:
    with pytest.raises(AdapterConfigError) as caught:
        dep(options=options)
    assert where in str(caught.value)


def test_capabilities_include_credential_refresh() -> None:
    found = discover(AzureAdapter())
    assert found.credentials is not None
    assert found.native is not None


def test_client_secret_credential_is_built_from_options() -> None:
    from azure.identity import ClientSecretCredential

    opts = dep(
        options={
            "tenant_id": "t1",
            "client_id": "c1",
            "client_secret": "s1",
            "authority_host": "login.microsoftonline.us",
            "disable_instance_discovery": True,
        }
    ).options
    assert opts.uses_entra
    assert isinstance(azure_mod._credential(opts), ClientSecretCredential)


# ----------------------------------------------------------------------------- Entra tokens


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now


class FakeCredential:
    """Stands in for azure-identity: counts calls, hands out numbered tokens with a given lifetime."""

    def __init__(self, clock: FakeClock, lifetime: float = 3600.0) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.calls: list[str] = []
        self.fail = False

    def get_token(self, *scopes: str) -> Any:
        from azure.core.credentials import AccessToken

        if self.fail:
            raise RuntimeError("token endpoint down")
        self.calls.append(scopes[0])
        return AccessToken(f"tok-{len(self.calls)}", int(self.clock.now + self.lifetime))


@pytest.fixture
def entra(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeClock, list[FakeCredential]]:
    clock = FakeClock()
    made: list[FakeCredential] = []

    def build(opts: Any) -> FakeCredential:
        made.append(FakeCredential(clock))
        return made[-1]

    monkeypatch.setattr(azure_mod, "time", clock)
    monkeypatch.setattr(azure_mod, "_credential", build)
    return clock, made


def authorize(adapter: AzureAdapter, d: Deployment) -> str:
    call = asyncio.run(adapter.authorize(d, chat(adapter, d)))
    return call.headers["Authorization"]


ENTRA = {"tenant_id": "t", "client_id": "c", "client_secret": "s"}


def test_token_fetched_once_and_reused(entra: tuple[FakeClock, list[FakeCredential]]) -> None:
    clock, made = entra
    adapter, d = AzureAdapter(), dep(options=ENTRA)
    assert authorize(adapter, d) == "Bearer tok-1"
    clock.now += 3000  # 10 minutes left: still well inside the token's life
    assert authorize(adapter, d) == "Bearer tok-1"
    assert len(made) == 1
    assert made[0].calls == ["https://cognitiveservices.azure.com/.default"]


def test_token_refreshed_before_expiry(entra: tuple[FakeClock, list[FakeCredential]]) -> None:
    clock, made = entra
    adapter, d = AzureAdapter(), dep(options=ENTRA)
    authorize(adapter, d)
    clock.now += 3301  # inside the last five minutes
    assert authorize(adapter, d) == "Bearer tok-2"
    assert len(made[0].calls) == 2


def test_short_token_refreshed_at_half_life(entra: tuple[FakeClock, list[FakeCredential]]) -> None:
    clock, made = entra
    adapter, d = AzureAdapter(), dep(options=ENTRA)
    authorize(adapter, d)
    made[0].lifetime = 10.0
    clock.now += 3400
    assert authorize(adapter, d) == "Bearer tok-2"
    clock.now += 4
    assert authorize(adapter, d) == "Bearer tok-2"
    clock.now += 2
    assert authorize(adapter, d) == "Bearer tok-3"


def test_rejected_credentials_are_rebuilt(entra: tuple[FakeClock, list[FakeCredential]]) -> None:
    _, made = entra
    adapter, d = AzureAdapter(), dep(options=ENTRA)
    authorize(adapter, d)
    adapter.credentials_rejected(d)
    assert authorize(adapter, d) == "Bearer tok-1"  # from a new credential object (its own count)
    assert len(made) == 2


def test_failed_refresh_keeps_an_unexpired_token(entra: tuple[FakeClock, list[FakeCredential]]) -> None:
    clock, made = entra
    adapter, d = AzureAdapter(), dep(options=ENTRA)
    authorize(adapter, d)
    clock.now += 3400
    made[0].fail = True
    assert authorize(adapter, d) == "Bearer tok-1"
    clock.now += 200  # now past expiry: the failure surfaces
    with pytest.raises(RuntimeError):
        authorize(adapter, d)


def test_tokens_are_per_deployment(entra: tuple[FakeClock, list[FakeCredential]]) -> None:
    _, made = entra
    adapter = AzureAdapter()
    assert authorize(adapter, dep(options=ENTRA)) == "Bearer tok-1"
    assert authorize(adapter, dep(name="other", options=ENTRA)) == "Bearer tok-1"
    assert len(made) == 2


def test_api_key_deployment_needs_no_token(entra: tuple[FakeClock, list[FakeCredential]]) -> None:
    _, made = entra
    adapter, d = AzureAdapter(), dep()
    call = asyncio.run(adapter.authorize(d, chat(adapter, d)))
    assert "Authorization" not in call.headers
    assert call.headers["api-key"] == "sk-azure-key-123"
    assert made == []


def test_concurrent_attempts_share_one_fetch(entra: tuple[FakeClock, list[FakeCredential]]) -> None:
    _, made = entra
    adapter, d = AzureAdapter(), dep(options=ENTRA)

    async def many() -> list[str]:
        calls = await asyncio.gather(*(adapter.authorize(d, chat(adapter, d)) for _ in range(8)))
        return [c.headers["Authorization"] for c in calls]

    assert asyncio.run(many()) == ["Bearer tok-1"] * 8
    assert len(made[0].calls) == 1


# ----------------------------------------------------------------------------- errors

PROMPT_FILTERED = {
    "error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
        "type": None,
        "param": "prompt",
        "code": "content_filter",
        "status": 400,
        "innererror": {
            "code": "ResponsibleAIPolicyViolation",
            "content_filter_result": {
                "hate": {"filtered": False, "severity": "safe"},
                "jailbreak": {"filtered": True, "detected": True},
                "violence": {"filtered": True, "severity": "medium"},
            },
        },
    }
}
RAI_ONLY = {"error": {"code": "BadRequest", "message": "nope", "innererror": {"code": "ResponsibleAIPolicyViolation"}}}
AZ429 = {
    "error": {
        "code": "429",
        "message": "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have "
        "exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 33 seconds.",
    }
}


def _j(value: Any) -> bytes:
    return json.dumps(value).encode()


@pytest.mark.parametrize(
    ("status", "headers", "body", "kind", "retry_after"),
    [
        (400, {}, _j(PROMPT_FILTERED), ErrorKind.CONTENT_FILTER, None),
        (400, {}, _j(RAI_ONLY), ErrorKind.CONTENT_FILTER, None),
        (
            400,
            {},
            _j({"error": {"code": "content_policy_violation", "message": "image"}}),
            ErrorKind.CONTENT_FILTER,
            None,
        ),
        (
            404,
            {},
            _j({"error": {"code": "DeploymentNotFound", "message": "no such deployment"}}),
            ErrorKind.BAD_REQUEST,
            None,
        ),
        (404, {}, _j({"error": {"code": "404", "message": "Resource not found"}}), ErrorKind.BAD_REQUEST, None),
        (
            401,
            {},
            _j({"error": {"code": "401", "message": "Access denied due to invalid subscription key"}}),
            ErrorKind.AUTH,
            None,
        ),
        (403, {}, _j({"error": {"code": "PermissionDenied", "message": "no role"}}), ErrorKind.AUTH, None),
        (429, {"retry-after-ms": "1500", "retry-after": "2"}, _j(AZ429), ErrorKind.RATE_LIMITED, 1.5),
        (429, {"retry-after": "7"}, _j(AZ429), ErrorKind.RATE_LIMITED, 7.0),
        (
            429,
            {"x-ratelimit-reset-tokens": "55", "x-ratelimit-reset-requests": "2"},
            _j(AZ429),
            ErrorKind.RATE_LIMITED,
            55.0,
        ),
        (429, {"x-rate-limit-reset-tokens": "12"}, _j(AZ429), ErrorKind.RATE_LIMITED, 12.0),
        (429, {"x-ratelimit-reset-requests": "6m0s"}, _j(AZ429), ErrorKind.RATE_LIMITED, 360.0),
        (429, {}, _j(AZ429), ErrorKind.RATE_LIMITED, 33.0),
        (429, {}, _j({"error": {"code": "429", "message": "slow down"}}), ErrorKind.RATE_LIMITED, None),
        (
            400,
            {},
            _j({"error": {"code": "context_length_exceeded", "message": "too long"}}),
            ErrorKind.CONTEXT_LENGTH,
            None,
        ),
        (400, {}, _j({"error": {"code": "OperationNotSupported", "message": "no"}}), ErrorKind.BAD_REQUEST, None),
        (500, {}, _j({"error": {"code": "InternalServerError", "message": "oops"}}), ErrorKind.SERVER, None),
        (
            503,
            {"retry-after": "3"},
            _j({"error": {"code": "ServiceUnavailable", "message": "busy"}}),
            ErrorKind.OVERLOADED,
            3.0,
        ),
        (502, {}, b"<html>Bad Gateway</html>", ErrorKind.SERVER, None),
    ],
)
def test_error_mapping(
    status: int, headers: dict[str, str], body: bytes, kind: ErrorKind, retry_after: float | None
) -> None:
    error = AzureAdapter().error(status, headers, body)
    assert error.kind is kind
    assert error.status == status
    assert error.retry_after == retry_after


def test_prompt_filter_names_the_categories() -> None:
    error = AzureAdapter().error(400, {}, _j(PROMPT_FILTERED))
    assert "filtered: jailbreak, violence (medium)" in error.message
    assert "content management policy" in error.message


@pytest.mark.parametrize(
    ("headers", "message", "wait"),
    [
        ({"Retry-After-Ms": "250"}, "", 0.25),
        ({"x-ratelimit-reset-tokens": "1.5s"}, "", 1.5),
        ({"x-ratelimit-reset-tokens": "20ms"}, "", 0.02),
        ({"x-ratelimit-reset-tokens": "1m30s"}, "", 90.0),
        ({"x-ratelimit-reset-tokens": "soon"}, "", None),
        ({}, "Please retry after 1 second.", 1.0),
        ({}, "", None),
    ],
)
def test_rate_limit_wait(headers: dict[str, str], message: str, wait: float | None) -> None:
    assert rate_limit_wait(headers, message) == wait


# ----------------------------------------------------------------------------- answers


def answer(*reasons: str, content: str | None = "hello") -> bytes:
    choices = [
        {
            "index": i,
            "finish_reason": reason,
            "message": {"role": "assistant", "content": None if reason == "content_filter" else content},
            "content_filter_results": {
                "violence": {
                    "filtered": reason == "content_filter",
                    "severity": "high" if reason == "content_filter" else "safe",
                }
            },
        }
        for i, reason in enumerate(reasons)
    ]
    return _j(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-2024-08-06",
            "choices": choices,
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
        }
    )


def req() -> ChatRequest:
    return msgspec.convert({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, ChatRequest)


def test_answer_parses_and_keeps_azure_fields() -> None:
    done = AzureAdapter().parse_chat(dep(), req(), answer("stop"))
    assert done.body["choices"][0]["message"]["content"] == "hello"
    assert done.body["prompt_filter_results"] == [{"prompt_index": 0, "content_filter_results": {}}]
    assert (done.usage.prompt, done.usage.completion) == (5, 2)
    assert done.model == "gpt-4o-2024-08-06"


def test_filtered_answer_is_a_content_filter_error() -> None:
    with pytest.raises(ProviderError) as caught:
        AzureAdapter().parse_chat(dep(), req(), answer("content_filter"))
    assert caught.value.kind is ErrorKind.CONTENT_FILTER
    assert "violence (high)" in caught.value.message
    assert not caught.value.after_first_byte


def test_one_filtered_choice_of_two_is_passed_on() -> None:
    done = AzureAdapter().parse_chat(dep(), req(), answer("stop", "content_filter"))
    assert [c["finish_reason"] for c in done.body["choices"]] == ["stop", "content_filter"]


def _event(chunk: dict[str, Any] | str) -> SSEEvent:
    return SSEEvent(chunk.encode() if isinstance(chunk, str) else _j(chunk))


AZURE_PRELUDE = {"id": "", "object": "", "created": 0, "model": "", "choices": [], "prompt_filter_results": []}


def _chunk(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o",
        "choices": [{"index": 0, "delta": delta, "finish_reason": reason, "content_filter_results": {}}],
    }


def test_stream_passes_azure_chunks() -> None:
    t = AzureAdapter().stream_translator(dep(), req())
    assert t.feed(_event(AZURE_PRELUDE)) == []
    first = t.feed(_event(_chunk({"role": "assistant", "content": ""})))
    assert first[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}  # type: ignore[index]
    assert not t.answered
    raw = t.feed(
        SSEEvent(
            b'{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}'
        )
    )
    assert isinstance(raw[0], msgspec.Raw)
    assert t.answered
    end = t.feed(_event(_chunk({}, "stop")))
    assert end[0]["choices"][0]["finish_reason"] == "stop"  # type: ignore[index]
    assert t.feed(_event("[DONE]")) == []
    assert t.done


def test_stream_filtered_before_content_is_a_content_filter_error() -> None:
    t = AzureAdapter().stream_translator(dep(), req())
    t.feed(_event(AZURE_PRELUDE))
    t.feed(_event(_chunk({"role": "assistant", "content": ""})))
    with pytest.raises(ProviderError) as caught:
        t.feed(_event(_chunk({}, "content_filter")))
    assert caught.value.kind is ErrorKind.CONTENT_FILTER
    assert not caught.value.after_first_byte


def test_stream_filtered_after_content_ends_with_the_reason() -> None:
    t = AzureAdapter().stream_translator(dep(), req())
    t.feed(_event(_chunk({"role": "assistant", "content": "Once upon"})))
    out = t.feed(_event(_chunk({}, "content_filter")))
    assert out[0]["choices"][0]["finish_reason"] == "content_filter"  # type: ignore[index]
