"""The on-disk embedding cache of the lab: text -> vector per embedding space, so re-training, re-evaluating
or replaying a dataset embeds each prompt once. The gateway embeds one prompt per request and never caches
to disk, so this lives here, not in `routing/`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modelyard.routing.embeddings import DIM, Embedder, Vectors, default_cache_dir
from modelyard.routing.learned import Array, QualityModel

#: Texts embedded per call when filling the cache (a progress step; batches inside are the embedder's).
CHUNK = 256


class EmbeddingStore:
    """A disk cache of text -> vector for one embedding space, so re-training on a dataset is instant.

    One `.npy` of vectors and one of text digests (hex) per signature; appended to, never rewritten in
    place (a new file is swapped in whole).
    """

    def __init__(self, signature: str, cache_dir: Path | None = None) -> None:
        safe = signature.replace("/", "_")
        self.dir = (cache_dir or default_cache_dir()) / "embeddings" / safe
        self.keys_path = self.dir / "keys.npy"
        self.vecs_path = self.dir / "vectors.npy"

    @staticmethod
    def digest(text: str) -> str:
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()

    def _load(self) -> tuple[NDArray[Any], Vectors]:
        if self.keys_path.is_file() and self.vecs_path.is_file():
            keys = np.load(self.keys_path, allow_pickle=False)
            vecs = np.load(self.vecs_path, allow_pickle=False)
            if len(keys) == len(vecs):
                return keys, vecs
        return np.zeros(0, "U32"), np.zeros((0, DIM), np.float32)

    def embed(
        self, embedder: Embedder, texts: Sequence[str], progress: Callable[[int, int], None] | None = None
    ) -> Vectors:
        """Vectors for `texts`, computing (and storing) only the ones not cached yet.

        The missing texts are embedded shortest first in chunks of `CHUNK` (each chunk's lengths are close,
        so the embedder's batches carry little padding), with `progress(done, total)` after each chunk.
        """
        keys, vecs = self._load()
        if not len(keys):
            vecs = np.zeros((0, embedder.dim), np.float32)
        index = {str(k): i for i, k in enumerate(keys)}
        wanted = [self.digest(t) for t in texts]
        missing = sorted({d: i for i, d in enumerate(wanted) if d not in index}.values())
        if missing:
            missing.sort(key=lambda i: len(texts[i]))
            fresh = np.zeros((len(missing), embedder.dim), np.float32)
            for start in range(0, len(missing), CHUNK):
                part = missing[start : start + CHUNK]
                fresh[start : start + len(part)] = embedder.embed([texts[i] for i in part])
                if progress is not None:
                    progress(start + len(part), len(missing))
            new_keys = np.array([wanted[i] for i in missing], dtype="U32")
            keys = np.concatenate([keys, new_keys])
            vecs = np.concatenate([vecs, fresh.astype(np.float32)])
            index.update({str(k): len(keys) - len(missing) + j for j, k in enumerate(new_keys)})
            self._save(keys, vecs)
        return vecs[[index[d] for d in wanted]]

    def _save(self, keys: NDArray[Any], vecs: Vectors) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            for path, arr in ((self.keys_path, keys), (self.vecs_path, vecs)):
                tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.npy")
                np.save(tmp, arr, allow_pickle=False)
                tmp.replace(path)
        except OSError:
            pass  # a cache that cannot be written is only slower


def predict_cached(model: QualityModel, prompts: Sequence[str], cache_dir: Path | None = None) -> Array:
    """`model.predict_batch` through the embedding cache: re-evaluating or replaying a file is fast."""
    embedder = model.ready_embedder()
    vectors = EmbeddingStore(embedder.signature, cache_dir).embed(embedder, prompts)
    return model.predict_embedded(vectors, prompts)
