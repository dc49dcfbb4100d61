"""Stored Responses conversations on SQLite and on PostgreSQL (the real server): round trip, the chain a
`previous_response_id` brings, key scoping (another key's id is a 404), TTL expiry, the quota, purging."""

from __future__ import annotations

from typing import Any, cast

import pytest

from modelyard.schema.errors import GatewayError
from modelyard.state.conversations import Conversations, ResponseStore
from modelyard.state.store import Store


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _conversations(store: Store, clock: Clock, *, ttl_s: float = 100.0, max_per_key: int = 100) -> Conversations:
    return Conversations(cast(ResponseStore, store), ttl_s=ttl_s, max_per_key=max_per_key, clock=clock)


def _msg(role: str, text: str) -> dict[str, Any]:
    part = "output_text" if role == "assistant" else "input_text"
    return {"type": "message", "role": role, "content": [{"type": part, "text": text}]}


async def _turns(conv: Conversations, key: str | None, n: int) -> list[str]:
    ids: list[str] = []
    for i in range(n):
        rid = f"resp_{key}_{i}"
        await conv.save(
            key,
            rid,
            model="m",
            previous_id=ids[-1] if ids else None,
            input_items=[_msg("user", f"q{i}")],
            output_items=[_msg("assistant", f"a{i}")],
            response={"id": rid, "object": "response", "output": [_msg("assistant", f"a{i}")]},
        )
        ids.append(rid)
    return ids


async def test_chain_is_the_whole_conversation_in_order(store: Store) -> None:
    conv = _conversations(store, Clock())
    ids = await _turns(conv, "k1", 3)
    history = await conv.history("k1", ids[-1])
    texts = [item["content"][0]["text"] for item in history.items]
    assert texts == ["q0", "a0", "q1", "a1", "q2", "a2"]
    assert history.upstream is None
    middle = await conv.history("k1", ids[1])
    assert [item["content"][0]["text"] for item in middle.items] == ["q0", "a0", "q1", "a1"]
    got = await conv.get("k1", ids[0])
    assert got.response == {"id": ids[0], "object": "response", "output": [_msg("assistant", "a0")]}
    assert got.input_items == [_msg("user", "q0")]


async def test_another_key_sees_nothing(store: Store) -> None:
    conv = _conversations(store, Clock())
    ids = await _turns(conv, "k1", 2)
    for key in ("k2", None):
        with pytest.raises(GatewayError) as caught:
            await conv.history(key, ids[-1])
        assert caught.value.status == 404 and caught.value.param == "previous_response_id"
        with pytest.raises(GatewayError):
            await conv.get(key, ids[0])
        with pytest.raises(GatewayError):
            await conv.delete(key, ids[0])
    assert (await conv.get("k1", ids[0])).id == ids[0]  # still there for its owner


async def test_open_mode_rows_belong_to_no_key(store: Store) -> None:
    conv = _conversations(store, Clock())
    ids = await _turns(conv, None, 1)
    assert (await conv.get(None, ids[0])).id == ids[0]
    with pytest.raises(GatewayError):
        await conv.get("k1", ids[0])


async def test_unknown_id_is_a_404(store: Store) -> None:
    conv = _conversations(store, Clock())
    with pytest.raises(GatewayError) as caught:
        await conv.history("k1", "resp_nope")
    assert caught.value.status == 404
    assert caught.value.to_body()["error"]["code"] == "response_not_found"


async def test_ttl_expiry_and_a_broken_chain(store: Store) -> None:
    clock = Clock()
    conv = _conversations(store, clock, ttl_s=100.0)
    first = await _turns(conv, "k1", 1)
    clock.now += 60
    await conv.save(
        "k1",
        "resp_later",
        model="m",
        previous_id=first[0],
        input_items=[_msg("user", "q")],
        output_items=[],
        response=None,
    )
    clock.now += 50  # the first expired, the later not
    with pytest.raises(GatewayError):
        await conv.get("k1", first[0])
    assert (await conv.get("k1", "resp_later")).id == "resp_later"
    with pytest.raises(GatewayError) as caught:  # its history has a hole: not served half
        await conv.history("k1", "resp_later")
    assert caught.value.status == 404 and first[0] in caught.value.message
    clock.now += 1000
    removed = await cast(ResponseStore, store).purge_responses(clock.now)
    assert removed == 2
    assert await cast(ResponseStore, store).count_responses("k1", 0.0) == 0


async def test_delete(store: Store) -> None:
    conv = _conversations(store, Clock())
    ids = await _turns(conv, "k1", 1)
    await conv.delete("k1", ids[0])
    with pytest.raises(GatewayError):
        await conv.get("k1", ids[0])
    with pytest.raises(GatewayError):
        await conv.delete("k1", ids[0])


async def test_quota_per_key(store: Store) -> None:
    conv = _conversations(store, Clock(), max_per_key=2)
    await _turns(conv, "k1", 2)
    with pytest.raises(GatewayError) as caught:
        await conv.check_quota("k1")
    assert caught.value.status == 429 and caught.value.param == "store"
    await conv.check_quota("k2")  # another key's count is its own


async def test_upstream_rows_record_their_deployment(store: Store) -> None:
    conv = _conversations(store, Clock())
    await conv.save(
        "k1", "resp_up", model="m", previous_id=None, input_items=[], output_items=[], response=None, upstream="oai-1"
    )
    assert (await conv.history("k1", "resp_up")).upstream == "oai-1"
    with pytest.raises(GatewayError):
        await conv.history("k2", "resp_up")


async def test_text_the_store_cannot_hold_is_kept(store: Store) -> None:
    conv = _conversations(store, Clock())
    await conv.save(
        "k1",
        "resp_u",
        model="m",
        previous_id=None,
        input_items=[_msg("user", "naïve ☃ 😀")],
        output_items=[],
        response=None,
    )
    assert (await conv.history("k1", "resp_u")).items[0]["content"][0]["text"] == "naïve ☃ 😀"
