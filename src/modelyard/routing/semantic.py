"""Semantic routing and caching: match a prompt to example utterances, or to a recent similar prompt.

`SemanticRouter` is how task-type routing works without hand-written rules: a config lists a few example
utterances per route (`coding: [...]`, `search: [...]`) and a prompt goes to the route of its nearest
utterance when the cosine similarity clears a threshold, else to the default. Utterances are embedded once,
at construction; a decision is one embedding plus one small matrix-vector product.

`SemanticCache` reuses an earlier answer for a prompt whose embedding is within a cosine threshold of a
cached one, per namespace (model + API key, so tenants never see each other's answers), bounded in size
and age. Every hit passes the precision guard (routing/cache_guard.py): similarity finds candidates, the
guard refuses one whose numbers, names, negations or wording differ from the new prompt's, and a prompt whose
normalised text equals a stored one's hits without the threshold. It is in-memory and off unless the config
turns it on; the clock is injectable for tests. With
Redis, replicas share their entries (routing/intelligence.py, state/redis_semantic.py): another replica's
entry is stored here with its age, so it expires when it would have where it was made.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import numpy as np
from numpy.typing import NDArray

from modelyard.routing.cache_guard import Fingerprint, PrecisionGuard
from modelyard.routing.embeddings import Embedder

Vector = NDArray[np.float32]
T = TypeVar("T")
#: How a route's utterance similarities become one score: the nearest utterance, the mean of the three
#: nearest, or the similarity to the route's centroid (best with many varied utterances).
Aggregate = Literal["max", "top3", "centroid"]


def _unit(v: NDArray[Any]) -> Vector:
    vec = np.asarray(v, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm > 0 else vec


def embed_prompt(embedder: Embedder, prompt: str) -> Vector:
    """One prompt's unit vector, through the embedder's single-text fast path when it has one."""
    one = getattr(embedder, "embed_one", None)
    if callable(one):
        return _unit(one(prompt))
    return _unit(embedder.embed([prompt])[0])


@dataclass(frozen=True)
class RouteMatch:
    """The decision and why: the route (or default), the best similarity, and the closest utterance."""

    route: str | None
    similarity: float
    nearest_route: str | None
    utterance: str | None


class SemanticRouter:
    """Routes by similarity to example utterances: `route(prompt) -> (route or default, similarity)`."""

    def __init__(
        self,
        routes: Mapping[str, Sequence[str]],
        threshold: float,
        default: str | None,
        embedder: Embedder,
        aggregate: Aggregate = "max",
    ) -> None:
        if not routes or any(not utts for utts in routes.values()):
            raise ValueError("every route needs at least one example utterance")
        if not -1.0 <= threshold <= 1.0:
            raise ValueError("threshold is a cosine similarity in [-1, 1]")
        if aggregate not in ("max", "top3", "centroid"):
            raise ValueError(f"unknown aggregate {aggregate!r}")
        self.threshold = threshold
        self.default = default
        self.embedder = embedder
        self.aggregate = aggregate
        self.names = list(routes)
        self.utterances = [u for name in self.names for u in routes[name]]
        self.owner = np.array([i for i, name in enumerate(self.names) for _ in routes[name]], dtype=np.intp)
        vecs = np.asarray(embedder.embed(self.utterances), dtype=np.float32)
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        self.matrix = vecs / np.where(norms > 0, norms, 1.0)
        groups = range(len(self.names))
        self.centroids = np.stack([_unit(self.matrix[self.owner == i].mean(0)) for i in groups])

    def route_scores(self, vector: NDArray[Any]) -> tuple[NDArray[np.float64], NDArray[Any]]:
        """(score per route, similarity per utterance) for an embedded prompt."""
        v = _unit(vector)
        sims = self.matrix @ v
        if self.aggregate == "centroid":
            return (self.centroids @ v).astype(np.float64), sims
        scores = np.empty(len(self.names))
        for i in range(len(self.names)):
            own = sims[self.owner == i]
            scores[i] = own.max() if self.aggregate == "max" else np.sort(own)[-3:].mean()
        return scores, sims

    def match_vector(self, vector: NDArray[Any]) -> RouteMatch:
        """The decision for an already-embedded prompt (the cache and the router share one embedding)."""
        scores, sims = self.route_scores(vector)
        best = int(np.argmax(scores))
        sim = float(scores[best])
        nearest = self.names[best]
        own = np.flatnonzero(self.owner == best)
        closest = self.utterances[int(own[np.argmax(sims[own])])]
        chosen = nearest if sim >= self.threshold else self.default
        return RouteMatch(chosen, sim, nearest, closest)

    def match(self, prompt: str) -> RouteMatch:
        return self.match_vector(embed_prompt(self.embedder, prompt))

    def route(self, prompt: str) -> tuple[str | None, float]:
        """(route name, or the default when no utterance is similar enough; best cosine similarity)."""
        m = self.match(prompt)
        return m.route, m.similarity

    def scores(self, prompt: str) -> dict[str, float]:
        """Score per route, for `--explain`."""
        scores, _ = self.route_scores(embed_prompt(self.embedder, prompt))
        return {name: float(s) for name, s in zip(self.names, scores, strict=True)}


def namespace(model: str, key: str | None) -> str:
    """The cache partition: one model's answers for one API key (or the anonymous caller)."""
    return f"{model}\x1f{key or '-'}"


