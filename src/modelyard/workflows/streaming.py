"""Streamed step output: a model step's text as it arrives, as `step_token` events beside the step events.

A backend that can stream implements `StreamingBackend.call_streaming`: the same call and the same
`ModelAnswer` as `call` (text, usage, price, deployment), with every text delta handed to `on_text` on the
way. The engine wraps its backend in a `TokenTap` per leaf when the run asks for tokens
(`EngineOptions.stream`); retries and the schema repair go through the tap too, each attempt numbered, so
a consumer can drop what a failed attempt streamed. Tokens are events only: the checkpoint and the report
are built from the answers exactly as without streaming.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, Protocol, runtime_checkable

from modelyard.workflows.backend import ModelAnswer, ModelBackend, ModelCall, ModelEstimate
from modelyard.workflows.records import RunEvent

TextSink = Callable[[str], None]
TOKEN_EVENT = "step_token"


@runtime_checkable
class StreamingBackend(Protocol):
    async def call_streaming(self, call: ModelCall, on_text: TextSink) -> ModelAnswer:
        """`call`'s answer, with each text delta passed to `on_text` as it arrives."""
        ...


@dataclass(frozen=True)
class TokenSource:
    """Where a leaf's tokens come from: its record key, step name, fan-out item and loop round."""

    key: str
    step: str
    item: int | None = None
    iteration: int | None = None

    @classmethod
    def of(cls, key: str, step: str, context: dict[str, Any]) -> TokenSource:
        """The source of the leaf at `key`, its item and round read from the context the step sees."""
        item = context.get("item_index")
        iteration = context.get("iteration")
        round_no = iteration.get("index") if isinstance(iteration, dict) else None
        return cls(key, step, item if isinstance(item, int) else None, round_no)

    @property
    def label(self) -> str:
        """`search#2` for item 2 of `search`; `build.code@2` for round 2 of the loop step `build.code`."""
        text = self.step if self.item is None else f"{self.step}#{self.item}"
        return text if self.iteration is None else f"{text}@{self.iteration}"


class TokenTap:
    """One leaf's backend while tokens are wanted: every call streamed, each delta emitted as an event.

    A backend that cannot stream still answers: its whole text is emitted as one token, so a consumer
    sees every step's output the same way.
    """

    def __init__(self, inner: ModelBackend, source: TokenSource, emit: Callable[[RunEvent], None]) -> None:
        self.inner = inner
        self.source = source
        self.emit = emit
        self.attempts = 0

    async def call(self, call: ModelCall) -> ModelAnswer:
        self.attempts += 1
        attempt = self.attempts

        def on_text(text: str) -> None:
            if text:
                self.emit(self.event(text, attempt))

        if isinstance(self.inner, StreamingBackend):
            return await self.inner.call_streaming(call, on_text)
        answer = await self.inner.call(call)
        on_text(answer.text)
        return answer

    def estimate(self, call: ModelCall) -> ModelEstimate:
        return self.inner.estimate(call)

    def event(self, text: str, attempt: int) -> RunEvent:
        source = self.source
        return RunEvent(
            TOKEN_EVENT,
            time.time(),
            source.key,
            message=text,
            step=source.step,
            item=source.item,
            iteration=source.iteration,
            attempt=attempt,
        )


class TokenPrinter:
    """`run --stream`'s listener: tokens as they come, a `[search#2] ` prefix at each change of source.

    Parallel items interleave line by line: a line holds one source's text; when another source speaks (or
    the text has a newline) a new prefixed line starts. Step events get a line of their own.
    """

    def __init__(self, out: IO[str], also: Callable[[RunEvent], None] | None = None) -> None:
        self.out = out
        self.also = also
        self._current: tuple[str, int] | None = None
        self._midline = False

    def on_event(self, event: RunEvent) -> None:
        if event.kind == TOKEN_EVENT:
            self.token(event)
        elif event.kind.startswith("step_") and event.record is not None and event.record.is_leaf:
            self.line(f"-- {event.record.key} {event.kind.removeprefix('step_')}")
        if self.also is not None:
            self.also(event)

    def token(self, event: RunEvent) -> None:
        source = (event.key or "", event.attempt)
        label = _label(event)
        if source != self._current:
            self._break()
            self._current = source
            retry = f" (attempt {event.attempt})" if event.attempt > 1 else ""
            self.out.write(f"[{label}]{retry} ")
        pieces = (event.message or "").split("\n")
        self.out.write(pieces[0] if self._midline else pieces[0].lstrip(" "))
        for piece in pieces[1:]:
            self.out.write(f"\n[{label}] {piece}")
        self._midline = True
        self.out.flush()

    def line(self, text: str) -> None:
        self._break()
        self._current = None
        self.out.write(text + "\n")
        self.out.flush()

    def close(self) -> None:
        self._break()
        self.out.flush()

    def _break(self) -> None:
        if self._midline:
            self.out.write("\n")
            self._midline = False


def _label(event: RunEvent) -> str:
    return TokenSource(event.key or "", event.step or "", event.item, event.iteration).label
