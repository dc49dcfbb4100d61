"""The simulated fleet: which models the simulator serves, how fast, how well, and how they fail.

A fleet is plain YAML validated into msgspec Structs in one `convert` call, so a bad key or value is
reported with its path (``models[1].ttft_ms.p95``) and the file it came from::

    seed: 7
    api_key: null            # optional: require this key on every model request
    answer_keys: [suite.yaml]  # optional: acceptance suites whose cases the models answer (sim/answer_keys.py)
    models:
      - name: sim-large
        price: {input: 5.0, output: 15.0}      # USD per 1M tokens (the gateway's config can refer to it)
        quality: 0.9                           # accuracy on answer keys; or per task: {default: 0.9, extraction: 0.6}
        context_window: 128000                 # longer prompts get each provider's context-length error
        ttft_ms: {p50: 400, p95: 900}          # lognormal time to first token; or a fixed number
        tokens_per_second: 60                  # pacing of the answer; 0 = instant
        output_tokens: {min: 20, max: 120}     # uniform; or a fixed number; capped by max_tokens
        reasoning_tokens: 0                    # reported reasoning tokens (a number or {min, max})
        cache_hit_rate: 0.0                    # chance a request reports 3/4 of its prompt as cached
        faults: {rate_limit: 0.0, retry_after_s: 1, server_error: 0.0, unavailable: 0.0, hang: 0.0,
                 hang_s: 300, reset: 0.0, malformed: 0.0, cut_stream: 0.0}
        rate_limit: {rpm: 600, tpm: 200000, burst_s: 60}  # optional: token buckets (sim/rate_limits.py)
      - name: sim-embed
        kind: embedding
        dimensions: 384

Without a file the simulator serves `default_fleet.yaml`, shipped beside this module.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml
from msgspec import Meta, Struct, field

from modelyard.config.model import Price
from modelyard.schema.errors import ModelyardError

FAULT_NAMES: tuple[str, ...] = (
    "rate_limit",
    "server_error",
    "unavailable",
    "hang",
    "reset",
    "malformed",
    "cut_stream",
)


class FleetError(ModelyardError, ValueError):
    """A fleet file or fleet change that does not validate; the message names the source and the path."""


class Latency(Struct, kw_only=True, forbid_unknown_fields=True):
    """Milliseconds, lognormal: half the requests under `p50`, 95% under `p95` (defaults to `p50`)."""

    p50: float
    p95: float | None = None

    def __post_init__(self) -> None:
        if self.p50 < 0:
            raise ValueError("p50 must be >= 0")
        if self.p95 is not None and self.p95 < self.p50:
            raise ValueError("p95 must be >= p50")


class TokenRange(Struct, kw_only=True, forbid_unknown_fields=True):
    """A uniform draw of whole tokens in [min, max]."""

    min: int
    max: int

    def __post_init__(self) -> None:
        if self.min < 0 or self.max < self.min:
            raise ValueError("need 0 <= min <= max")


class Faults(Struct, kw_only=True, forbid_unknown_fields=True):
    """Per-request probabilities of each failure; at most one fault hits a request (they sum to <= 1)."""

    rate_limit: float = 0.0
    server_error: float = 0.0
    unavailable: float = 0.0
    hang: float = 0.0
    reset: float = 0.0
    malformed: float = 0.0
    cut_stream: float = 0.0
    #: The `Retry-After` seconds sent with a rate-limit answer.
    retry_after_s: float = 1.0
    #: How long a hanging request waits for the client to give up before the connection is dropped.
    hang_s: float = 300.0

    def __post_init__(self) -> None:
        total = 0.0
        for name in FAULT_NAMES:
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"fault rate `{name}` must be within [0, 1], got {rate}")
            total += rate
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault rates add up to {total:g}; at most one fault hits a request")
        if self.retry_after_s < 0 or self.hang_s < 0:
            raise ValueError("retry_after_s and hang_s must be >= 0")

    def rates(self) -> tuple[float, ...]:
        """The fault rates in `FAULT_NAMES` order."""
        return tuple(getattr(self, name) for name in FAULT_NAMES)


class RateLimit(Struct, kw_only=True, forbid_unknown_fields=True):
    """A provider's per-model limits as continuously refilled token buckets (sim/rate_limits.py): `rpm`
    requests and `tpm` tokens (prompt + max_tokens) per minute, each bucket `burst_s` seconds of its rate deep
    (60: a whole minute's worth at once when idle; 1: paced per second). None: no limit of that kind."""

    rpm: Annotated[int, Meta(gt=0)] | None = None
    tpm: Annotated[int, Meta(gt=0)] | None = None
    burst_s: Annotated[float, Meta(gt=0)] = 60.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.burst_s):
            raise ValueError("burst_s must be a finite number of seconds")


def _default_output() -> TokenRange:
    return TokenRange(min=20, max=120)


