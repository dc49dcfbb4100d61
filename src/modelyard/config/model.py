"""Typed configuration: deployments (where a model runs) and models (the names clients ask for).

Plain msgspec Structs so the YAML is validated in one `msgspec.convert` call, with errors that name the
path of the bad key; `config.loader` turns that path into a file and line.
"""

from __future__ import annotations

from typing import Any, Literal

from msgspec import Struct, field

ProviderName = Literal["openai", "anthropic", "gemini"]
Capability = Literal["tools", "vision", "json_object", "json_schema", "streaming", "audio", "reasoning"]


class Price(Struct, kw_only=True, forbid_unknown_fields=True):
    """USD per 1M tokens. `cached_input`/`cache_write` default to `input` when the provider has none."""

    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None
    cache_write: float | None = None
    reasoning: float | None = None


class Limits(Struct, kw_only=True, forbid_unknown_fields=True):
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None


class Timeouts(Struct, kw_only=True, forbid_unknown_fields=True):
    """Seconds. `first_token` bounds the wait for response headers and, when streaming, the first event."""

    connect: float = 5.0
    first_token: float = 60.0
    total: float = 600.0


class Deployment(Struct, kw_only=True, forbid_unknown_fields=True):
    """One model at one provider endpoint, with its price, limits and capabilities."""

    name: str
    provider: ProviderName
    model: str
    api_base: str | None = None
    api_key: str | None = None
    kind: Literal["chat", "embedding"] = "chat"
    price: Price | None = None
    context_window: int | None = None
    max_output_tokens: int | None = None
    capabilities: list[Capability] = field(
        default_factory=lambda: ["tools", "vision", "json_object", "json_schema", "streaming"]
    )
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)
    quality: float | dict[str, float] | None = None
    weight: float = 1.0
    tier: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    #: Provider-specific switches, e.g. {"stream_usage": false} for OpenAI-compatible servers that reject
    #: `stream_options`, or {"api_version": "2023-06-01"} for Anthropic.
    options: dict[str, Any] = field(default_factory=dict)

    def has(self, capability: str) -> bool:
        return capability in self.capabilities

    def quality_for(self, task: str | None) -> float | None:
        if self.quality is None or isinstance(self.quality, float | int):
            return None if self.quality is None else float(self.quality)
        if task is not None and task in self.quality:
            return self.quality[task]
        return self.quality.get("default")


class ModelGroup(Struct, kw_only=True, forbid_unknown_fields=True):
    """A name clients ask for: its candidate deployments, how to choose among them, where to fall back."""

    candidates: list[str]
    strategy: str = "priority"
    fallbacks: list[str] = field(default_factory=list)
    constraints: dict[str, Any] = field(default_factory=dict)
    rules: list[dict[str, Any]] = field(default_factory=list)
    hedge_after_ms: float | str | None = None
    retries: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


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
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    seed: int | None = None


class ServerSettings(Struct, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 4000
    max_body_bytes: int = 10 * 1024 * 1024
    master_key: str | None = None


class Config(Struct, kw_only=True, forbid_unknown_fields=True):
    deployments: list[Deployment]
    models: dict[str, ModelGroup] = field(default_factory=dict)
    server: ServerSettings = field(default_factory=ServerSettings)
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    #: Where the config came from, for messages; not part of the YAML.
    source: str = "<memory>"

    def deployment(self, name: str) -> Deployment | None:
        for dep in self.deployments:
            if dep.name == name:
                return dep
        return None
