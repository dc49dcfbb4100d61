"""Attempt records and the retry policy: what happened on each try, and what to do after a failure.

The policy is a pure function of the error kind, the deployment's state in this request and the config,
so the executor's loop stays small and the decisions are table-testable.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum

from modelyard.schema.errors import ErrorKind, ProviderError

#: Kinds retried on the same deployment (after a backoff) before failing over.
SAME_DEPLOYMENT_RETRY = frozenset(
    {ErrorKind.RATE_LIMITED, ErrorKind.OVERLOADED, ErrorKind.SERVER, ErrorKind.CONNECTION}
)


#: Characters of an attempt's error text kept in its record (the spend log's attempt detail, the dashboard).
ERROR_CHARS = 300


class Next(Enum):
    RETRY = "retry"  # same deployment, after a backoff
    FAILOVER = "failover"  # next candidate
    STOP = "stop"  # give the error to the client


@dataclass(slots=True)
class AttemptRecord:
    deployment: str
    provider: str
    outcome: str  # "ok", an ErrorKind value, or "cancelled"
    latency_ms: float
    status: int | None = None
    hedge: bool = False
    cost_usd: float = 0.0
    retry_after: float | None = None
    #: When the attempt started, on the executor's clock (the trace gives it relative to the request's start).
    started: float = 0.0
    #: What went wrong (the ProviderError's client-safe message, at most ERROR_CHARS); '' when it answered.
    error: str = ""

    def fail(self, error: ProviderError) -> None:
        """Record `error` as this attempt's outcome (its kind) and text (bounded)."""
        self.outcome = error.kind.value
        self.error = error.message[:ERROR_CHARS]

    def header_part(self) -> str:
        extra = " hedge" if self.hedge else ""
        return f"{self.deployment} {self.outcome} {self.latency_ms:.0f}ms{extra}"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries per deployment, exponential backoff with full jitter, Retry-After honoured up to a cap."""

    retries: int = 1
    base_s: float = 0.1
    max_backoff_s: float = 2.0
    retry_after_cap_s: float = 5.0
    max_attempts: int = 8
    failover_on_content_filter: bool = False

    def next_step(self, error: ProviderError, retries_used: int) -> Next:
        kind = error.kind
        if kind is ErrorKind.BAD_REQUEST or kind is ErrorKind.GUARDRAIL_BLOCKED:
            return Next.STOP
        if kind is ErrorKind.CONTENT_FILTER:
            return Next.FAILOVER if self.failover_on_content_filter else Next.STOP
        if kind in SAME_DEPLOYMENT_RETRY and retries_used < self.retries:
            if error.retry_after is not None and error.retry_after > self.retry_after_cap_s:
                return Next.FAILOVER  # the provider asks for longer than we are willing to wait
            return Next.RETRY
        return Next.FAILOVER

    def backoff(self, error: ProviderError, retries_used: int, rng: random.Random) -> float:
        if error.retry_after is not None:
            return min(error.retry_after, self.retry_after_cap_s)
        ceiling = min(self.max_backoff_s, self.base_s * (2**retries_used))
        return rng.uniform(0, ceiling)


def attempts_header(records: list[AttemptRecord]) -> str:
    """`x-modelyard-attempts`: the count, then each attempt (deployment, outcome, latency)."""
    if len(records) == 1:
        return "1; " + records[0].header_part()
    return f"{len(records)}; " + ", ".join([r.header_part() for r in records])
