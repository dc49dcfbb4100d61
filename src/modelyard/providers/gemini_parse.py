"""Gemini egress, the answer side: generateContent responses, usage, finish reasons and errors → canonical.

Also the thought-signature codec: Gemini 3 rejects a replayed `functionCall` that lacks the signature it was
issued with, and OpenAI clients only echo a tool call's id, so the signature travels inside it
(`call_<24 hex>_ts_<url-safe base64>`). Finish reasons the model uses for unusable output become a
retryable ProviderError(server) when no candidate produced anything (see providers/gemini.py).
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from modelyard.providers.base import (
    Completion,
    decode_object,
    kind_from_status,
    mentions_context_length,
    new_id,
    parse_retry_after,
    upstream_error,
)
from modelyard.schema.chat import Usage, token_count
from modelyard.schema.errors import ErrorKind, ProviderError

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode

_CALL_PREFIX = "call_"
_SIGNATURE_MARK = "_ts_"
_HEX = frozenset("0123456789abcdef")

_FILTERED = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
        "MODEL_ARMOR",
        "ESCALATION",
        "PUP_LIMITED_DISABLED",
    }
)
_LENGTH = frozenset({"MAX_TOKENS", "CONTINUATION"})
#: The model produced something that cannot be handed to a client: retry rather than answer empty.
UNUSABLE = frozenset({"MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "MALFORMED_RESPONSE"})

_KIND_BY_GRPC = {
    "UNAVAILABLE": ErrorKind.OVERLOADED,
    "DEADLINE_EXCEEDED": ErrorKind.TIMEOUT,
    "INTERNAL": ErrorKind.SERVER,
    "UNKNOWN": ErrorKind.SERVER,
    "CANCELLED": ErrorKind.CONNECTION,
    "INVALID_ARGUMENT": ErrorKind.BAD_REQUEST,
    "NOT_FOUND": ErrorKind.BAD_REQUEST,
}


# ============================================================================ answers


def parse_response(body: bytes, default_model: str, signatures: bool, single_call: bool) -> Completion:
    """A generateContent answer → canonical chat.completion. `single_call`: the client turned parallel tool
    calls off, so each candidate keeps its first function call only."""
    data = decode_object(body)
    if isinstance(data.get("error"), dict):
        raise error_from_object(data["error"], 0)
    candidates = data.get("candidates") or []
    if not candidates:
        raise no_candidates(data)
    choices = [_choice(cand, signatures, single_call) for cand in candidates]
    if all(choice is None for choice in choices):
        raise unusable_output(candidates[0])
    model = str(data.get("modelVersion") or default_model)
    usage = usage_from(data.get("usageMetadata"))
    out = {
        "id": str(data.get("responseId") or new_id("chatcmpl-")),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": sorted((c for c in choices if c is not None), key=lambda c: c["index"]),
        "usage": usage.to_openai(),
    }
    return Completion(out, usage, model)


def _choice(cand: dict[str, Any], signatures: bool, single_call: bool = False) -> dict[str, Any] | None:
    """One candidate as an OpenAI choice; None when the model's output for it is unusable. `single_call`:
    only its first function call (the client turned parallel tool calls off)."""
    text, thoughts, calls = split_parts((cand.get("content") or {}).get("parts"), signatures)
    if single_call:
        calls = calls[:1]
    reason = cand.get("finishReason")
    if reason in UNUSABLE and not text and not calls:
        return None
    message: dict[str, Any] = {"role": "assistant", "content": text if (text or not calls) else None}
    if calls:
        message["tool_calls"] = calls
    if thoughts:
        message["reasoning_content"] = thoughts
    return {
        "index": candidate_index(cand),
        "message": message,
        "finish_reason": finish_reason(reason, bool(calls)),
        "logprobs": _logprobs(cand.get("logprobsResult")),
    }


def candidate_index(cand: dict[str, Any]) -> int:
    return int(cand.get("index") or 0)  # proto3 JSON leaves out the default: no index means 0


def split_parts(parts: Any, signatures: bool) -> tuple[str, str, list[dict[str, Any]]]:
    """(answer text, thought text, tool calls) of a candidate's parts."""
    text: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in parts or ():
        if not isinstance(part, dict):
            continue
        call = part.get("functionCall")
        if isinstance(call, dict):
            signature = part.get("thoughtSignature") if signatures else None
            calls.append(
                {
                    "id": tool_call_id(signature if isinstance(signature, str) else None),
                    "type": "function",
                    "function": {
                        "name": str(call.get("name") or ""),
                        "arguments": _encode(call.get("args") or {}).decode(),
                    },
                }
            )
        elif isinstance(part.get("text"), str):
            (thoughts if part.get("thought") else text).append(part["text"])
    return "".join(text), "".join(thoughts), calls


