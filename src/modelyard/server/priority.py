"""A request's place in the admission queue: its priority class, its tenant and how long it may wait.

The class comes from the request (`x-modelyard-priority` or `extra_body.modelyard.priority`), else its
key's `priority` metadata, else `queue.default_class`; it is capped by the key's `max_priority` (which
defaults to the key's own `priority`, else the default class): a tenant cannot buy its way to the front
by asking. The master key and open mode are not capped. The wait is bounded by the smallest of the
request's `x-modelyard-timeout-ms`, the key's `max_queue_ms` and the model's (or the gateway's) `max_wait_ms`.
"""

from __future__ import annotations

from collections.abc import Mapping

from modelyard.config.model import ModelGroup, QueueSettings
from modelyard.routing.admission import QueueTicket
from modelyard.schema.chat import ModelyardOptions
from modelyard.schema.errors import GatewayError
from modelyard.server.access import MASTER_ID, KeyState
from modelyard.server.http import Request

PRIORITY_HEADER = b"x-modelyard-priority"


class QueuePolicy:
    """`queue:` compiled once: class names to ranks, and the ticket of each request."""

    def __init__(self, settings: QueueSettings, models: Mapping[str, ModelGroup] | None = None) -> None:
        #: Off when the queue is off everywhere (`queue.enabled: false` and no model turns it on): no ticket,
        #: so a request does no queue work at all.
        self.enabled = settings.enabled or any(g.queue is not None and g.queue.enabled for g in (models or {}).values())
        self.ranks = {c.name: i for i, c in enumerate(settings.classes)}
        self.default_rank = self.ranks[settings.default_class]
        self.lowest = len(settings.classes) - 1
        self.max_wait_s = settings.max_wait_ms / 1000.0
        self.names = ", ".join(self.ranks)

    def ticket(
        self, request: Request, key: KeyState | None, overrides: ModelyardOptions | None, timeout_s: float | None
    ) -> QueueTicket | None:
        if not self.enabled:
            return None
        asked = request.header(PRIORITY_HEADER)
        param = "x-modelyard-priority"
        if asked is None and overrides is not None and overrides.priority is not None:
            asked, param = overrides.priority, "modelyard.priority"
        rank = self._rank_of(asked.strip(), param) if asked is not None else None
        # A class the config no longer has (renamed, removed) counts as the lowest: never a promotion.
        own = self.ranks.get(key.priority, self.lowest) if key is not None and key.priority else None
        if rank is None:
            rank = own if own is not None else self.default_rank
        if key is not None and key.id != MASTER_ID:
            cap_name = key.max_priority or key.priority
            cap = self.ranks.get(cap_name, self.lowest) if cap_name else self.default_rank
            rank = max(rank, cap)  # a lower rank is a higher class: never above the key's maximum
        max_wait_s = self.max_wait_s
        if key is not None and key.max_queue_s is not None:
            max_wait_s = min(max_wait_s, key.max_queue_s)
        if timeout_s is not None:
            max_wait_s = min(max_wait_s, timeout_s)
        tenant = key.id if key is not None else ""
        return QueueTicket(rank, tenant, max_wait_s, request.gone, timeout_s)

    def _rank_of(self, name: str, param: str) -> int:
        rank = self.ranks.get(name)
        if rank is None:
            raise GatewayError(
                400, f"unknown priority {name[:64]!r} (one of: {self.names})", param=param, code="unknown_priority"
            )
        return rank