class _Shelf(Generic[T]):
    """One namespace: a growing matrix of unit vectors with answers, insertion times and LRU order."""

    def __init__(self, dim: int) -> None:
        self.vectors = np.zeros((8, dim), np.float32)
        self.answers: list[T | None] = [None] * 8
        self.stored = np.zeros(8, np.float64)
        self.live = np.zeros(8, bool)
        self.prints: list[Fingerprint | None] = [None] * 8
        self.keys: dict[str, int] = {}  # normalised prompt -> slot: the guard's exact hit
        self.order: OrderedDict[int, None] = OrderedDict()  # slot -> None, least recently used first

    def free_slot(self) -> int:
        dead = np.flatnonzero(~self.live)
        if len(dead):
            return int(dead[0])
        n = len(self.live)
        self.vectors = np.concatenate([self.vectors, np.zeros_like(self.vectors)])
        self.answers.extend([None] * n)
        self.prints.extend([None] * n)
        self.stored = np.concatenate([self.stored, np.zeros(n)])
        self.live = np.concatenate([self.live, np.zeros(n, bool)])
        return n

    def drop(self, slot: int) -> None:
        self.live[slot] = False
        self.answers[slot] = None
        fp = self.prints[slot]
        if fp is not None and self.keys.get(fp.key) == slot:
            del self.keys[fp.key]
        self.prints[slot] = None
        self.order.pop(slot, None)