def finish_reason(reason: Any, has_calls: bool) -> str | None:
    """Gemini `finishReason` → OpenAI `finish_reason` (None while a stream is still going)."""
    if not reason:
        return None
    if reason in _FILTERED:
        return "content_filter"
    if reason in _LENGTH:
        return "length"
    return "tool_calls" if has_calls else "stop"


def usage_from(meta: Any) -> Usage:
    """usageMetadata in OpenAI's sense: prompt includes cached (and tool-use prompt) tokens, completion
    includes thoughts, which OpenAI counts as reasoning tokens inside completion tokens."""
    if not isinstance(meta, dict):
        return Usage()
    thoughts = token_count(meta.get("thoughtsTokenCount"))
    return Usage(
        prompt=token_count(meta.get("promptTokenCount")) + token_count(meta.get("toolUsePromptTokenCount")),
        completion=token_count(meta.get("candidatesTokenCount")) + thoughts,
        cached=token_count(meta.get("cachedContentTokenCount")),
        reasoning=thoughts,
    )


def _logprobs(result: Any) -> dict[str, Any] | None:
    if not isinstance(result, dict) or not result.get("chosenCandidates"):
        return None
    tops = result.get("topCandidates") or []
    content = []
    for i, chosen in enumerate(result["chosenCandidates"]):
        top = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        alternatives = top.get("candidates") or []
        content.append(
            {
                "token": chosen.get("token", ""),
                "logprob": float(chosen.get("logProbability", 0.0)),
                "bytes": None,
                "top_logprobs": [
                    {"token": alt.get("token", ""), "logprob": float(alt.get("logProbability", 0.0)), "bytes": None}
                    for alt in alternatives
                ],
            }
        )
    return {"content": content, "refusal": None}


def no_candidates(data: dict[str, Any]) -> ProviderError:
    feedback = data.get("promptFeedback") or {}
    reason = feedback.get("blockReason")
    if reason:
        detail = feedback.get("blockReasonMessage")
        suffix = f": {detail}" if detail else ""
        return ProviderError(ErrorKind.CONTENT_FILTER, f"Gemini blocked the prompt ({reason}){suffix}")
    return ProviderError(ErrorKind.SERVER, "malformed response: no candidates")


def unusable_output(cand: dict[str, Any], *, after_first_byte: bool = False) -> ProviderError:
    reason = cand.get("finishReason")
    detail = cand.get("finishMessage")
    suffix = f": {detail}" if detail else ""
    return ProviderError(
        ErrorKind.SERVER, f"Gemini produced no usable output ({reason}){suffix}", after_first_byte=after_first_byte
    )


# ============================================================================ thought signatures in ids


def tool_call_id(signature: str | None = None) -> str:
    """A fresh `call_...` id, carrying the thought signature (url-safe, unpadded) when there is one."""
    base = new_id(_CALL_PREFIX)
    if not signature:
        return base
    standard = signature.replace("-", "+").replace("_", "/").rstrip("=")
    try:
        raw = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except (binascii.Error, ValueError):
        return base
    return base + _SIGNATURE_MARK + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def signature_from_id(call_id: str) -> str | None:
    """The thought signature a `tool_call_id` carries (standard base64), or None."""
    head = len(_CALL_PREFIX) + 24
    tail = head + len(_SIGNATURE_MARK)
    if not (call_id.startswith(_CALL_PREFIX) and call_id[head:tail] == _SIGNATURE_MARK):
        return None
    if not set(call_id[len(_CALL_PREFIX) : head]) <= _HEX:
        return None
    encoded = call_id[tail:]
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError):
        return None
    return base64.b64encode(raw).decode() if raw else None


