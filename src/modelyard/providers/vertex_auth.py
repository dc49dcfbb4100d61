"""OAuth2 access tokens for Vertex AI, by google-auth: a service-account file or Application Default Credentials.

google-auth does the token flow (the signed JWT assertion, the token endpoint, ADC's search order, the
metadata server); this module only decides *when* to refresh and keeps that off the event loop. A token is
refreshed before it expires (when less than `REFRESH_MARGIN_S`, or half its lifetime for short-lived test
tokens, remains), on a worker thread, and one refresh at a time per credentials source: requests that
arrive during a refresh wait for it and share its token. A token the provider refused (401/403) is dropped,
so the next attempt refreshes.

`google-auth` is the `gcp` extra: it is imported on the first refresh, so a config that names no Vertex
deployment never needs it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from modelyard.schema.errors import ModelyardError

#: The OAuth scope Vertex AI accepts.
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
#: Refresh when less than this many seconds of a token's life remain (Google's tokens live an hour).
REFRESH_MARGIN_S = 300.0


class GoogleCredentials(Protocol):
    """What this module uses of a `google.auth.credentials.Credentials` (also what tests fake)."""

    token: str | None
    #: Naive UTC, as google-auth keeps it; None: the token does not expire.
    expiry: datetime | None

    def refresh(self, request: Any) -> None: ...


class CredentialsUnavailable(ModelyardError, RuntimeError):
    """google-auth is missing, or the refresh produced no token (the attempt fails as an AUTH error)."""


def load_service_account(path: str) -> GoogleCredentials:
    """A service-account key file's credentials, scoped for Vertex AI (reads the file: call off the loop)."""
    service_account = _google("google.oauth2.service_account")
    credentials: GoogleCredentials = service_account.Credentials.from_service_account_file(
        path, scopes=[CLOUD_PLATFORM_SCOPE]
    )
    return credentials


def load_default() -> GoogleCredentials:
    """Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud's file, the metadata server)."""
    auth = _google("google.auth")
    credentials, _project = auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
    found: GoogleCredentials = credentials
    return found


def _google(module: str) -> Any:
    from importlib import import_module

    try:
        return import_module(module)
    except ImportError:
        raise CredentialsUnavailable("Vertex AI deployments need google-auth: pip install 'modelyard[gcp]'") from None


#: The longest one call to the token endpoint may take (google-auth's own default is 120 s); the executor bounds
#: the attempt that waits for it by the deployment's `timeouts.total` as well.
TOKEN_TIMEOUT_S = 30.0


class _BoundedRequest:
    """google-auth's transport with every call's timeout capped, so a hung token endpoint frees its worker
    thread (and the source's one refresh at a time) within `TOKEN_TIMEOUT_S`."""

    def __init__(self, inner: Any, timeout_s: float) -> None:
        self._inner = inner
        self._timeout_s = timeout_s

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        asked = kwargs.get("timeout")
        kwargs["timeout"] = self._timeout_s if not isinstance(asked, int | float) else min(asked, self._timeout_s)
        return self._inner(*args, **kwargs)


def _transport_request() -> Any:
    """google-auth's HTTP transport for the token endpoint (one per source, reused between refreshes)."""
    return _BoundedRequest(_google("google.auth.transport.requests").Request(), TOKEN_TIMEOUT_S)


def _wall_clock() -> float:
    return time.time()


class TokenSource:
    """One credentials source's current access token, refreshed before it expires.

    `load` builds the google-auth credentials (on the worker thread, at the first refresh: it may read files
    or probe the metadata server); `clock` is wall-clock seconds (google-auth's expiry is a UTC datetime).
    """

    def __init__(
        self,
        load: Callable[[], GoogleCredentials],
        *,
        clock: Callable[[], float] = _wall_clock,
        margin_s: float = REFRESH_MARGIN_S,
        request_factory: Callable[[], Any] = _transport_request,
    ) -> None:
        self._load = load
        self._clock = clock
        self._margin_s = margin_s
        self._request_factory = request_factory
        self._credentials: GoogleCredentials | None = None
        self._request: Any = None
        self._token: str | None = None
        #: When to refresh (wall-clock seconds); None: never by time.
        self._refresh_at: float | None = None
        self._lock = asyncio.Lock()
        #: How many refreshes succeeded (for tests and logs).
        self.refreshes = 0

    def _fresh(self) -> str | None:
        token = self._token
        if token is None:
            return None
        if self._refresh_at is not None and self._clock() >= self._refresh_at:
            return None
        return token

    async def token(self) -> str:
        """A token with time left: the cached one, or a fresh one (concurrent callers share one refresh)."""
        token = self._fresh()
        if token is not None:
            return token
        async with self._lock:
            token = self._fresh()  # a refresh that finished while this caller waited
            if token is not None:
                return token
            fresh, expiry = await asyncio.to_thread(self._refresh)
            now = self._clock()
            self._token = fresh
            self._refresh_at = None if expiry is None else now + _refresh_delay(expiry - now, self._margin_s)
            self.refreshes += 1
            return fresh

    def reject(self) -> None:
        """The provider refused the current token: the next caller refreshes."""
        self._token = None
        self._refresh_at = None

    def _refresh(self) -> tuple[str, float | None]:
        """On a worker thread: load the credentials once, then ask google-auth for a new token."""
        if self._credentials is None:
            self._credentials = self._load()
        if self._request is None:
            self._request = self._request_factory()
        credentials = self._credentials
        credentials.refresh(self._request)
        token = credentials.token
        if not token:
            raise CredentialsUnavailable("the credentials refreshed without an access token")
        expiry = credentials.expiry
        return token, None if expiry is None else _timestamp(expiry)


def _refresh_delay(lifetime_s: float, margin_s: float) -> float:
    """Seconds from now to refresh: `margin_s` before expiry, or at half-life when the token is short-lived."""
    return max(0.0, lifetime_s - min(margin_s, lifetime_s / 2.0))


def _timestamp(expiry: datetime) -> float:
    """google-auth's naive-UTC expiry as epoch seconds."""
    if expiry.tzinfo is None:
        expiry = expiry.replace(tzinfo=UTC)
    return expiry.timestamp()


__all__ = [
    "CLOUD_PLATFORM_SCOPE",
    "REFRESH_MARGIN_S",
    "CredentialsUnavailable",
    "GoogleCredentials",
    "TokenSource",
    "load_default",
    "load_service_account",
]
