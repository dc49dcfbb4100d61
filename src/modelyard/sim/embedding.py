"""Deterministic embedding vectors: unit vectors from hashes of the text.

Each word of the text adds a few hashed ±1 features (feature hashing) and the whole text adds a small
dense component, so the same text always gives the same vector, every dimension is populated, and texts
that share words are measurably similar: enough for semantic-cache and semantic-routing demos.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct

_WORD = re.compile(r"\w+")
_FEATURES_PER_WORD = 4
_DENSE_WEIGHT = 0.1


def embed(text: str, dimensions: int) -> list[float]:
    """A unit vector of `dimensions` floats for `text`."""
    vec = _dense(text, dimensions)
    for word in _WORD.findall(text.lower()):
        digest = hashlib.blake2b(word.encode(), digest_size=4 * _FEATURES_PER_WORD).digest()
        for at in range(0, len(digest), 4):
            index = int.from_bytes(digest[at : at + 3], "little") % dimensions
            vec[index] += 1.0 if digest[at + 3] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def _dense(text: str, dimensions: int) -> list[float]:
    raw = hashlib.shake_256(text.encode()).digest(2 * dimensions)
    scale = _DENSE_WEIGHT / 32768.0
    return [(v - 32768) * scale for v in struct.unpack(f"<{dimensions}H", raw)]


def to_base64(vector: list[float]) -> str:
    """OpenAI's `encoding_format: base64`: little-endian float32s, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
