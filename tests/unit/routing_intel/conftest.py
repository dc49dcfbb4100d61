"""Shared fixtures: a tiny deterministic bag-of-words embedder, and the real MiniLM when installed.

The routing extra (numpy, scipy) is optional for the package; without it these tests are not collected.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Sequence
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

if any(importlib.util.find_spec(m) is None for m in ("numpy", "scipy")):
    collect_ignore_glob = ["test_*.py"]  # `pip install 'modelyard[routing]'` to run them


class HashEmbedder:
    """Words hashed into 64 buckets, L2-normalised: similar word sets give similar vectors."""

    dim = 64
    signature = "hash-bow/64"

    def __init__(self) -> None:
        self.calls = 0
        self.texts = 0

    def embed(self, texts: Sequence[str]) -> Any:
        import numpy as np

        self.calls += 1
        self.texts += len(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)


@pytest.fixture
def hash_embedder() -> HashEmbedder:
    return HashEmbedder()


@pytest.fixture(scope="session")
def minilm():  # type: ignore[no-untyped-def]
    """The real MiniLM (numpy backend: no ONNX file written), or a skip saying what is missing."""
    from modelyard.routing.embeddings import EmbeddingUnavailable, MiniLM

    try:
        return MiniLM(backend="numpy")
    except EmbeddingUnavailable as exc:
        pytest.skip(f"MiniLM not installed: {exc}")
