"""Typed configuration: deployments (where a model runs) and models (the names clients ask for).

Plain msgspec Structs so the YAML is validated in one `msgspec.convert` call, with errors that name the
path of the bad key; `config.loader` turns that path into a file and line.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct, field

from modelyard.config.providers import bind_options
from modelyard.config.routing_options import Constraints, ModelOptions, RuleSpec, as_struct
from modelyard.schema.guardrails import CheckSpec

Capability = Literal["tools", "vision", "json_object", "json_schema", "streaming", "audio", "reasoning"]


#: A price per 1M tokens (or per 1,000 searches): finite, not negative (a negative price would pay the caller
#: back and turn a budget into a credit), and below a bound far above any real one.
PriceValue = Annotated[float, Meta(ge=0, le=1_000_000)]


class Price(Struct, kw_only=True, forbid_unknown_fields=True):
    """USD per 1M tokens. `cached_input`/`cache_write` default to `input` when the provider has none."""

    input: PriceValue = 0.0
    output: PriceValue = 0.0
    cached_input: PriceValue | None = None
    cache_write: PriceValue | None = None
    reasoning: PriceValue | None = None
    #: USD per 1,000 server-side web searches (Anthropic's web_search tool: 10.0), from the provider's usage.
    web_search: PriceValue | None = None
    #: USD per minute of audio transcribed or translated (whisper-1: 0.006), by the upload's measured duration.
    audio_minute: PriceValue | None = None
    #: USD per 1M characters of text spoken (tts-1: 15.0).
    characters: PriceValue | None = None
    #: USD per image generated (dall-e-3 1024x1024 standard: 0.04).
    image: PriceValue | None = None
    #: USD per 1,000 rerank search units (Cohere rerank: 2.0; a unit is one query over up to 100 documents).
    search_unit: PriceValue | None = None
    #: The multiplier of the token prices for provider Batch API jobs (`modelyard batch --provider-batch`):
    #: OpenAI and Anthropic both bill batched requests at 50%.
    batch: PriceValue = 0.5


class Limits(Struct, kw_only=True, forbid_unknown_fields=True):
    """A deployment's capacity as its provider enforces it (routing/limits.py keeps to it).

    `rpm`/`tpm` are token buckets, refilled continuously at the per-minute rate (how Anthropic and OpenAI
    describe their own limits); `burst_s` is the bucket's depth in seconds of that rate: 60 lets a whole
    minute's requests go at once when idle, 1 paces them per second (a provider that enforces "600 RPM" as
    10 per second). Under saturation either way dispatches at the steady rate, never in minute-long waves.
    """

    rpm: Annotated[int, Meta(gt=0)] | None = None
    tpm: Annotated[int, Meta(gt=0)] | None = None
    max_concurrency: Annotated[int, Meta(gt=0)] | None = None
    burst_s: Annotated[float, Meta(gt=0, le=3600)] = 60.0

    @property
    def rate_limited(self) -> bool:
        """Whether a token bucket must track this deployment's requests and tokens."""
        return self.rpm is not None or self.tpm is not None

    @property
    def configured(self) -> bool:
        """Whether any limit is set, so the headroom check can be skipped when none is."""
        return self.rpm is not None or self.tpm is not None or self.max_concurrency is not None


class Timeouts(Struct, kw_only=True, forbid_unknown_fields=True):
    """Seconds, each finite and > 0.

    - `connect`: opening the connection (TCP and TLS).
    - `first_token`: a streaming call's wait for the response headers and its first event; a stream that
      has not started by then fails over (a stream's later pauses are bounded by `total`).
    - `response`: a non-streaming call's whole answer. A provider sends nothing until the answer is done,
      so this is its only progress bound: 300 s covers a long reasoning answer (~30k output tokens at
      ~100 tokens/s), yet a hung upstream fails over in 5 minutes instead of `total`'s 10. Longer answers
      should stream.
    - `total`: the ceiling of any one attempt, streaming or not.
    """

    connect: Annotated[float, Meta(gt=0, le=86_400)] = 5.0
    first_token: Annotated[float, Meta(gt=0, le=86_400)] = 60.0
    response: Annotated[float, Meta(gt=0, le=86_400)] = 300.0
    total: Annotated[float, Meta(gt=0, le=86_400)] = 600.0


