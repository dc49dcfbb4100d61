"""Typed errors: what a provider did wrong (ProviderError) and what the client did wrong (GatewayError).

The executor decides retries and failover from `ProviderError.kind` alone, so every adapter maps its
provider's statuses, error bodies, SSE error events, broken streams and timeouts onto these kinds.
Messages are built by the adapters from the provider's own text and never carry credentials.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

__all__ = [
    "CLIENT_ACTIONABLE",
    "GENERIC_MESSAGES",
    "GUARDRAIL_KINDS",
    "RETRYABLE_KINDS",
    "ErrorKind",
    "GatewayError",
    "ModelyardError",
    "ProviderError",
    "bad_request",
    "mask_secrets",
]


class ModelyardError(Exception):
    """The root of every exception modelyard raises on purpose, so an embedder can catch ours in one clause
    (the package's own subclasses keep their stdlib bases, e.g. `ConfigError` is also a `ValueError`)."""


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
    #: An answer failed an output guardrail whose action is `retry`: ask the next candidate (never the same
    #: deployment again: it would likely fail the same way). The attempt's cost still counts.
    GUARDRAIL = "guardrail"
    #: A guardrail blocked the answer (or the check itself failed, fail-closed): stop, name the check.
    GUARDRAIL_BLOCKED = "guardrail_blocked"


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
    ErrorKind.GUARDRAIL: 422,
    ErrorKind.GUARDRAIL_BLOCKED: 422,
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
    ErrorKind.GUARDRAIL: "guardrail_error",
    ErrorKind.GUARDRAIL_BLOCKED: "guardrail_error",
}

_OPENAI_CODE: dict[ErrorKind, str] = {
    ErrorKind.CONTEXT_LENGTH: "context_length_exceeded",
    ErrorKind.CONTENT_FILTER: "content_filter",
    ErrorKind.RATE_LIMITED: "rate_limit_exceeded",
}


#: Kinds whose provider text helps a client fix its request: passed on (masked). Any other kind of provider
#: text (our provider key refused, the provider's 5xx, overload, its rate limits on our account) is about
#: the gateway's account, not the caller's request, and is replaced by `GENERIC_MESSAGES`.
CLIENT_ACTIONABLE: frozenset[ErrorKind] = frozenset(
    {ErrorKind.BAD_REQUEST, ErrorKind.CONTEXT_LENGTH, ErrorKind.CONTENT_FILTER}
)

#: Kinds the gateway's own guardrails raise (never a provider's verdict on its health).
GUARDRAIL_KINDS: frozenset[ErrorKind] = frozenset({ErrorKind.GUARDRAIL, ErrorKind.GUARDRAIL_BLOCKED})

GENERIC_MESSAGES: dict[ErrorKind, str] = {
    ErrorKind.AUTH: "the provider refused the gateway's credentials for this deployment",
    ErrorKind.SERVER: "the provider failed with an internal error",
    ErrorKind.OVERLOADED: "the provider is overloaded",
    ErrorKind.RATE_LIMITED: "the provider is rate limiting this deployment",
    ErrorKind.TIMEOUT: "the provider timed out",
    ErrorKind.CONNECTION: "the connection to the provider failed",
}

#: Key-like strings: API keys (OpenAI `sk-…`, masked `sk-proj-****abcd` included; Anthropic `sk-ant-…`;
#: Google `AIza…`), bearer tokens, `key=`/`token=` parameters, organisation ids, and long hex or base64 runs.
_SECRET = re.compile(
    r"\bsk-[A-Za-z0-9_*\-]{6,}+"
    r"|\bAIza[0-9A-Za-z_\-]{10,}+"
    r"|\b(?:Bearer|Basic)\s+[A-Za-z0-9._~+/=*\-]{4,}+"
    r"|(?P<param>(?i:\b(?:api[_-]?key|key|token|access_token|secret|password|signature|sig)=))[^&\s\"',;]++"
    r"|\borg-[A-Za-z0-9]{8,}+"
    r"|\b[0-9a-fA-F]{32,}+\b"
    r"|(?P<run>[A-Za-z0-9+/_\-]{40,}+={0,2})"
)
#: Provider text is masked up to this many characters and cut there: masking is linear (possessive runs, no
#: look-aheads), but an error text has no business being longer, and it reaches logs and the spend log.
MAX_ERROR_TEXT = 4096
_HAS_DIGIT = re.compile(r"\d")
_HAS_LETTER = re.compile(r"[A-Za-z]")


def mask_secrets(text: str) -> str:
    """`text` with every key-like string replaced by `[redacted]` (provider text may quote our key); cut to
    MAX_ERROR_TEXT characters first. Linear in the text's length: a provider quoting a long input back in its
    error once cost seconds of the event loop (look-aheads at every position of a long run)."""
    if not text:
        return text
    if len(text) > MAX_ERROR_TEXT:
        text = text[:MAX_ERROR_TEXT] + "…(cut)"
    return _SECRET.sub(_redacted, text)


def _redacted(match: re.Match[str]) -> str:
    run = match.group("run")
    if run is not None and not (_HAS_DIGIT.search(run) and _HAS_LETTER.search(run)):
        return run  # a long run of only letters (or only digits) is a word or a number, not a key
    return f"{match.group('param') or ''}[redacted]"


class ProviderError(ModelyardError):
    """One failed attempt at one deployment, classified.

    `message` may reach a client: it is masked here whoever built it. `detail` is the provider's own
    (masked) text, for logs, where `message` had to be generic (see `providers.base.upstream_error`).
    """

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
        detail: str | None = None,
    ) -> None:
        message = mask_secrets(message)
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.detail = message if detail is None else mask_secrets(detail)
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


class GatewayError(ModelyardError):
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


def bad_request(message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)
