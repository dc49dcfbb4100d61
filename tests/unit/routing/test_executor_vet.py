"""The executor's vet hooks (output guardrails, passed in as callables: routing never imports guardrails).

A `GUARDRAIL` verdict fails over to the next candidate (never the same deployment), the rejected attempt's
cost still counts and its outcome says why; `GUARDRAIL_BLOCKED` stops; a stream with `vet_chunks` is read
whole and vetted before the attempt counts, so a rejected stream fails over before the client sees a byte.
"""

from __future__ import annotations

from typing import Any

import pytest

from modelyard.providers.base import Completion
from modelyard.routing.attempts import RetryPolicy, attempts_header
from modelyard.routing.executor import Chunk, as_dict
from modelyard.schema.errors import ErrorKind, ProviderError
from tests.unit.routing.test_executor import make, request

PRICE_ONE = (10 * 1 + 5 * 2) / 1e6  # ok_body's usage at the test config's price


def reject_from(*deployments: str, kind: ErrorKind = ErrorKind.GUARDRAIL) -> Any:
    """A vet that turns down answers whose model names one of `deployments` (ok_body: `m-<host>`)."""
    seen: list[str] = []

    def vet(completion: Completion) -> ProviderError | None:
        model = completion.body["model"]
        seen.append(model)
        return ProviderError(kind, "rejected by a check") if model in {f"m-{d}" for d in deployments} else None

    vet.seen = seen  # type: ignore[attr-defined]
    return vet


async def test_retry_verdict_fails_over_and_counts_both_attempts():
    router, transport = make({}, retries=3)
    req, raw, features = request()
    vet = reject_from("a")
    result = await router.executor.complete(
        router.plan("m", features), router.replanner(features), req, raw, features, vet=vet
    )
    assert result.deployment.name == "b"
    assert transport.calls == ["a", "b"]  # never the same deployment again, even with retries left
    assert [r.outcome for r in result.records] == ["guardrail", "ok"]
    assert result.cost_usd == pytest.approx(2 * PRICE_ONE)  # the rejected answer was paid for
    assert "a guardrail" in attempts_header(result.records)


async def test_every_candidate_rejected_raises_the_verdict_with_the_history():
    router, transport = make({})
    req, raw, features = request()
    with pytest.raises(ProviderError) as info:
        await router.executor.complete(
            router.plan("m", features), router.replanner(features), req, raw, features, vet=reject_from("a", "b", "c")
        )
    assert info.value.kind is ErrorKind.GUARDRAIL and info.value.client_status == 422
    assert transport.calls == ["a", "b", "c"]
    assert sum(r.cost_usd for r in info.value.records) == pytest.approx(3 * PRICE_ONE)
    assert "rejected by a check" in info.value.to_body()["error"]["message"]


async def test_block_verdict_stops_at_once():
    router, transport = make({})
    req, raw, features = request()
    with pytest.raises(ProviderError) as info:
        await router.executor.complete(
            router.plan("m", features),
            router.replanner(features),
            req,
            raw,
            features,
            vet=reject_from("a", kind=ErrorKind.GUARDRAIL_BLOCKED),
        )
    assert info.value.kind is ErrorKind.GUARDRAIL_BLOCKED and transport.calls == ["a"]


async def test_a_rejected_answer_does_not_count_against_the_deployments_health():
    router, _ = make({})
    req, raw, features = request()
    for _ in range(10):
        await router.executor.complete(
            router.plan("m", features), router.replanner(features), req, raw, features, vet=reject_from("a")
        )
    assert router.health.get("a").failures == 0


async def test_the_vet_may_rewrite_the_answer():
    router, _ = make({})
    req, raw, features = request()

    def redact(completion: Completion) -> ProviderError | None:
        completion.body["choices"][0]["message"]["content"] = "[redacted]"
        return None

    result = await router.executor.complete(
        router.plan("m", features), router.replanner(features), req, raw, features, vet=redact
    )
    assert result.completion.body["choices"][0]["message"]["content"] == "[redacted]"


def chunk_text(chunks: list[Chunk]) -> str:
    return "".join(
        (c.get("delta") or {}).get("content") or "" for ch in chunks for c in as_dict(ch).get("choices") or ()
    )


async def test_stream_read_whole_and_failed_over_before_the_first_byte():
    router, transport = make({})
    req, raw, features = request(stream=True)
    seen: list[tuple[str, str]] = []

    def vet_chunks(chunks: list[Chunk]) -> ProviderError | None:
        model = as_dict(chunks[0])["model"]
        seen.append((model, chunk_text(chunks)))
        return ProviderError(ErrorKind.GUARDRAIL, "bad json") if model == "m-a" else None

    result = await router.executor.open_stream(
        router.plan("m", features), router.replanner(features), req, raw, features, vet_chunks=vet_chunks
    )
    assert seen == [("m-a", "hello"), ("m-b", "hello")]  # each vetted on the whole answer, not its first chunk
    assert result.deployment.name == "b" and transport.calls == ["a", "b"]
    assert result.records[0].outcome == "guardrail" and result.records[0].cost_usd > 0
    text = chunk_text([c async for batch in result.batches() for c in batch])
    assert text == "hello"  # the accepted attempt's answer, whole, once


async def test_stream_without_vet_commits_on_the_first_chunk():
    router, _ = make({})
    req, raw, features = request(stream=True)
    result = await router.executor.open_stream(
        router.plan("m", features), router.replanner(features), req, raw, features
    )
    assert chunk_text(result._opened.first) == "hel"  # unchanged: only substance, not the whole answer


def test_policy_fails_over_on_guardrail_and_stops_on_block():
    policy = RetryPolicy(retries=5)
    assert policy.next_step(ProviderError(ErrorKind.GUARDRAIL, "x"), 0).value == "failover"
    assert policy.next_step(ProviderError(ErrorKind.GUARDRAIL_BLOCKED, "x"), 0).value == "stop"
