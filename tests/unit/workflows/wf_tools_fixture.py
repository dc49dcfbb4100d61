"""Tool functions for the tool-step tests (imported by `call:` in inline workflows)."""

from __future__ import annotations

import asyncio
from typing import Any


def shout(text: str, times: int = 1) -> str:
    return (text.upper() + "!") * times


async def slow_double(value: int) -> int:
    await asyncio.sleep(0.01)
    return value * 2


def explode(reason: str) -> Any:
    raise RuntimeError(reason)


class Flaky:
    """Fails `failures` times, then answers; the count lives on the instance a test creates."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError(f"flaky call {self.calls}")
        return "steady"


FLAKY = Flaky(0)


def flaky() -> str:
    return FLAKY()
