"""One leaf call, done right: retries with backoff, per-attempt timeouts, schema validation and repair.

`Spend` accumulates what the call cost as answers arrive, so a step that fails after paying (an answer
that stayed invalid after its repair) still reports its money.
"""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from modelyard.schema.errors import GatewayError, ModelyardError, ProviderError
from modelyard.workflows.backend import ModelAnswer, ModelBackend, ModelCall
from modelyard.workflows.jsonout import AnswerInvalid, parse_structured, repair_message
from modelyard.workflows.records import StepRecord

T = TypeVar("T")


class StepFailure(ModelyardError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class Retry:
    """How a step retries: `retries` extra attempts, exponential backoff with full jitter."""

    retries: int = 0
    timeout_s: float | None = None
    backoff_s: float = 0.5
    backoff_max_s: float = 10.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(retry_after, self.backoff_max_s)
        return random.uniform(0, min(self.backoff_max_s, self.backoff_s * 2**attempt))


@dataclass
class Spend:
    cost_usd: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    attempts: int = 0
    repaired: bool = False
    served_model: str | None = None
    deployment: str | None = None

    def add(self, answer: ModelAnswer) -> None:
        self.cost_usd += answer.cost_usd
        self.prompt_tokens += answer.usage.prompt
        self.completion_tokens += answer.usage.completion
        self.latency_ms += answer.latency_ms
        self.served_model = answer.model
        self.deployment = answer.deployment

    def apply(self, record: StepRecord) -> None:
        record.cost_usd = self.cost_usd
        record.prompt_tokens = self.prompt_tokens
        record.completion_tokens = self.completion_tokens
        record.latency_ms = self.latency_ms
        record.attempts = self.attempts
        record.repaired = self.repaired
        record.served_model = self.served_model
        record.deployment = self.deployment


async def with_retries(make: Callable[[], Awaitable[T]], retry: Retry, spend: Spend) -> T:
    """`make()` under the step's timeout, retried on retryable failures; raises StepFailure at the end."""
    for attempt in range(retry.retries + 1):
        spend.attempts += 1
        last = attempt == retry.retries
        try:
            if retry.timeout_s is None:
                return await make()
            return await asyncio.wait_for(make(), retry.timeout_s)
        except ProviderError as exc:
            if last or not exc.retryable:
                raise StepFailure(f"{exc.kind.value}: {exc.message}") from None
            delay = retry.delay(attempt, exc.retry_after)
        except GatewayError as exc:
            raise StepFailure(f"HTTP {exc.status}: {exc.message}") from None
        except TimeoutError:
            if last:
                raise StepFailure(f"timed out after {retry.timeout_s:g}s") from None
            delay = retry.delay(attempt)
        except (StepFailure, asyncio.CancelledError):
            raise
        except Exception as exc:  # a tool's own error
            if last:
                raise StepFailure(f"{type(exc).__name__}: {exc}") from None
            delay = retry.delay(attempt)
        await asyncio.sleep(delay)
    raise StepFailure("no attempt was made")  # unreachable: the loop returns or raises


async def run_model(
    backend: ModelBackend, call: ModelCall, schema: dict[str, Any] | bool | None, retry: Retry, spend: Spend
) -> tuple[Any, int]:
    """The step's output (text, or the validated JSON value) and the answer's token count."""
    answer = await with_retries(lambda: backend.call(call), retry, spend)
    spend.add(answer)
    if schema is None:
        return answer.text, answer.usage.completion
    try:
        return parse_structured(answer.text, schema), answer.usage.completion
    except AnswerInvalid as problem:
        repair = replace(
            call,
            messages=[
                *call.messages,
                {"role": "assistant", "content": answer.text},
                {"role": "user", "content": repair_message(str(problem))},
            ],
            metadata={**call.metadata, "repair": "1"},
        )
    spend.repaired = True
    fixed = await with_retries(lambda: backend.call(repair), retry, spend)
    spend.add(fixed)
    try:
        return parse_structured(fixed.text, schema), fixed.usage.completion
    except AnswerInvalid as again:
        raise StepFailure(f"the answer did not match output.schema, even after one repair: {again}") from None


async def run_tool(function: Callable[..., Any], args: dict[str, Any], retry: Retry, spend: Spend) -> Any:
    """A tool's return value; sync functions run in a worker thread so the scheduler never blocks."""

    async def invoke() -> Any:
        if inspect.iscoroutinefunction(function):
            return await function(**args)
        result = await asyncio.to_thread(function, **args)
        return await result if inspect.isawaitable(result) else result

    return await with_retries(invoke, retry, spend)
