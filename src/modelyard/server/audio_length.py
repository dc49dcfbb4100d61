"""An upload's audio duration, read from its own headers with mutagen: what a transcription is billed by.

Measured at the edge before any call, so the budget reserves it and a provider that reports no usage is
charged it. A file mutagen cannot read as audio is refused (a 400 naming `file`) rather than sent upstream to
be billed at a guess.
"""

from __future__ import annotations

import asyncio
import io
import math

import mutagen

from modelyard.schema.errors import GatewayError


def _seconds(data: bytes, filename: str) -> float | None:
    try:
        audio = mutagen.File(io.BytesIO(data), filename=filename or None)
    except Exception:  # mutagen's parsers raise their own errors (and plain ones on hostile input)
        return None
    info = getattr(audio, "info", None) if audio is not None else None
    length = getattr(info, "length", None)
    if not isinstance(length, int | float) or not math.isfinite(length) or length <= 0:
        return None
    return float(length)


async def audio_seconds(data: bytes, filename: str, param: str = "file") -> float:
    """The upload's duration in seconds; 400 `param` when it is not audio mutagen can read. The header walk
    runs on a worker thread (an upload is up to 25 MB: the event loop never waits on it)."""
    seconds = await asyncio.to_thread(_seconds, data, filename)
    if seconds is None:
        raise GatewayError(
            400, f"`{param}` is not an audio file the gateway can measure", param=param, code="invalid_value"
        )
    return seconds
