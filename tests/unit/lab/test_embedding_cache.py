"""The lab's embedding cache: each text is embedded once per embedding space, and predictions read through it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from modelyard.lab.embedding_cache import EmbeddingStore, predict_cached
from tests.unit.routing_intel.conftest import HashEmbedder
from tests.unit.routing_intel.planted import planted, train_planted


def test_store_embeds_each_text_once(tmp_path: Path) -> None:
    embedder = HashEmbedder()
    store = EmbeddingStore(embedder.signature, tmp_path)
    first = store.embed(embedder, ["a b", "c d", "a b"])
    assert embedder.texts == 2  # the repeated text is embedded once
    again = EmbeddingStore(embedder.signature, tmp_path).embed(embedder, ["c d", "a b"])
    assert embedder.texts == 2  # all from disk
    np.testing.assert_array_equal(again, first[[1, 0]])
    store.embed(embedder, ["e f", "a b"])
    assert embedder.texts == 3  # only the new one


def test_predict_cached_equals_predict_batch_and_fills_the_cache(tmp_path: Path) -> None:
    model = train_planted()
    embedder = model.ready_embedder()
    assert isinstance(embedder, HashEmbedder)
    prompts, _, _ = planted(12, seed=4)
    cached = predict_cached(model, prompts, tmp_path)
    np.testing.assert_allclose(cached, model.predict_batch(prompts), atol=1e-6)
    seen = embedder.texts
    predict_cached(model, prompts, tmp_path)
    assert embedder.texts == seen  # the second pass reads every vector from disk