class TaskAcceptance(Struct, kw_only=True):
    """An acceptance suite's verdict on one deployment for one task (`quality_from:`, config/quality_file.py).

    Unknown fields are allowed: the results file may carry more than routing reads."""

    pass_rate: Annotated[float, Meta(ge=0.0, le=1.0)]
    accepted: bool
    cases: Annotated[int, Meta(ge=0)] = 0
    #: The suite's threshold for the task, when the file gives it (explain shows `pass rate 0.40 < 0.90`).
    min_pass_rate: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None


class Deployment(Struct, kw_only=True, forbid_unknown_fields=True):
    """One model at one provider endpoint, with its price, limits and capabilities."""

    name: str
    #: A built-in adapter (`openai`, `anthropic`, `gemini`), an installed `modelyard.providers` entry point,
    #: or `"package.module:ClassName"` (config/providers.py resolves it).
    provider: str
    model: str
    api_base: str | None = None
    api_key: str | None = None
    #: What it serves: chat completions, embeddings, or one of the non-chat endpoints (schema/endpoints.py:
    #: `transcription` serves /v1/audio/transcriptions and /translations, `speech` /v1/audio/speech, `image`
    #: /v1/images/generations, `rerank` /v1/rerank).
    kind: Literal["chat", "embedding", "transcription", "speech", "image", "rerank"] = "chat"
    price: Price | None = None
    context_window: int | None = None
    max_output_tokens: int | None = None
    capabilities: list[Capability] = field(
        default_factory=lambda: ["tools", "vision", "json_object", "json_schema", "streaming"]
    )
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)
    quality: float | dict[str, float] | None = None
    #: Acceptance-suite results per task: filled from the config's `quality_from:` file (which also sets the
    #: per-task `quality` to the pass rates); read by `accepted: true` routes and `learned` quality floors.
    acceptance: dict[str, TaskAcceptance] | None = None
    #: The model name a learned router knows this deployment by (e.g. `gpt-4-1106-preview`; default: `model`);
    #: the `learned` strategy uses that model's predicted quality for this deployment.
    router_model: str | None = None
    #: Latency to assume before live traffic has measured any (`modelyard plan`, workflow estimates).
    expected_ttft_ms: float | None = None
    expected_tokens_per_s: float | None = None
    weight: float = 1.0
    tier: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    #: Provider-specific switches, e.g. {"stream_usage": false} for OpenAI-compatible servers that reject
    #: `stream_options`, or {"api_version": "2023-06-01"} for Anthropic. Given as a mapping (or the Struct
    #: itself); always the adapter's `options_type` Struct once the Deployment exists (`__post_init__`), so
    #: adapters read fields by attribute and a typo fails here, not silently at request time.
    options: Any = None

    def __post_init__(self) -> None:
        self.options = bind_options(self.provider, self.options)

    def has(self, capability: str) -> bool:
        return capability in self.capabilities

    def quality_for(self, task: str | None) -> float | None:
        if self.quality is None or isinstance(self.quality, float | int):
            return None if self.quality is None else float(self.quality)
        if task is not None and task in self.quality:
            return self.quality[task]
        return self.quality.get("default")


class Fallback(Struct, kw_only=True, forbid_unknown_fields=True):
    """A marked fallback: `{model: local-llama, when: saturated}`.

    `error` (what a plain name means): tried when every candidate failed. `saturated`: a tier that serves
    requests of classes with `fallback_when_saturated` instead of queueing while every candidate is at its
    limits. `always`: both.
    """

    model: str
    when: Literal["error", "saturated", "always"] = "error"


class ModelQueue(Struct, kw_only=True, forbid_unknown_fields=True):
    """A model's own admission-queue bounds; unset ones take the top-level `queue:` values."""

    enabled: bool | None = None
    max_wait_ms: Annotated[float, Meta(gt=0, le=3_600_000)] | None = None
    max_length: Annotated[int, Meta(gt=0, le=10_000_000)] | None = None