class SimModel(Struct, kw_only=True, forbid_unknown_fields=True):
    """One simulated model: served on the OpenAI, Anthropic and Gemini wire formats alike."""

    name: str
    #: `transcription`, `speech`, `image`, `rerank`: served by the media routes (sim/media.py, media_rerank.py).
    kind: Literal["chat", "embedding", "transcription", "speech", "image", "rerank"] = "chat"
    price: Price | None = None
    quality: float | dict[str, float] | None = None
    context_window: int = 128_000
    ttft_ms: float | Latency = 0.0
    tokens_per_second: float = 0.0
    output_tokens: int | TokenRange = field(default_factory=_default_output)
    reasoning_tokens: int | TokenRange = 0
    cache_hit_rate: float = 0.0
    dimensions: int = 384
    faults: Faults = field(default_factory=Faults)
    #: Requests beyond it get the wire's 429 with `retry-after` computed from the bucket; None: unlimited.
    rate_limit: RateLimit | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a model needs a name")
        if isinstance(self.ttft_ms, float | int) and self.ttft_ms < 0:
            raise ValueError("ttft_ms must be >= 0")
        if self.tokens_per_second < 0:
            raise ValueError("tokens_per_second must be >= 0 (0 = instant)")
        if isinstance(self.output_tokens, int) and self.output_tokens < 0:
            raise ValueError("output_tokens must be >= 0")
        if isinstance(self.reasoning_tokens, int) and self.reasoning_tokens < 0:
            raise ValueError("reasoning_tokens must be >= 0")
        if not 0.0 <= self.cache_hit_rate <= 1.0:
            raise ValueError("cache_hit_rate must be within [0, 1]")
        if self.dimensions < 1 or self.context_window < 1:
            raise ValueError("dimensions and context_window must be >= 1")
        for value in self.quality.values() if isinstance(self.quality, dict) else (self.quality,):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError("quality (an accuracy) must be within [0, 1]")

    def most_output_tokens(self) -> int:
        """The longest answer this model draws: what a request without `max_tokens` reserves against TPM."""
        out = self.output_tokens
        return out if isinstance(out, int) else out.max

    def accuracy(self, task: str | None) -> float:
        """The chance this model gives an answer key's reference for `task`: `quality` (a number, or per task
        with a `default`); 1.0 when the model has no quality, or none for that task and no default."""
        quality = self.quality
        if quality is None:
            return 1.0
        if not isinstance(quality, dict):
            return float(quality)
        value = quality.get(task) if task is not None else None
        if value is None:
            value = quality.get("default")
        return 1.0 if value is None else float(value)


class Fleet(Struct, kw_only=True, forbid_unknown_fields=True):
    """The models the simulator serves, the seed of every random draw, and an optional required key."""

    models: list[SimModel]
    seed: int = 0
    api_key: str | None = None
    #: Acceptance suite files whose cases the models answer right with their `quality` as accuracy
    #: (sim/answer_keys.py); relative to the fleet file when loaded from one.
    answer_keys: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for model in self.models:
            if model.name in seen:
                raise ValueError(f"model `{model.name}` is listed twice")
            seen.add(model.name)

    def model(self, name: str) -> SimModel | None:
        for model in self.models:
            if model.name == name:
                return model
        return None

    def instant(self) -> Fleet:
        """The same fleet with no latency at all: what most tests want."""
        models = [msgspec.structs.replace(m, ttft_ms=0.0, tokens_per_second=0.0) for m in self.models]
        return msgspec.structs.replace(self, models=models)


def fleet_from_dict(data: Any, source: str = "<memory>") -> Fleet:
    """Validate a decoded fleet document; raises FleetError naming `source` and the bad path."""
    if not isinstance(data, dict):
        raise FleetError(f"{source}: a fleet is a mapping with a `models` list")
    try:
        return msgspec.convert(data, Fleet, strict=False)
    except msgspec.ValidationError as exc:
        raise FleetError(f"{source}: {_readable(str(exc))}") from None


def load_fleet(path: str | Path) -> Fleet:
    """Read and validate a fleet YAML file."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise FleetError(f"{path}: not valid YAML: {exc}") from None
    fleet = fleet_from_dict(data, str(path))
    if fleet.answer_keys:
        base = Path(path).parent
        fleet.answer_keys = [str(base / key) for key in fleet.answer_keys]
    return fleet


def default_fleet() -> Fleet:
    """The built-in fleet (`default_fleet.yaml`): sim-large, sim-medium, sim-small and sim-embed."""
    text = resources.files("modelyard.sim").joinpath("default_fleet.yaml").read_text(encoding="utf-8")
    return fleet_from_dict(yaml.safe_load(text), "default_fleet.yaml")


def patch_model(model: SimModel, changes: Any) -> SimModel:
    """`model` with `changes` merged in (faults and rate_limit merge key by key; `"rate_limit": null` removes
    the limit); raises FleetError when invalid."""
    if not isinstance(changes, dict):
        raise FleetError('a model change is a JSON object, e.g. {"faults": {"rate_limit": 0.3}}')
    if "name" in changes and changes["name"] != model.name:
        raise FleetError("a model cannot be renamed")
    current = msgspec.to_builtins(model)
    merged = {**current, **changes}
    if isinstance(changes.get("faults"), dict):
        merged["faults"] = {**current.get("faults", {}), **changes["faults"]}
    if isinstance(changes.get("rate_limit"), dict):
        merged["rate_limit"] = {**(current.get("rate_limit") or {}), **changes["rate_limit"]}
    try:
        return msgspec.convert(merged, SimModel, strict=False)
    except msgspec.ValidationError as exc:
        raise FleetError(f"model `{model.name}`: {_readable(str(exc))}") from None


def _readable(message: str) -> str:
    """msgspec says `$.models[0].ttft_ms`; people read `models[0].ttft_ms`."""
    return message.replace("`$.", "`").replace("`$`", "the document")
