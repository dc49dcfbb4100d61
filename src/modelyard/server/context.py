"""What one gateway request carries while it runs (`RequestContext`), and the types of a route.

Kept out of server/app.py so the handlers, the codecs, access control and the observers can name them
without importing the app (the server package has no import cycle: app imports pipeline and codecs,
never the other way round).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from modelyard.config.model import Deployment
from modelyard.providers.base import new_id
from modelyard.routing.attempts import AttemptRecord
from modelyard.schema.chat import Usage
from modelyard.schema.errors import GatewayError, ProviderError
from modelyard.server.http import Headers, Request, Send
from modelyard.server.observe import Outcome

if TYPE_CHECKING:
    from modelyard.accounting.budgets import Reservation
    from modelyard.routing.intelligence import Insight
    from modelyard.routing.plan import Plan
    from modelyard.server.access import KeyState
    from modelyard.server.app import Gateway
    from modelyard.server.guards import RequestGuards

#: A route's handler: the gateway, the request, its context.
Handler = Callable[["Gateway", Request, "RequestContext"], Awaitable[None]]
#: Writes an error in the route's own shape (OpenAI's, or Anthropic's on /v1/messages).
ErrorWriter = Callable[[Send, int, dict[str, Any], Headers], Awaitable[None]]


class RequestContext:
    """What the gateway knows about one request while it runs; reported once at the end."""

    __slots__ = (
        "authenticated",
        "content",
        "credential",
        "endpoint",
        "explain",
        "finished",
        "gateway",
        "guards",
        "insight",
        "key",
        "key_id",
        "key_name",
        "plan",
        "queue_ms",
        "request_id",
        "requested_model",
        "reservation",
        "spooled",
        "started",
        "tags",
        "task",
        "ttft_ms",
    )

    def __init__(self, gateway: Gateway, endpoint: str) -> None:
        self.gateway = gateway
        self.endpoint = endpoint
        self.request_id = new_id("req_")
        self.started = time.perf_counter()
        self.key_name: str | None = None
        self.requested_model: str | None = None
        self.explain: dict[str, Any] | None = None
        #: The request's first routing plan (the spend log stores it, compact: routing/trace.py); None when
        #: nothing was planned (a response-cache hit, an error before routing, embeddings).
        self.plan: Plan | None = None
        self.tags: tuple[str, ...] = ()
        self.ttft_ms: float | None = None
        #: Time spent in the admission queue (x-modelyard-queue-ms on the answer).
        self.queue_ms = 0.0
        self.finished = False
        self.spooled = False  # its spend record was handed to the spool
        self.credential: str | None = None
        self.key_id: str | None = None
        #: The key presented, once `Gateway._http` has authenticated it (None in open mode).
        self.key: KeyState | None = None
        #: Whether the caller is known (a valid key, or open mode): only then is a spend row written.
        self.authenticated = False
        self.reservation: Reservation | None = None
        self.content: str | None = None
        #: This request's guardrails and their findings (server/guards.py), or None when none apply.
        self.guards: RequestGuards | None = None
        #: What the routing intelligence found (only for requests it analysed) and the task, given or
        #: recognised: the spend row keeps them for learning from feedback (`learning_fields`).
        self.insight: Insight | None = None
        self.task: str | None = None

    @property
    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    # A request ends in three steps: build its Outcome (`success` / `failure`), `commit` it (its spend record
    # into the spool, awaited: in the kernel before the response's last byte) and `report` it after that byte
    # (budget settlement, metrics, traces). `end` does the last two around the final send; `finish_*` build
    # and report at once (a cancelled stream has no last byte; its record still reaches the spool this tick).

    def success(
        self, dep: Deployment, records: list[AttemptRecord], usage: Usage, cost: float, *, ttft_ms: float | None
    ) -> Outcome:
        return Outcome(
            self, "ok", dep.name, dep.provider, records, usage, cost, self.elapsed_ms, ttft_ms, guards=self.guards
        )

    def failure(
        self,
        error: ProviderError | GatewayError,
        records: list[AttemptRecord] | None = None,
        *,
        after_first_byte: bool = False,
        usage: Usage | None = None,
        cost: float = 0.0,
    ) -> Outcome:
        kind = error.kind.value if isinstance(error, ProviderError) else f"http_{error.status}"
        dep = error.deployment if isinstance(error, ProviderError) else None
        status = "stream_error" if after_first_byte else "error"
        return Outcome(
            self,
            status,
            dep,
            None,
            records or [],
            usage or Usage(),
            cost,
            self.elapsed_ms,
            None,
            error_kind=kind,
            guards=self.guards,
        )

    async def commit(self, outcome: Outcome) -> None:
        """Put this request's spend record in the spool; returns once it is in the kernel (one write() per
        event-loop tick for every request committing in it)."""
        written = self._spool(outcome, wait=True)
        if written is not None:
            await written

    async def end(self, outcome: Outcome, last: Awaitable[None] | None) -> None:
        """Commit, then send the response's last bytes (`last`, a coroutine not yet awaited), then report."""
        await self.commit(outcome)
        try:
            if last is not None:
                await last
        finally:
            self.report(outcome)

    def _spool(self, outcome: Outcome, *, wait: bool) -> asyncio.Future[None] | None:
        if self.spooled or not self.authenticated:  # a caller never authenticated leaves no spend row
            return None
        self.spooled = True
        services = self.gateway.services
        spend = services.spend if services is not None else None
        if spend is None:
            return None
        if wait:
            return spend.commit(outcome)
        spend.submit(outcome)
        return None

    def report(self, outcome: Outcome) -> None:
        if self.finished:
            return
        self.finished = True
        self._spool(outcome, wait=False)  # if not committed yet: in the spool at the end of this tick
        if self.reservation is not None and self.gateway.access is not None:
            self.gateway.access.settle(self, outcome)
        self.gateway.observer.on_outcome(outcome)

    def finish_success(
        self, dep: Deployment, records: list[AttemptRecord], usage: Usage, cost: float, *, ttft_ms: float | None
    ) -> None:
        self.report(self.success(dep, records, usage, cost, ttft_ms=ttft_ms))

    def finish_error(
        self,
        error: ProviderError | GatewayError,
        records: list[AttemptRecord] | None = None,
        *,
        after_first_byte: bool = False,
        usage: Usage | None = None,
        cost: float = 0.0,
    ) -> None:
        self.report(self.failure(error, records, after_first_byte=after_first_byte, usage=usage, cost=cost))

    def finish_cancelled(
        self,
        dep: Deployment,
        records: list[AttemptRecord],
        usage: Usage,
        cost: float,
        reason: str = "client_disconnected",
    ) -> None:
        self.report(
            Outcome(
                self,
                "cancelled",
                dep.name,
                dep.provider,
                records,
                usage,
                cost,
                self.elapsed_ms,
                None,
                error_kind=reason,
                guards=self.guards,
            )
        )


def learning_fields(ctx: Any, deployment: str | None) -> tuple[str | None, float | None, str | None]:
    """(task, the learned router's P(good) for `deployment`, the prompt embedding) for the spend row; all None
    for a request the routing intelligence did not analyse (nothing is computed for those). Reads the
    context's `insight` when it has one (a stand-in context without it counts as not analysed)."""
    insight: Insight | None = getattr(ctx, "insight", None)
    if insight is None:
        return None, None, None
    predicted = None
    if insight.predicted is not None and deployment is not None:
        name = ctx.gateway.intelligence.router_models.get(deployment)
        predicted = insight.predicted.get(name) if name is not None else None
    return ctx.task, predicted, insight.embedding
