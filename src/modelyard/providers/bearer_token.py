"""A short-lived bearer token, refreshed before it expires: what Vertex AI (google-auth) and Azure's Entra ID
(azure-identity) deployments share.

The fetch blocks (credential chains read files, call token endpoints, probe metadata servers), so it runs on
a worker thread; concurrent callers share one fetch; a token is refreshed `margin_s` before it expires, or at
half its life when it lives shorter than twice that; the provider refusing it drops it for the next caller.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

#: Refresh when less than this many seconds of a token's life remain (Google's and Entra's tokens live ~1 hour).
REFRESH_MARGIN_S = 300.0
#: A token this close to its expiry is not reused after a failed refresh.
_EXPIRY_SLACK_S = 5.0

#: A fetch: a fresh token and its expiry in wall-clock seconds (None: no expiry given).
Fetch = Callable[[], tuple[str, float | None]]


def refresh_delay(lifetime_s: float, margin_s: float) -> float:
    """Seconds from now to refresh: `margin_s` before expiry, or at half-life when the token is short-lived."""
    return max(0.0, lifetime_s - min(margin_s, lifetime_s / 2.0))


class BearerToken:
    """One credentials source's current token.

    `keep_on_failure`: a refresh that fails while the current token has not expired yet hands out that token
    (a token endpoint's hiccup does not fail requests early) and tries again on the next call.
    """

    def __init__(
        self,
        fetch: Fetch,
        *,
        clock: Callable[[], float] = time.time,
        margin_s: float = REFRESH_MARGIN_S,
        keep_on_failure: bool = False,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._margin_s = margin_s
        self._keep_on_failure = keep_on_failure
        self._token: str | None = None
        #: When to refresh and when it expires (wall-clock seconds); None: never by time.
        self._refresh_at: float | None = None
        self._expires_at: float | None = None
        self._lock = asyncio.Lock()
        #: How many fetches succeeded (for tests and logs).
        self.refreshes = 0

    def _fresh(self) -> str | None:
        token = self._token
        if token is None:
            return None
        if self._refresh_at is not None and self._clock() >= self._refresh_at:
            return None
        return token

    async def token(self) -> str:
        """A token with time left: the cached one, or a fresh one (concurrent callers share one fetch)."""
        token = self._fresh()
        if token is not None:
            return token
        async with self._lock:
            token = self._fresh()  # a fetch that finished while this caller waited
            if token is not None:
                return token
            try:
                fresh, expires_at = await asyncio.to_thread(self._fetch)
            except Exception:
                stale = self._token
                expires = self._expires_at
                if (
                    self._keep_on_failure
                    and stale is not None
                    and (expires is None or self._clock() < expires - _EXPIRY_SLACK_S)
                ):
                    return stale
                raise
            now = self._clock()
            self._token, self._expires_at = fresh, expires_at
            self._refresh_at = None if expires_at is None else now + refresh_delay(expires_at - now, self._margin_s)
            self.refreshes += 1
            return fresh

    def reject(self) -> None:
        """The provider refused the current token: the next caller fetches a new one."""
        self._token = None
        self._refresh_at = None
        self._expires_at = None
