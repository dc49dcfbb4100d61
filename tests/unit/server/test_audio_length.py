"""What an upload is billed by: its header's duration, within what its bytes can hold (a header is the
uploader's to write)."""

from __future__ import annotations

import io
import wave

import pytest

from modelyard.server.audio_length import audio_seconds, billable_seconds

MB = 1_000_000


@pytest.mark.parametrize(
    ("header_s", "size", "bitrate", "kind", "expected"),
    [
        (60.0, 960_000, 128_000, "MP3", 60.0),  # an honest MP3: the header stands
        (0.026, 25 * MB, 128_000, "MP3", 25 * MB * 8 / 128_000),  # a Xing header saying one frame
        (1.0, 25 * MB, 10_000_000, "MP3", 25 * MB * 8 / 320_000),  # a forged bit rate: MP3's highest bounds it
        (4.29e9, 52, 16, "WAVE", 52 * 8 / 4_000),  # 52 bytes claiming 136 years: the lowest speech rate bounds it
        (30.0, 2_880_044, 768_000, "WAVE", 30.0),  # 16 kHz 16-bit stereo PCM, honest
        (70.0, 25 * MB, 2_857_142, "FLAC", 70.0),  # hi-res lossless is not cut short
    ],
)
def test_the_claim_is_kept_within_what_the_bytes_hold(
    header_s: float, size: int, bitrate: float | None, kind: str, expected: float
) -> None:
    assert billable_seconds(header_s, size, bitrate, kind) == pytest.approx(expected, rel=1e-3)


def _wav(seconds: float, rate: int = 8000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * int(seconds * rate))
    return out.getvalue()


async def test_a_real_wav_is_measured_by_its_header() -> None:
    assert await audio_seconds(_wav(2.5), "a.wav") == pytest.approx(2.5, rel=1e-3)
