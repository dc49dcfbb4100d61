"""The simulator's rerank routes (filled in by issue 17's work)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelyard.sim.asgi import Receive, Scope, Send

if TYPE_CHECKING:
    from modelyard.sim.app import SimApp


def claims(method: str, path: str) -> bool:
    """Whether this module serves the request."""
    return False


async def handle(app: SimApp, scope: Scope, receive: Receive, send: Send) -> None:
    raise NotImplementedError
