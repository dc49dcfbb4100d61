"""Typed errors: what a provider did wrong (ProviderError) and what the client did wrong (GatewayError).

The executor decides retries and failover from `ProviderError.kind` alone, so every adapter maps its
provider's statuses, error bodies, SSE error events, broken streams and timeouts onto these kinds.
Messages are built by the adapters from the provider's own text and never carry credentials.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import msgspec


class ErrorKind(StrEnum):
    """Why a provider attempt failed; the executor's only input for retry decisions."""

    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    SERVER = "server"
    CONTEXT_LENGTH = "context_length"
    CONTENT_FILTER = "content_filter"
    AUTH = "auth"
    BAD_REQUEST = "bad_request"


#: Kinds worth trying again on the same deployment (after a backoff).
RETRYABLE_KINDS: frozenset[ErrorKind] = frozenset(
    {ErrorKind.RATE_LIMITED, ErrorKind.OVERLOADED, ErrorKind.SERVER, ErrorKind.CONNECTION, ErrorKind.TIMEOUT}
)

#: HTTP status the gateway answers with when a provider error reaches the client.
_CLIENT_STATUS: dict[ErrorKind, int] = {
    ErrorKind.RATE_LIMITED: 429,
    ErrorKind.OVERLOADED: 503,
    ErrorKind.TIMEOUT: 504,
    ErrorKind.CONNECTION: 502,
    ErrorKind.SERVER: 502,
    ErrorKind.CONTEXT_LENGTH: 400,
    ErrorKind.CONTENT_FILTER: 400,
    ErrorKind.AUTH: 502,  # the gateway's provider credentials are wrong; not the caller's fault
    ErrorKind.BAD_REQUEST: 400,
}

_OPENAI_TYPE: dict[ErrorKind, str] = {
    ErrorKind.RATE_LIMITED: "rate_limit_error",
    ErrorKind.OVERLOADED: "server_error",
    ErrorKind.TIMEOUT: "timeout_error",
    ErrorKind.CONNECTION: "api_connection_error",
    ErrorKind.SERVER: "server_error",
    ErrorKind.CONTEXT_LENGTH: "invalid_request_error",
    ErrorKind.CONTENT_FILTER: "invalid_request_error",
    ErrorKind.AUTH: "upstream_auth_error",
    ErrorKind.BAD_REQUEST: "invalid_request_error",
}

_OPENAI_CODE: dict[ErrorKind, str] = {
    ErrorKind.CONTEXT_LENGTH: "context_length_exceeded",
    ErrorKind.CONTENT_FILTER: "content_filter",
    ErrorKind.RATE_LIMITED: "rate_limit_exceeded",
}


class ProviderError(Exception):
    """One failed attempt at one deployment, classified."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        deployment: str | None = None,
        provider: str | None = None,
        after_first_byte: bool = False,
        untranslatable: bool = False,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.deployment = deployment
        self.provider = provider
        self.after_first_byte = after_first_byte
        #: The request could not be expressed in this provider's format (nothing was sent): fail over.
        self.untranslatable = untranslatable
        #: The attempt history of the request this error ends (set by the executor).
        self.records: list[Any] = []

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE_KINDS

    @property
    def client_status(self) -> int:
        return _CLIENT_STATUS[self.kind]

    def to_body(self) -> dict[str, Any]:
        """OpenAI-shaped error body for the client."""
        where = f" (deployment {self.deployment})" if self.deployment else ""
        return {
            "error": {
                "message": f"{self.message}{where}",
                "type": _OPENAI_TYPE[self.kind],
                "param": None,
                "code": _OPENAI_CODE.get(self.kind, self.kind.value),
            }
        }

    def __repr__(self) -> str:
        return f"ProviderError({self.kind.value!r}, {self.message!r}, status={self.status})"


class GatewayError(Exception):
    """An error the gateway itself answers with (bad input, auth, limits): status + OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def to_body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def error_body_bytes(body: dict[str, Any]) -> bytes:
    return msgspec.json.encode(body)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)