# ============================================================================ errors


def classify(status: int, grpc_status: str, message: str, details: Any = None) -> ErrorKind:
    """A Gemini error (HTTP status, google.rpc status name, message) → kind."""
    grpc = grpc_status.upper()
    lowered = message.lower()
    if grpc == "RESOURCE_EXHAUSTED" or status == 429:
        return ErrorKind.RATE_LIMITED
    if grpc in ("UNAUTHENTICATED", "PERMISSION_DENIED") or status in (401, 403):
        return ErrorKind.AUTH
    if "api key" in lowered and ("not valid" in lowered or "expired" in lowered or "invalid" in lowered):
        return ErrorKind.AUTH
    if _error_reason(details) in ("API_KEY_INVALID", "API_KEY_EXPIRED"):
        return ErrorKind.AUTH
    if grpc == "FAILED_PRECONDITION":  # e.g. "User location is not supported", billing not enabled
        return ErrorKind.AUTH
    if status in (0, 200, 400, 413) and grpc in ("", "INVALID_ARGUMENT") and mentions_context_length(message):
        return ErrorKind.CONTEXT_LENGTH
    if grpc in _KIND_BY_GRPC:
        return _KIND_BY_GRPC[grpc]
    if status in (0, 200):  # an error object inside a 200 stream with no usable status
        return ErrorKind.SERVER
    return kind_from_status(status)


def _error_reason(details: Any) -> str:
    for detail in details if isinstance(details, list) else ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.ErrorInfo"):
            return str(detail.get("reason") or "")
    return ""


def retry_delay(details: Any) -> float | None:
    """Seconds from a `google.rpc.RetryInfo` detail (`"retryDelay": "7s"`, `"0.5s"`), or None."""
    for detail in details if isinstance(details, list) else ():
        if not (isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo")):
            continue
        delay = detail.get("retryDelay")
        if isinstance(delay, dict):  # a Duration written as an object
            return max(0.0, float(delay.get("seconds") or 0) + float(delay.get("nanos") or 0) / 1e9)
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return max(0.0, float(delay[:-1]))
            except ValueError:
                return None
    return None


def _error_object(body: bytes) -> dict[str, Any]:
    try:
        data = _decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return {"message": body[:200].decode("utf-8", "replace").strip()}
    if isinstance(data, list) and data:  # the non-SSE stream endpoint answers with a JSON array
        data = data[0]
    err = data.get("error") if isinstance(data, dict) else None
    return err if isinstance(err, dict) else {}


def error_from_object(err: dict[str, Any], status: int, *, after_first_byte: bool = False) -> ProviderError:
    code = err.get("code")
    http = int(code) if isinstance(code, int) else status
    message = str(err.get("message") or "error object from Gemini")
    kind = classify(http, str(err.get("status") or ""), message, err.get("details"))
    return upstream_error(
        kind,
        "provider error",
        message,
        status=http or None,
        retry_after=retry_delay(err.get("details")),
        after_first_byte=after_first_byte,
    )


def error_from_response(status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
    """A non-2xx HTTP answer → ProviderError (the adapter's `error`); RetryInfo wins over Retry-After."""
    err = _error_object(body)
    kind = classify(status, str(err.get("status") or ""), str(err.get("message") or ""), err.get("details"))
    text = str(err.get("message") or "").strip() or f"HTTP {status}"
    retry_after = retry_delay(err.get("details"))
    if retry_after is None:
        retry_after = parse_retry_after(headers)
    return upstream_error(kind, f"provider answered {status}", text, status=status, retry_after=retry_after)


__all__ = [
    "UNUSABLE",
    "candidate_index",
    "classify",
    "decode_object",
    "error_from_object",
    "error_from_response",
    "finish_reason",
    "no_candidates",
    "parse_response",
    "retry_delay",
    "signature_from_id",
    "split_parts",
    "tool_call_id",
    "unusable_output",
    "usage_from",
]
