"""What happened to each request, reported once at its end to whoever listens (spend log, metrics, logs).

Observers must never block the request path: `on_outcome` is synchronous and cheap (append to a buffer);
anything slow (database writes) happens in the observer's own background task.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from modelyard.routing.attempts import AttemptRecord
from modelyard.schema.chat import Usage

if TYPE_CHECKING:
    from modelyard.server.context import RequestContext
    from modelyard.server.guards import RequestGuards

log = logging.getLogger("modelyard.requests")


@dataclass(slots=True)
class Outcome:
    ctx: RequestContext
    status: str  # "ok" | "error" | "stream_error" | "cancelled"
    deployment: str | None
    provider: str | None
    records: list[AttemptRecord]
    usage: Usage
    cost_usd: float
    latency_ms: float
    ttft_ms: float | None
    error_kind: str | None = None
    at: float = field(default_factory=time.time)
    #: The request's guardrails and what they found (None when none applied).
    guards: RequestGuards | None = None


class Observer(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def on_outcome(self, outcome: Outcome) -> None: ...


class NullObserver:
    """Logs failures only (at INFO, without any request content)."""

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def on_outcome(self, outcome: Outcome) -> None:
        if outcome.status != "ok" and log.isEnabledFor(logging.INFO):
            log.info(
                "request %s %s: %s %s",
                outcome.ctx.request_id,
                outcome.status,
                outcome.error_kind,
                outcome.deployment or "-",
            )


class FanOut:
    """Several observers as one."""

    def __init__(self, observers: list[Any]) -> None:
        self.observers = observers

    async def start(self) -> None:
        for observer in self.observers:
            await observer.start()

    async def close(self) -> None:
        for observer in self.observers:
            await observer.close()

    def on_outcome(self, outcome: Outcome) -> None:
        for observer in self.observers:
            observer.on_outcome(outcome)
