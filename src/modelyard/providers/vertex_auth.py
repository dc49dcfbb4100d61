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

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from modelyard.providers.bearer_token import REFRESH_MARGIN_S, BearerToken
from modelyard.schema.errors import ModelyardError

#: The OAuth scope Vertex AI accepts.
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


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


class TokenSource(BearerToken):
    """One google-auth credentials source's access token (providers/bearer_token.py refreshes it).

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
        super().__init__(self._refresh, clock=clock, margin_s=margin_s)
        self._load = load
        self._request_factory = request_factory
        self._credentials: GoogleCredentials | None = None
        self._request: Any = None

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
