"""Stored Responses-API conversations: each response's input and output items, scoped by the key that made it.

`previous_response_id` continues a conversation from the store (one recursive query walks the chain), and
GET/DELETE `/v1/responses/{id}` read it. Every lookup carries the caller's key id: a response of another key
is exactly as absent as an unknown one (a 404, never another tenant's conversation). Rows expire after the
configured TTL (expired rows are invisible at once and purged now and then by `Conversations.save`); a key
holds at most `max_per_key` live responses. A pass-through response (its state lives upstream) is recorded
with the deployment that holds it and no items, so its id is still refused to every other key.

The rows live in the gateway's store (SQLite or PostgreSQL: `state/sqlite_store.py`, `postgres_store.py`),
which implement `ResponseStore`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import msgspec

from modelyard.schema.errors import GatewayError

#: Columns of `modelyard_responses` in insert order.
RESPONSE_COLUMNS: tuple[str, ...] = (
    "id",
    "key_id",
    "created_at",
    "expires_at",
    "model",
    "previous_id",
    "upstream",
    "input_items",
    "output_items",
    "response",
)

#: The longest `previous_response_id` chain followed (a conversation of more turns is refused, with a 400).
MAX_CHAIN = 1000

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class StoredResponse(msgspec.Struct, kw_only=True):
    """One stored response. `key_id` is "" for a request made without a key (open mode)."""

    id: str
    key_id: str
    created_at: float
    expires_at: float
    model: str
    previous_id: str | None = None
    #: The deployment whose upstream holds this response's state (pass-through); None: the items are here.
    upstream: str | None = None
    input_items: list[dict[str, Any]] = msgspec.field(default_factory=list)
    output_items: list[dict[str, Any]] = msgspec.field(default_factory=list)
    #: The Response object as answered (GET /v1/responses/{id}); None for pass-through rows.
    response: dict[str, Any] | None = None


class ResponseStore(Protocol):
    """What a store offers for conversations (both SQL stores implement it; `scoped` = the key id matches
    and the row has not expired)."""

    async def put_response(self, record: StoredResponse) -> None: ...

    async def get_response(self, key_id: str, response_id: str, now: float) -> StoredResponse | None: ...

    async def response_chain(self, key_id: str, response_id: str, now: float, limit: int) -> list[StoredResponse]:
        """The response and its ancestors (at most `limit + 1`), oldest first; [] when the first is absent."""
        ...

    async def delete_response(self, key_id: str, response_id: str, now: float) -> bool: ...

    async def count_responses(self, key_id: str, now: float) -> int: ...

    async def purge_responses(self, now: float) -> int:
        """Delete expired rows; the number deleted."""
        ...


# --------------------------------------------------------------------------- rows (shared by both stores)


def response_row(record: StoredResponse) -> tuple[Any, ...]:
    return (
        record.id,
        record.key_id,
        record.created_at,
        record.expires_at,
        record.model,
        record.previous_id,
        record.upstream,
        _encode(record.input_items).decode(),
        _encode(record.output_items).decode(),
        None if record.response is None else _encode(record.response).decode(),
    )


def response_from_row(row: Sequence[Any]) -> StoredResponse:
    values = dict(zip(RESPONSE_COLUMNS, row, strict=False))
    return StoredResponse(
        id=values["id"],
        key_id=values["key_id"],
        created_at=float(values["created_at"]),
        expires_at=float(values["expires_at"]),
        model=values["model"],
        previous_id=values["previous_id"],
        upstream=values["upstream"],
        input_items=_decode(values["input_items"] or "[]"),
        output_items=_decode(values["output_items"] or "[]"),
        response=None if values["response"] is None else _decode(values["response"]),
    )


def chain_sql(ph: Callable[[int], str]) -> str:
    """The recursive walk up a conversation, oldest first; parameters: 1 id, 2 key id, 3 now, 4 the limit.
    Every link must belong to the key and be alive (a chain is never completed from another tenant's rows)."""
    cols = ", ".join(RESPONSE_COLUMNS)
    joined = ", ".join(f"r.{c}" for c in RESPONSE_COLUMNS)
    return (
        f"WITH RECURSIVE chain ({cols}, depth) AS ("
        f"SELECT {cols}, 0 FROM modelyard_responses WHERE id = {ph(1)} AND key_id = {ph(2)} AND expires_at > {ph(3)} "
        f"UNION ALL SELECT {joined}, c.depth + 1 FROM modelyard_responses r JOIN chain c ON r.id = c.previous_id "
        f"WHERE r.key_id = {ph(2)} AND r.expires_at > {ph(3)} AND c.depth < {ph(4)}"
        f") SELECT {cols} FROM chain ORDER BY depth DESC"
    )


def select_sql(ph: Callable[[int], str]) -> str:
    return (
        f"SELECT {', '.join(RESPONSE_COLUMNS)} FROM modelyard_responses "
        f"WHERE id = {ph(1)} AND key_id = {ph(2)} AND expires_at > {ph(3)}"
    )


def insert_sql(ph: Callable[[int], str]) -> str:
    values = ", ".join(ph(i + 1) for i in range(len(RESPONSE_COLUMNS)))
    return f"INSERT INTO modelyard_responses ({', '.join(RESPONSE_COLUMNS)}) VALUES ({values})"


DELETE_SQL = "DELETE FROM modelyard_responses WHERE id = {0} AND key_id = {1} AND expires_at > {2}"
COUNT_SQL = "SELECT COUNT(*) FROM modelyard_responses WHERE key_id = {0} AND expires_at > {1}"
PURGE_SQL = "DELETE FROM modelyard_responses WHERE expires_at <= {0}"


# --------------------------------------------------------------------------- the service


def not_found(response_id: str, param: str | None = None) -> GatewayError:
    """OpenAI's 404 for a response id: the same whether it never existed, expired, or is another key's."""
    return GatewayError(
        404,
        f"Response with id '{response_id[:64]}' not found.",
        param=param,
        code="response_not_found",
    )


class Conversation(msgspec.Struct, kw_only=True):
    """The history a `previous_response_id` brings: the items, oldest first, and where its state lives."""

    items: list[dict[str, Any]]
    #: The deployment holding the conversation upstream (pass-through), else None.
    upstream: str | None = None


class Conversations:
    """Key-scoped reads and writes of stored responses, with the TTL, the per-key quota and purging."""

    def __init__(
        self,
        store: ResponseStore,
        *,
        ttl_s: float,
        max_per_key: int,
        purge_every_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.max_per_key = max_per_key
        self.purge_every_s = purge_every_s
        self.clock = clock
        self._last_purge = 0.0

    async def history(self, key_id: str | None, response_id: str) -> Conversation:
        """The conversation up to and including `response_id` (its inputs and outputs, turn after turn).
        404 (param `previous_response_id`) when unknown, expired, another key's, or a link of it expired."""
        chain = await self.store.response_chain(key_id or "", response_id, self.clock(), MAX_CHAIN)
        if not chain:
            raise not_found(response_id, "previous_response_id")
        if chain[0].previous_id is not None:
            if len(chain) > MAX_CHAIN:
                raise GatewayError(
                    400,
                    f"The conversation is longer than {MAX_CHAIN} responses.",
                    param="previous_response_id",
                    code="invalid_value",
                )
            raise not_found(chain[0].previous_id, "previous_response_id")  # an earlier turn expired
        items: list[dict[str, Any]] = []
        for link in chain:
            items.extend(link.input_items)
            items.extend(link.output_items)
        return Conversation(items=items, upstream=chain[-1].upstream)

    async def check_quota(self, key_id: str | None) -> None:
        """429 when the key already holds its most live stored responses (checked before the model runs)."""
        count = await self.store.count_responses(key_id or "", self.clock())
        if count >= self.max_per_key:
            raise GatewayError(
                429,
                f"This key stores {count} responses, its most; send `store: false`, delete some, or wait for "
                "them to expire.",
                type="rate_limit_error",
                param="store",
                code="stored_responses_quota_exceeded",
            )

    async def save(
        self,
        key_id: str | None,
        response_id: str,
        *,
        model: str,
        previous_id: str | None,
        input_items: list[dict[str, Any]],
        output_items: list[dict[str, Any]],
        response: dict[str, Any] | None,
        upstream: str | None = None,
    ) -> None:
        now = self.clock()
        record = StoredResponse(
            id=response_id,
            key_id=key_id or "",
            created_at=now,
            expires_at=now + self.ttl_s,
            model=model,
            previous_id=previous_id,
            upstream=upstream,
            input_items=input_items,
            output_items=output_items,
            response=response,
        )
        await self.store.put_response(record)
        if now - self._last_purge >= self.purge_every_s:
            self._last_purge = now
            await self.store.purge_responses(now)

    async def get(self, key_id: str | None, response_id: str) -> StoredResponse:
        found = await self.store.get_response(key_id or "", response_id, self.clock())
        if found is None:
            raise not_found(response_id)
        return found

    async def delete(self, key_id: str | None, response_id: str) -> None:
        if not await self.store.delete_response(key_id or "", response_id, self.clock()):
            raise not_found(response_id)


__all__ = [
    "COUNT_SQL",
    "DELETE_SQL",
    "MAX_CHAIN",
    "PURGE_SQL",
    "RESPONSE_COLUMNS",
    "Conversation",
    "Conversations",
    "ResponseStore",
    "StoredResponse",
    "chain_sql",
    "insert_sql",
    "not_found",
    "response_from_row",
    "response_row",
    "select_sql",
]
