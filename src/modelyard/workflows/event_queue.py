"""The Python API's event queue (`RunStream`): bounded without blocking the run or dropping any text.

A consumer that reads late, or stops reading, must not make the run hold one event per token (a 100-way
fan-out of long answers is ~200,000 of them). Once more than `limit` events wait, a new `step_token` is
merged into the newest waiting token of the same call (record key, step, item, round and attempt): its text
is appended there instead of queued. Each call's text therefore still arrives in order and joins to its
answer; only how it is cut into events changes (a merged event keeps its first piece's time). Other events
(run and step events, O(steps) of them) are always queued, so the queue holds at most `limit` + one token
event per call + the step events, and each token's text once. The run never waits for the consumer.
"""

from __future__ import annotations

import asyncio
from collections import deque

from modelyard.workflows.records import RunEvent
from modelyard.workflows.streaming import TOKEN_EVENT

DEFAULT_LIMIT = 1024
#: Whose text a token is: the call it came from (a retried call's attempts are kept apart).
_Source = tuple[str | None, str | None, int | None, int | None, int]


class EventQueue:
    """A FIFO of run events for one reader; `put_nowait` never blocks, and merges tokens past `limit`."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1:
            raise ValueError("an event queue's limit must be at least 1")
        self.limit = limit
        self._events: deque[RunEvent] = deque()
        #: The newest waiting token event of each call, with the texts merged into it so far (joined when
        #: it is read: appending to one string each time would copy the text over and over).
        self._newest: dict[_Source, tuple[RunEvent, list[str]]] = {}
        self._ready = asyncio.Event()

    def put_nowait(self, event: RunEvent) -> None:
        if event.kind == TOKEN_EVENT:
            source = (event.key, event.step, event.item, event.iteration, event.attempt)
            newest = self._newest.get(source)
            if newest is not None and len(self._events) > self.limit:
                newest[1].append(event.message or "")
                return
            self._newest[source] = (event, [event.message or ""])
        self._events.append(event)
        self._ready.set()

    def qsize(self) -> int:
        return len(self._events)

    def empty(self) -> bool:
        return not self._events

    def get_nowait(self) -> RunEvent:
        """The oldest event, with any text merged into it; raises asyncio.QueueEmpty."""
        if not self._events:
            raise asyncio.QueueEmpty
        event = self._events.popleft()
        if event.kind == TOKEN_EVENT:
            source = (event.key, event.step, event.item, event.iteration, event.attempt)
            newest = self._newest.get(source)
            if newest is not None and newest[0] is event:
                del self._newest[source]
                if len(newest[1]) > 1:
                    event.message = "".join(newest[1])
        return event

    async def get(self) -> RunEvent:
        while not self._events:
            self._ready.clear()
            await self._ready.wait()
        return self.get_nowait()