class SemanticCache(Generic[T]):
    """Answers keyed by prompt embedding: `lookup(ns, v)` returns one stored for a vector within
    `threshold` cosine similarity of `v` (the most similar live entry), else None.

    `max_entries` bounds each namespace (least recently used goes first); `ttl_s` bounds an entry's age.
    With a `guard`, an entry is stored and found only with its prompt's fingerprint, the `candidates` most
    similar entries over the threshold are offered to the guard in turn, and the first it accepts is the
    hit; without one (tests, the bench's baseline) the nearest entry over the threshold is.
    """

    def __init__(
        self,
        threshold: float = 0.95,
        max_entries: int = 1000,
        ttl_s: float | None = 3600.0,
        clock: Callable[[], float] = time.monotonic,
        guard: PrecisionGuard | None = None,
        candidates: int = 4,
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError("threshold is a cosine similarity in (0, 1]")
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self.threshold = threshold
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.clock = clock
        self.guard = guard
        self.candidates = max(int(candidates), 1)
        self.shelves: dict[str, _Shelf[T]] = {}
        self.hits = 0
        self.misses = 0
        self.refused = 0  # lookups with a candidate over the threshold that the guard refused

    def lookup(self, ns: str, embedding: NDArray[Any], prompt: Fingerprint | None = None) -> T | None:
        """The cached answer for `embedding` (and, with a guard, `prompt`) in `ns`, else None."""
        slot = self._find(ns, embedding, prompt)
        if slot is None:
            self.misses += 1
            return None
        shelf = self.shelves[ns]
        shelf.order.move_to_end(slot)
        self.hits += 1
        return shelf.answers[slot]

    def _find(self, ns: str, embedding: NDArray[Any], prompt: Fingerprint | None) -> int | None:
        shelf = self.shelves.get(ns)
        if shelf is None or not shelf.live.any():
            return None
        guard = self.guard
        if guard is not None and prompt is None:
            return None  # nothing to check a candidate against
        self._expire(shelf)
        if prompt is not None and guard is not None:
            same = shelf.keys.get(prompt.key)
            if same is not None and shelf.live[same]:
                return same
        sims = shelf.vectors @ _unit(embedding)
        sims[~shelf.live] = -np.inf
        if guard is None:
            slot = int(np.argmax(sims))
            return slot if sims[slot] >= self.threshold else None
        assert prompt is not None
        over = np.flatnonzero(sims >= self.threshold)
        if not len(over):
            return None
        for slot in over[np.argsort(-sims[over])][: self.candidates]:
            stored = shelf.prints[int(slot)]
            if stored is not None and guard.agrees(prompt, stored):
                return int(slot)
        self.refused += 1
        return None

    def store(
        self, ns: str, embedding: NDArray[Any], answer: T, age_s: float = 0.0, prompt: Fingerprint | None = None
    ) -> bool:
        """Keep `answer` for prompts similar to `embedding` in `ns`, evicting the least recently used.

        `age_s`: how long ago the answer was stored elsewhere (another replica's entry keeps its own expiry
        here, not a fresh TTL); an entry already past the TTL is not kept (False), nor, with a guard, one
        without its prompt's fingerprint (it could never be checked). A newer answer for the same normalised
        prompt replaces the older one."""
        if self.ttl_s is not None and age_s >= self.ttl_s:
            return False
        if self.guard is not None and prompt is None:
            return False
        raw = np.asarray(embedding, dtype=np.float32)
        if not np.isfinite(raw).all():  # a NaN would win every lookup (NaN < threshold is False)
            raise ValueError("a vector with NaN or infinite values")
        vector = _unit(raw)
        size = int(vector.size)
        shelf = self.shelves.get(ns)
        if shelf is None:
            shelf = self.shelves[ns] = _Shelf(size)
        elif shelf.vectors.shape[1] != size:
            raise ValueError(f"a {size}-dimensional vector for a shelf of {shelf.vectors.shape[1]}")
        self._expire(shelf)
        if prompt is not None and prompt.key in shelf.keys:
            shelf.drop(shelf.keys[prompt.key])
        while len(shelf.order) >= self.max_entries:
            shelf.drop(next(iter(shelf.order)))
        slot = shelf.free_slot()
        shelf.vectors[slot] = vector
        shelf.answers[slot] = answer
        shelf.prints[slot] = prompt
        if prompt is not None:
            shelf.keys[prompt.key] = slot
        shelf.stored[slot] = self.clock() - max(age_s, 0.0)
        shelf.live[slot] = True
        shelf.order[slot] = None
        return True

    def _expire(self, shelf: _Shelf[T]) -> None:
        if self.ttl_s is None:
            return
        old = np.flatnonzero(shelf.live & (shelf.stored <= self.clock() - self.ttl_s))
        for slot in old:
            shelf.drop(int(slot))

    def __len__(self) -> int:
        return sum(len(s.order) for s in self.shelves.values())

    def clear(self, ns: str | None = None) -> None:
        """Forget one namespace, or everything."""
        if ns is None:
            self.shelves.clear()
        else:
            self.shelves.pop(ns, None)
