"""The exact-match response cache (docs/caching.md): contract only, filled in by the #15 cache work."""

from __future__ import annotations

from modelyard.config.model import Config


class ResponseCache:
    """Answers reused for the same request from the same key; one per process, kept across reloads."""

    async def start(self) -> None:
        """Connect the backend (Redis) when it has one."""

    async def close(self) -> None:
        """Release the backend."""


def build_response_cache(config: Config) -> ResponseCache | None:
    """The cache the config asks for, or None when no model enables it."""
    return None
