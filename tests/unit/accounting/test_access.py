"""The access layer on its own: credentials, the key cache, open mode, estimates, budgets from the log."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from modelyard.accounting.budgets import NANO
from modelyard.accounting.spend import SpendRecord
from modelyard.config.model import Config, Deployment, KeyLimits, ModelGroup, Price
from modelyard.routing.features import RequestFeatures
from modelyard.routing.table import RoutingTable
from modelyard.schema.chat import Usage
from modelyard.schema.errors import GatewayError
from modelyard.server.access import Access, credential_of, estimate_prices
from modelyard.server.observe import Outcome
from modelyard.state.counters import MemoryCounters
from modelyard.state.keys import new_key
from modelyard.state.sqlite_store import SQLiteStore

MASTER = "sk-master-unit"


class _Ctx:
    """The slots of RequestContext that access reads and writes."""

    def __init__(self, credential: str | None) -> None:
        self.credential = credential
        self.key_id: str | None = None
        self.key_name: str | None = None
        self.reservation: Any = None
        self.content: str | None = None
        self.key: Any = None  # authenticated from the headers by the gateway; None: admit authenticates


def Ctx(credential: str | None) -> Any:  # reads as the class it stands for
    return _Ctx(credential)


class CountingStore(SQLiteStore):
    def __init__(self) -> None:
        super().__init__(":memory:")
        self.finds = 0

    async def find_key(self, key_hash: str) -> Any:
        self.finds += 1
        return await super().find_key(key_hash)


@pytest.fixture
async def store() -> AsyncIterator[CountingStore]:
    made = CountingStore()
    await made.open()
    yield made
    await made.close()


async def make_access(store: CountingStore, master: str | None = MASTER, **kwargs: Any) -> Access:
    access = Access(
        store=store,
        counters=MemoryCounters(),
        master_key=master,
        refresh_s=0,
        prices={"smart": (1000.0, 2000.0)},
        **kwargs,
    )  # 1 and 2 USD per 1M tokens, in nano
    await access.start()
    return access


def features(prompt: int = 100, max_tokens: int | None = 50) -> RequestFeatures:
    return RequestFeatures(prompt_tokens=prompt, max_output_tokens=max_tokens)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"authorization", b"Bearer sk-1")], "sk-1"),
        ([(b"authorization", b"bearer   sk-2  ")], "sk-2"),
        ([(b"x-api-key", b"sk-3")], "sk-3"),
        ([(b"x-api-key", b"sk-4"), (b"authorization", b"Bearer sk-5")], "sk-5"),
        ([(b"authorization", b"Basic abc"), (b"x-api-key", b"sk-6")], "sk-6"),
        ([(b"authorization", b"Bearer ")], None),
        ([], None),
    ],
)
def test_credential_from_either_header(headers: list[tuple[bytes, bytes]], expected: str | None) -> None:
    assert credential_of(headers) == expected


def test_estimate_uses_the_dearest_candidate_and_fallbacks() -> None:
    def dep(name: str, price: tuple[float, float] | None) -> Deployment:
        return Deployment(
            name=name, provider="openai", model=name, price=Price(input=price[0], output=price[1]) if price else None
        )

    deps = [dep("a", (1.0, 4.0)), dep("b", (3.0, 2.0)), dep("c", (0.5, 9.0)), dep("d", None)]
    config = Config(
        deployments=deps,
        models={
            "smart": ModelGroup(candidates=["a", "b"], fallbacks=["cheap"]),
            "cheap": ModelGroup(candidates=["c", "d"], fallbacks=["smart"]),
        },
    )
    prices = estimate_prices(RoutingTable.from_config(config))
    assert prices["smart"] == (3000.0, 9000.0)  # nano-dollars per token: b's input, c's output (a fallback)
    assert prices["cheap"] == (3000.0, 9000.0)  # the cycle back to smart is followed once
    assert prices["a"] == (1000.0, 4000.0)
    assert prices["d"] == (0.0, 0.0)


async def test_open_mode_needs_no_master_and_no_keys(store: CountingStore) -> None:
    access = await make_access(store, master=None)
    assert access.open
    ctx = Ctx(None)
    await access.admit(ctx, "smart", features())
    assert ctx.key_id is None
    await access.close()


async def test_keys_in_the_store_end_open_mode(store: CountingStore) -> None:
    raw, record = new_key("team")
    await store.create_key(record)
    access = await make_access(store, master=None)
    assert not access.open
    with pytest.raises(GatewayError) as missing:
        await access.admit(Ctx(None), "smart", features())
    assert missing.value.status == 401
    ctx = Ctx(raw)
    feats = features()
    await access.admit(ctx, "smart", feats)
    assert (ctx.key_id, ctx.key_name, feats.key_name) == (record.id, "team", "team")
    await access.close()


async def test_a_key_made_elsewhere_is_found_on_a_cache_miss_and_unknown_keys_are_remembered(
    store: CountingStore,
) -> None:
    access = await make_access(store)
    raw, record = new_key("made-by-the-cli")
    await store.create_key(record)  # after start: not in the cache
    await access.admit(Ctx(raw), "smart", features())
    await access.admit(Ctx(raw), "smart", features())
    assert store.finds == 1  # one miss, then the cache
    for _ in range(3):
        with pytest.raises(GatewayError):
            await access.admit(Ctx("sk-my-unknown"), "smart", features())
    assert store.finds == 2  # the unknown hash hit the store once
    await access.close()


async def test_revocation_elsewhere_shows_after_a_reload(store: CountingStore) -> None:
    raw, record = new_key("team")
    await store.create_key(record)
    access = await make_access(store)
    await access.admit(Ctx(raw), "smart", features())
    await store.revoke_key(record.id, time.time())  # another replica revoked it
    await access.reload()
    with pytest.raises(GatewayError) as revoked:
        await access.admit(Ctx(raw), "smart", features())
    assert revoked.value.code == "invalid_api_key"
    await access.close()


async def test_budget_period_starts_from_the_spend_log(store: CountingStore) -> None:
    raw, record = new_key("team", budget_usd=0.001, period_s=86400.0)
    await store.create_key(record)
    # 0.0009 USD already spent in this period (e.g. before a restart); older spend does not count
    await store.write_spend(
        [
            SpendRecord(id="r1", at=time.time(), key_id=record.id, cost_usd=0.0009),
            SpendRecord(id="r0", at=record.created_at - 10, key_id=record.id, cost_usd=5.0),
        ]
    )
    access = await make_access(store)
    # estimate: 100 x 1000 + 50 x 2000 = 200_000 nano = 0.0002 USD > the 0.0001 left
    with pytest.raises(GatewayError) as spent:
        await access.admit(Ctx(raw), "smart", features())
    assert spent.value.status == 429 and spent.value.type == "insufficient_quota"
    await access.admit(Ctx(raw), "smart", features(prompt=10, max_tokens=40))  # 90_000 nano fits
    await access.close()


async def test_settle_charges_the_actual_cost_and_release_gives_it_back(store: CountingStore) -> None:
    raw, record = new_key("team", budget_usd=1.0)
    await store.create_key(record)
    access = await make_access(store)
    ctx = Ctx(raw)
    await access.admit(ctx, "smart", features())
    counters = access.counters
    assert await counters.budget_state(record.id, 0) == (0, 200_000)
    outcome = Outcome(ctx, "ok", "a", "openai", [], Usage(prompt=100, completion=10), 0.00012, 5.0, None)
    access.settle(ctx, outcome)
    assert await counters.budget_state(record.id, 0) == (120_000, 0)
    assert ctx.reservation is None
    second = Ctx(raw)
    await access.admit(second, "smart", features())
    access.release(second)
    assert await counters.budget_state(record.id, 0) == (120_000, 0)
    spend = await access.key_spend(record)
    assert spend is not None and spend["spent_usd"] == pytest.approx(120_000 / NANO)
    await access.close()


async def test_master_key_limits(store: CountingStore) -> None:
    limited = await make_access(store, master_limits=KeyLimits(rpm=1))
    await limited.admit(Ctx(MASTER), "smart", features())
    with pytest.raises(GatewayError) as refused:
        await limited.admit(Ctx(MASTER), "smart", features())
    assert refused.value.status == 429 and refused.value.headers["Retry-After"].isdigit()
    await limited.close()
    exempt = await make_access(store, master_limits=KeyLimits(rpm=1), master_unlimited=True)
    for _ in range(3):
        await exempt.admit(Ctx(MASTER), "smart", features())
    await exempt.close()


async def test_log_content_captures_the_prompt_only_when_asked(store: CountingStore) -> None:
    for capture, expected in ((False, None), (True, "hello there")):
        access = await make_access(store, capture_content=capture)
        ctx = Ctx(MASTER)
        feats = features()
        feats.prompt_text = "hello there"
        await access.admit(ctx, "smart", feats)
        assert ctx.content == expected
        await access.close()
