"""Access.update_key: this replica applies an edit at once, and a key refresh whose store read began before
the edit does not undo it (it would for up to `access.refresh_s`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from modelyard.server.access import Access
from modelyard.state.counters import MemoryCounters
from modelyard.state.keys import KeyRecord
from modelyard.state.sqlite_store import SQLiteStore


class SlowList:
    """The store, with `list_keys` held until released (a refresh caught mid-read)."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self.reading = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def list_keys(self, *, include_revoked: bool = False) -> list[KeyRecord]:
        records = await self.store.list_keys(include_revoked=include_revoked)
        self.reading.set()
        await self.release.wait()
        return records


async def test_an_edit_survives_a_refresh_that_read_before_it(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "keys.db"))
    await store.open()
    slow = SlowList(store)
    access = Access(store=slow, counters=MemoryCounters(), master_key="sk-master-0123456789", refresh_s=0)
    try:
        raw, record = await access.create_key("edited", rpm=100)
        assert (await access.authenticate(raw)).rpm == 100
        refresh = asyncio.create_task(access.reload())
        await slow.reading.wait()  # the refresh holds the old rows
        before = await store.get_key(record.id)
        assert before is not None
        updated = await access.update_key(before, {"rpm": 1, "name": "renamed"})
        assert updated is not None and updated.rpm == 1
        assert (await access.authenticate(raw)).rpm == 1  # at once
        slow.release.set()
        await refresh
        key = await access.authenticate(raw)
        assert (key.rpm, key.name) == (1, "renamed")  # not undone by the stale read
        await access.reload()  # a later refresh reads the edit from the store
        assert (await access.authenticate(raw)).rpm == 1
        assert await access.update_key(before, {"rpm": 2}) is not None
        await access.revoke_key(record.id)
        assert await access.update_key(before, {"rpm": 3}) is None  # revoked: nothing written
        assert (await store.get_key(record.id)).rpm == 2  # type: ignore[union-attr]
    finally:
        await store.close()
