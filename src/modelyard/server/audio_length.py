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

#: The highest bit rate each container's audio can honestly have (bits/s), by mutagen's class name: a header
#: claiming fewer seconds than the bytes hold at this rate is lying. Unlisted formats get the highest of them.
_MAX_BITRATE = {
    "MP3": 320_000,  # MPEG-1 Layer III's highest
    "EasyMP3": 320_000,
    "MP4": 640_000,  # AAC, ALAC is lossless: see FLAC
    "EasyMP4": 640_000,
    "OggVorbis": 500_000,
    "OggOpus": 512_000,
    "OggSpeex": 44_000,
    "FLAC": 9_216_000,  # lossless 192 kHz, 24-bit stereo, uncompressed
    "OggFLAC": 9_216_000,
    "WAVE": 18_432_000,  # PCM up to 192 kHz, 32-bit stereo
    "AIFF": 18_432_000,
}
_ANY_BITRATE = max(_MAX_BITRATE.values())
#: The lowest bit rate speech is sent at (AMR-NB 4.75 kbps): the bytes cannot hold more seconds than this.
_MIN_BITRATE = 4_000


def billable_seconds(header_s: float, size: int, bitrate: float | None, kind: str) -> float:
    """The seconds an upload is billed by: its header's claim, checked against what its bytes can hold.

    A header is the uploader's to write (an MP3's Xing frame count, a WAV's data size), so the claim is kept
    only within bounds its size allows: never more than the bytes hold at the lowest speech bit rate, never
    less than they hold at the format's highest; and when the stream's own bit rate says the bytes hold more
    than twice the claim (a Xing header saying one frame before 25 MB of frames), the bytes win.
    """
    bits = size * 8
    seconds = header_s
    if bitrate and bitrate > 0:
        by_size = bits / bitrate
        if seconds < by_size / 2:
            seconds = by_size
    floor = bits / _MAX_BITRATE.get(kind, _ANY_BITRATE)
    ceiling = bits / _MIN_BITRATE
    return min(max(seconds, floor), ceiling)


def _seconds(data: bytes, filename: str) -> float | None:
    try:
        audio = mutagen.File(io.BytesIO(data), filename=filename or None)
    except Exception:  # mutagen's parsers raise their own errors (and plain ones on hostile input)
        return None
    info = getattr(audio, "info", None) if audio is not None else None
    length = getattr(info, "length", None)
    if not isinstance(length, int | float) or not math.isfinite(length) or length <= 0:
        return None
    bitrate = getattr(info, "bitrate", None)
    rate = float(bitrate) if isinstance(bitrate, int | float) and math.isfinite(bitrate) and bitrate > 0 else None
    return billable_seconds(float(length), len(data), rate, type(audio).__name__)


async def audio_seconds(data: bytes, filename: str, param: str = "file") -> float:
    """The upload's duration in seconds; 400 `param` when it is not audio mutagen can read. The header walk
    runs on a worker thread (an upload is up to 25 MB: the event loop never waits on it)."""
    seconds = await asyncio.to_thread(_seconds, data, filename)
    if seconds is None:
        raise GatewayError(
            400, f"`{param}` is not an audio file the gateway can measure", param=param, code="invalid_value"
        )
    return seconds