class ModelGroup(Struct, kw_only=True, forbid_unknown_fields=True):
    """A name clients ask for: its candidate deployments, how to choose among them, where to fall back."""

    candidates: list[str]
    strategy: str = "priority"
    #: Tried in order when every candidate failed: names, or `{model, when}` marks (`Fallback`). After
    #: loading this holds only the names tried on error; `saturation_fallbacks` the saturation tiers.
    fallbacks: list[str | Fallback] = field(default_factory=list)
    saturation_fallbacks: list[str] = field(default_factory=list)
    queue: ModelQueue | None = None
    constraints: Constraints = field(default_factory=Constraints)
    rules: list[RuleSpec] = field(default_factory=list)
    hedge_after_ms: float | str | None = None
    retries: int | None = None
    options: ModelOptions = field(default_factory=ModelOptions)
    #: Reuse an answer for a prompt whose embedding is this close to a cached one (off unless set).
    semantic_cache: SemanticCacheSettings | None = None
    #: This model's exact-match response cache settings (top-level `cache:` otherwise).
    cache: ModelCache | None = None
    #: A `learned` model's online recalibration from feedback (routing/recalibration.py; off unless set).
    recalibrate: RecalibrateSettings | None = None
    #: Guardrails on every request to this model: names of sets in the top-level `guardrails:`, or checks.
    guardrails: list[str | CheckSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Settings built in code may be given as plain mappings; the loader hands Structs (a no-op here).
        self.constraints = as_struct(self.constraints, Constraints)
        self.options = as_struct(self.options, ModelOptions)
        self.rules = [as_struct(rule, RuleSpec) for rule in self.rules]
        if any(not isinstance(f, str) for f in self.fallbacks):
            on_error: list[str | Fallback] = []
            tiers = list(self.saturation_fallbacks)
            for item in self.fallbacks:
                mark = as_struct(item, Fallback) if not isinstance(item, str) else Fallback(model=item)
                if mark.when != "saturated":
                    on_error.append(mark.model)
                if mark.when != "error" and mark.model not in tiers:
                    tiers.append(mark.model)
            self.fallbacks = on_error
            self.saturation_fallbacks = tiers

    @property
    def error_fallbacks(self) -> list[str]:
        """The names tried on error (`fallbacks` after loading: marks are split out by `__post_init__`)."""
        return [f if isinstance(f, str) else f.model for f in self.fallbacks]


class ModelCache(Struct, kw_only=True, forbid_unknown_fields=True):
    """A model's own response-cache settings; unset ones take the top-level `cache:` values."""

    enabled: bool | None = None
    ttl_s: Annotated[float, Meta(gt=0, le=30 * 86400)] | None = None


class ResponseCacheSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    """The exact-match response cache (docs/caching.md): an answer reused for the same request from the
    same key. Only deterministic requests (`temperature: 0`, one choice) or ones that opt in
    (`modelyard: {cache: true}`) are cached; `Cache-Control: no-cache` skips the lookup, `no-store` the
    store. Off unless `enabled` (here, or per model)."""

    enabled: bool = False
    #: `memory` (per replica), `redis` (shared: needs `state.redis_url`); default: redis when a Redis URL
    #: is configured, memory otherwise.
    backend: Literal["memory", "redis"] | None = None
    ttl_s: Annotated[float, Meta(gt=0, le=30 * 86400)] = 300.0
    #: Bounds of the in-memory backend (least recently used go first) and of any one answer (larger ones
    #: are not cached).
    max_entries: Annotated[int, Meta(gt=0, le=10_000_000)] = 10_000
    max_bytes: Annotated[int, Meta(gt=0, le=1 << 40)] = 64 * 1024 * 1024
    max_entry_bytes: Annotated[int, Meta(gt=0, le=1 << 30)] = 1024 * 1024


class SemanticCacheSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    """Per model and API key; non-streaming requests only; temperature-0 style reuse, so opt in."""

    #: Cosine similarity that makes an entry a candidate; the precision guard (routing/cache_guard.py)
    #: then decides. 0.92: measured by bench/semantic_cache_precision.py (docs/routing.md, "Semantic cache
    #: precision"): no false hit on its pair set at any threshold, and the paraphrase hit rate within half a
    #: point of its best, with fewer candidates for the guard than lower thresholds.
    threshold: Annotated[float, Meta(gt=0, le=1)] = 0.92
    ttl_s: float = 3600.0
    max_entries: int = 1000
    #: The guard: how close (word-embedding cosine) two differing words must be to count as synonyms, and
    #: how many such swaps one prompt may have.
    synonym_similarity: Annotated[float, Meta(gt=0, le=1)] = 0.85
    max_swaps: Annotated[int, Meta(ge=0, le=8)] = 2


class RecalibrateSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    """Online recalibration of a `learned` model from `POST /v1/feedback` (docs/feedback.md): every bound here
    is a limit on how far, and how fast, feedback may move the route."""

    #: The quality the route must keep (mean feedback score); None: the router's calibrated target.
    target: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    #: Seconds of feedback each estimate reads, and the length of one step's period.
    window_s: Annotated[float, Meta(gt=0.0, le=30 * 86400.0)] = 3600.0
    period_s: Annotated[float, Meta(gt=0.0, le=86400.0)] = 60.0
    #: How often each replica re-reads the store's feedback (seconds).
    refresh_s: Annotated[float, Meta(gt=0.0, le=3600.0)] = 30.0
    #: Pseudo-samples pulling each correction towards zero (towards the route's own, for a task).
    prior: Annotated[float, Meta(ge=0.0, le=10_000.0)] = 20.0
    #: Largest change of a quality correction, and of the knob, per period; largest correction and knob shift.
    max_step: Annotated[float, Meta(gt=0.0, le=1.0)] = 0.1
    max_correction: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.5
    knob_step: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.02
    max_knob_shift: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.2
    #: Samples before the knob moves at all.
    min_samples: Annotated[int, Meta(ge=1, le=1_000_000)] = 30
    #: The most samples one key counts for per route within the window (its feedback is down-weighted beyond).
    max_per_key: Annotated[float, Meta(gt=0.0, le=1_000_000.0)] = 50.0
    #: Share of the route's requests sent to a candidate the router rates lower, so it keeps learning about it.
    explore: Annotated[float, Meta(ge=0.0, le=0.5)] = 0.05


class SemanticSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    """Task types recognised from example utterances (`metadata.task`/headers still win); rules use them."""

    routes: dict[str, list[str]]
    threshold: float = 0.45
    default: str | None = None


class BreakerSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    """Circuit breaker per deployment: open after `failures` in `window_s` (or at `error_rate`)."""

    failures: int = 5
    window_s: float = 30.0
    cooldown_s: float = 30.0
    error_rate: float | None = None
    min_requests: int = 20


class RoutingSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    """Executor defaults; a model's `retries`/`options` override them per model."""

    retries: int = 1
    backoff_base_s: float = 0.1
    max_backoff_s: float = 2.0
    retry_after_cap_s: float = 5.0
    max_attempts: int = 8
    failover_on_content_filter: bool = False
    latency_alpha: float = 0.2
    #: The trained router for `strategy: learned` (an .npz from `modelyard router train`); null: the shipped one.
    learned_router: str | None = None
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    seed: int | None = None


class PriorityClass(Struct, kw_only=True, forbid_unknown_fields=True):
    """A priority class of the admission queue (routing/admission.py)."""

    name: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    #: Its share of dispatched tokens under saturation, against the other backlogged classes.
    weight: Annotated[float, Meta(gt=0, le=1_000_000)] = 1.0
    #: Under saturation, serve it from the model's `when: saturated` fallbacks instead of queueing.
    fallback_when_saturated: bool = False


def _default_classes() -> list[PriorityClass]:
    return [
        PriorityClass(name="interactive", weight=8.0),
        PriorityClass(name="default", weight=3.0),
        PriorityClass(name="batch", weight=1.0, fallback_when_saturated=True),
    ]


class QueueSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    """The admission queue: when every candidate of a model is at its limits, requests wait their turn
    (weighted fair by class, fair by key within a class) instead of failing (docs/queueing.md)."""

    enabled: bool = True
    #: Highest first: the order a key's `max_priority` caps by, and `strict` serves by.
    classes: list[PriorityClass] = field(default_factory=_default_classes)
    default_class: str = "default"
    #: Serve a higher class whenever it has a request waiting (a lower one may starve).
    strict: bool = False
    #: The longest a request waits when neither its key (`max_queue_ms`) nor its header says less.
    max_wait_ms: Annotated[float, Meta(gt=0, le=3_600_000)] = 30_000.0
    #: Requests waiting per model, and per key per model; beyond either, a 429 at once.
    max_length: Annotated[int, Meta(gt=0, le=10_000_000)] = 10_000
    max_per_key: Annotated[int, Meta(gt=0, le=10_000_000)] = 1_000

    def __post_init__(self) -> None:
        names = [c.name for c in self.classes]
        if not names:
            raise ValueError("queue.classes needs at least one class")
        if len(set(names)) != len(names):
            raise ValueError(f"queue.classes has duplicate names: {names}")
        if self.default_class not in names:
            raise ValueError(f"queue.default_class {self.default_class!r} is not one of {names}")

    def rank(self, name: str) -> int | None:
        """The class's index (0 = highest), or None for an unknown name."""
        for i, c in enumerate(self.classes):
            if c.name == name:
                return i
        return None


class ResponsesSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    """`/v1/responses` conversation state (state/conversations.py), kept in the gateway's store."""

    #: Keep responses for `previous_response_id` and GET /v1/responses/{id}: true, false, or null = on when
    #: keys are in use and off in open mode (an open gateway would share every conversation id with anyone).
    store: bool | None = None
    #: How long a stored response lives (seconds; OpenAI keeps them 30 days).
    ttl_s: float = 30 * 86400.0
    #: The most live stored responses per key (a 429 on `store: true` beyond it).
    max_per_key: int = 100_000


class ServerSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 4000
    max_body_bytes: int = 10 * 1024 * 1024
    #: The largest whole answer read from a provider (a speech file, a batch of base64 images; streams are not
    #: bound by it): a provider sending more fails the attempt, so a hostile or broken upstream cannot fill the
    #: gateway's memory. Error bodies are read up to 1 MiB.
    max_answer_bytes: Annotated[int, Meta(ge=65_536, le=4 * 1024**3)] = 64 * 1024 * 1024
    #: The HTTP client for provider calls: `fast` (our HTTP/1.1 client), `aiohttp`, or `auto` (fast, but
    #: aiohttp when HTTP(S)_PROXY is set, since only aiohttp speaks to proxies).
    http_client: Literal["auto", "fast", "aiohttp"] = "auto"
    master_key: str | None = None
    #: `anthropic-beta` values a client may have forwarded to an Anthropic upstream on pass-through; others
    #: are dropped (some betas cost money or reach stored files). None: the safe default list
    #: (server/anthropic_request.py DEFAULT_ANTHROPIC_BETAS). A key's `anthropic_betas` metadata
    #: (comma-separated) replaces it for that key.
    anthropic_betas: list[str] | None = None
    #: Anthropic server tools (web search, code execution, ...) on pass-through: the gateway does not price
    #: them, so they are refused unless allowed here or by a key's `anthropic_server_tools: allow` metadata.
    anthropic_server_tools: bool = False
    responses: ResponsesSettings = field(default_factory=ResponsesSettings)


class KeyLimits(Struct, kw_only=True, forbid_unknown_fields=True):
    """Limits of one key: requests and tokens per minute, and a budget in USD per period (e.g. "30d")."""

    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    period: str = "30d"


class AccessSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    """Who may call the gateway. No master key and no virtual key in the store = open mode (logged loudly).

    The master key comes from here, else `server.master_key`, else $MODELYARD_MASTER_KEY.
    """

    master_key: str | None = None
    #: Limits applied to the master key too; `master_unlimited: true` exempts it.
    master_limits: KeyLimits = field(default_factory=KeyLimits)
    master_unlimited: bool = False
    #: Where virtual keys live (a SQLite path or a postgresql:// DSN); defaults to `spend.store`.
    keys_store: str | None = None
    #: How often keys are re-read from the store (revocations made by another replica show up then).
    refresh_s: float = 30.0
    #: Output tokens a budget reservation counts when a request sets no `max_tokens`: `estimate` (a typical
    #: answer, 256 tokens: a long answer may overshoot the budget by its excess) or `max_output` (the most
    #: any reachable deployment may produce: `max_output_tokens`, else its context window; never overshoots).
    reserve_output: Literal["estimate", "max_output"] = "estimate"


#: What an in-memory spend log (no `spend.store`) keeps, about: the newest requests. A gateway run without a
#: store must not grow with every request it serves (~0.56 kB a row measured: 100,000 rows are ~56 MB).
MEMORY_SPEND_ROWS = 100_000


class SpendSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    """The spend log: one row per request, written in batches by a background task."""

    enabled: bool = True
    #: A SQLite file path (or sqlite:///path, or :memory:) or a postgresql:// DSN. None = in memory.
    store: str | None = None
    batch_size: int = 500
    flush_interval_s: float = 1.0
    max_queue: int = 100_000
    #: Also log the last user turn of each request (off by default: no prompt text in the log).
    log_content: bool = False
    #: Keep each record in a local append-only spool before the response's last byte, so kill -9 loses no
    #: completed request's spend (replayed into the store at the next start; fsynced every flush interval).
    spool: bool = True
    #: Where the spool lives. Default: `<sqlite file>.spool/` beside a SQLite store; for PostgreSQL a
    #: directory per DSN under $XDG_STATE_HOME (~/.local/state)/modelyard/spool/; none for an in-memory store.
    spool_dir: str | None = None
    #: A spool segment is rotated at this size and deleted once the store holds all its records.
    spool_segment_bytes: int = 16 * 1024 * 1024
    #: Where a SQLite store makes its spend inserts: `thread` (the store's thread in the gateway's process),
    #: `process` (a helper process at idle priority on its own connection: the insert's CPU and GIL leave the
    #: gateway) or `auto` (the helper, except for the big batches of a writer that has fallen behind).
    sqlite_inserts: Literal["auto", "thread", "process"] = "auto"
    #: With no `store` (in memory): the requests the log keeps, about (the newest). The totals of older ones
    #: stay in the rollups; a budget seeded later counts them from there (docs/accounting.md).
    memory_rows: Annotated[int, Meta(ge=1000, le=100_000_000)] = MEMORY_SPEND_ROWS


class StateSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    """Live counters (key RPM/TPM windows, budget reservations): in memory, or in Redis to share them
    across replicas."""

    redis_url: str | None = None
    prefix: str = "modelyard"
    #: While Redis is unreachable: refuse keys with limits (503 `state_unavailable` + Retry-After), or admit
    #: them against in-memory limits of each replica until Redis returns (docs/accounting.md).
    on_unavailable: Literal["fail_closed", "fail_open"] = "fail_closed"
    #: Connect and command timeout for Redis: how quickly an outage is noticed.
    redis_timeout_s: float = 0.5
    #: Budget settlements kept (and replayed when Redis returns) during an outage.
    max_pending_settlements: int = 100_000
    #: Bound on every store call made while serving a request or an admin call (a hung store → 503).
    store_timeout_s: float = 5.0
    #: With `redis_url`: share breaker states, cooldowns and latency statistics between replicas
    #: (state/redis_health.py); each replica reads its local copy, synced in the background.
    shared_health: bool = True
    #: How often the shared health view is synced (its staleness bound; a breaker opening is pushed at once).
    health_sync_s: Annotated[float, Meta(gt=0, le=60)] = 0.25
    #: With `redis_url`: share semantic-cache entries between replicas (synced in the background).
    shared_semantic_cache: bool = True


class DrainSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    """What SIGTERM does (docs/operations.md): `/health/ready` turns 503 at once; new connections are still
    accepted for `grace_s` (a load balancer's time to notice), then refused; requests and streams in flight
    get up to `deadline_s` to finish; the spend log is flushed; the process exits."""

    grace_s: Annotated[float, Meta(ge=0, le=3600)] = 5.0
    deadline_s: Annotated[float, Meta(ge=0, le=86400)] = 60.0


class TracingSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    """OpenTelemetry spans per request and attempt (needs the `otel` extra; the exporter is yours to set)."""

    enabled: bool = False
    service_name: str = "modelyard"


class UiSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    """The operators' dashboard at `/ui` (docs/dashboard.md): behind the master key or keys whose metadata has
    `role: admin`; `ui: false` turns it off. Sessions live in the store, so a login works on every replica."""

    enabled: bool = True
    #: A session's life from login (sliding: each page view within it does not extend it).
    session_ttl_s: Annotated[float, Meta(ge=60, le=30 * 86400)] = 12 * 3600.0
    #: Peers (IP addresses or CIDR blocks) whose X-Forwarded-For / X-Forwarded-Proto are believed: the
    #: client address for login throttling, and https for the Secure cookie flag.
    trusted_proxies: list[str] = field(default_factory=list)
    #: Failed logins per client address per 5 minutes before 429 (and for the whole replica: 10x this).
    max_failed_logins: Annotated[int, Meta(ge=1, le=10_000)] = 10
    #: Share of requests whose full routing explanation (every strategy score and note) is stored; the
    #: others store the compact one (ranking, skips and reasons). Requests sent with x-modelyard-explain
    #: always store the full one.
    explain_sample: Annotated[float, Meta(ge=0, le=1)] = 0.01
    #: The workflow run store the Runs page reads (`modelyard run --store`); default ~/.modelyard/runs.db.
    runs_store: str | None = None
    #: Folders of labelled files (JSONL/CSV) the What-if page may replay; relative to the config file.
    whatif_data: list[str] = field(default_factory=list)
    #: Seconds between live refreshes of the overview.
    refresh_s: Annotated[float, Meta(ge=1, le=3600)] = 5.0


class Config(Struct, kw_only=True, forbid_unknown_fields=True):
    deployments: list[Deployment]
    models: dict[str, ModelGroup] = field(default_factory=dict)
    server: ServerSettings = field(default_factory=ServerSettings)
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    access: AccessSettings = field(default_factory=AccessSettings)
    spend: SpendSettings = field(default_factory=SpendSettings)
    state: StateSettings = field(default_factory=StateSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    cache: ResponseCacheSettings = field(default_factory=ResponseCacheSettings)
    drain: DrainSettings = field(default_factory=DrainSettings)
    ui: UiSettings = field(default_factory=UiSettings)
    semantic: SemanticSettings | None = None
    #: Client model names (exact, or `*`/`?` patterns such as `claude-*`) → a model or deployment name;
    #: exact configured names win, then exact aliases, then the most specific pattern (routing/aliases.py).
    aliases: dict[str, str] = field(default_factory=dict)
    #: Named guardrail sets (docs/guardrails.md); models name them in `guardrails:`, keys in their metadata.
    guardrails: dict[str, list[CheckSpec]] = field(default_factory=dict)
    #: An acceptance-results file (`modelyard accept --write-quality`), relative to this config file: each
    #: deployment's per-task pass rate becomes its quality for that task (over `quality`) and its verdict its
    #: `acceptance` (config/quality_file.py). Read at load (and at each reload).
    quality_from: str | None = None
    #: A price table file (the shipped table's JSON shape, `{"models": {"vendor/model": {...}}}`), relative
    #: to this config file, read at load and at each reload: an operator's job can refresh it and reload
    #: (docs/operations.md). It replaces the shipped table; a deployment's own `price:` still wins.
    prices_from: str | None = None
    #: Where the config came from, for messages; not part of the YAML.
    source: str = "<memory>"

    def deployment(self, name: str) -> Deployment | None:
        for dep in self.deployments:
            if dep.name == name:
                return dep
        return None
