"""The default price table (a dated, versioned data file) and the resolver that prices a deployment.

A deployment's own `price:` always wins. Otherwise the table is searched by vendor and model id, with
dated or versioned ids reduced to their family (`gpt-4o-2024-08-06` → `gpt-4o`,
`claude-3-5-sonnet-20241022` → `claude-3-5-sonnet`, `mistral-large-2411` → `mistral-large`). A model
the table does not know resolves to None: the gateway warns at start and exports it in /metrics rather
than pretend the calls were free.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec

from modelyard.config.model import Deployment, Price
from modelyard.config.providers import ProviderOptions

#: Which table vendors a wire-format provider may mean (an OpenAI-compatible server may be anyone).
_VENDORS_BY_PROVIDER: dict[str, tuple[str, ...]] = {
    "openai": ("openai",),
    "anthropic": ("anthropic",),
    "gemini": ("google",),
    "azure": ("openai",),
    "bedrock": ("anthropic", "amazon", "meta", "mistral", "cohere"),
    "vertex": ("google",),
    "vertex_anthropic": ("anthropic",),
    "cohere": ("cohere",),
    "jina": ("jina",),
    "voyage": ("voyage",),
}
#: Bedrock's cross-region inference profile prefixes (`us.anthropic.claude-…`, `global.amazon.nova-…`).
_BEDROCK_REGION_PREFIXES = ("us.", "eu.", "apac.", "global.", "us-gov.", "jp.", "au.", "ca.")
#: Bedrock's model-id vendor prefixes (`anthropic.claude-…`, `meta.llama3-…`) → the table's vendor.
_BEDROCK_VENDORS = {
    "anthropic": "anthropic",
    "amazon": "amazon",
    "meta": "meta",
    "mistral": "mistral",
    "cohere": "cohere",
}

#: Suffixes that name a snapshot of a model rather than another model, tried one at a time.
_SNAPSHOT_SUFFIXES = (
    re.compile(r"-v\d+(:\d+)?$"),  # bedrock: anthropic.claude-3-haiku-20240307-v1:0
    re.compile(r"-\d{4}-\d{2}-\d{2}$"),  # openai: gpt-4o-2024-08-06
    re.compile(r"-\d{8}$"),  # anthropic: claude-sonnet-4-20250514
    re.compile(r"-latest$"),  # anthropic, mistral: *-latest
    re.compile(r"-preview(-\d{2}-\d{2}|-\d{4})?$"),  # google: gemini-2.5-flash-preview-05-20
    re.compile(r"-exp(-\d{4})?$"),  # google: gemini-2.0-flash-exp
    re.compile(r"-\d{3}$"),  # google: gemini-1.5-pro-002
    re.compile(r"-\d{4}$"),  # mistral: mistral-large-2411; openai: gpt-3.5-turbo-0125
)
_DOTTED_VERSION = re.compile(r"(\d)\.(\d)")


@dataclass(frozen=True, slots=True)
class PriceTable:
    """Prices by `vendor/model`, with the table's version, date and sources."""

    prices: dict[str, Price]
    version: int = 0
    date: str = ""
    source: dict[str, str] = field(default_factory=dict)
    _by_model: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PriceTable:
        models = data.get("models")
        if not isinstance(models, dict):
            raise ValueError("a price table needs a `models` mapping of vendor/model to prices")
        prices: dict[str, Price] = {}
        by_model: dict[str, list[str]] = {}
        for key, entry in models.items():
            vendor, _, model = str(key).lower().partition("/")
            if not model:
                raise ValueError(f"price table key {key!r} must be vendor/model")
            try:  # converted, not constructed: the file's numbers are checked (finite, not negative)
                prices[f"{vendor}/{model}"] = msgspec.convert(entry, Price)
            except msgspec.ValidationError as exc:
                raise ValueError(f"price table entry {key!r}: {exc}") from None
            by_model.setdefault(model, []).append(vendor)
        source = data.get("source") or {}
        return cls(
            prices,
            int(data.get("version") or 0),
            str(data.get("date") or ""),
            dict(source) if isinstance(source, dict) else {"all": str(source)},
            by_model,
        )

    @classmethod
    def load(cls, path: str | Path | None = None) -> PriceTable:
        """The table at `path`, or the one shipped with modelyard."""
        if path is None:
            data = resources.files("modelyard.accounting").joinpath("prices/default_prices.json")
            text = data.read_text("utf-8")
        else:
            text = Path(path).read_text(encoding="utf-8")
        return cls.from_dict(json.loads(text))

    def lookup(self, model: str, vendors: tuple[str, ...] = ()) -> Price | None:
        """The price of `model` (optionally `vendor/model`), preferring `vendors`; None when unknown."""
        name = model.strip().lower().removeprefix("models/")
        if name.startswith("arn:"):  # a Bedrock inference profile or foundation-model ARN: the id is its last part
            name = name.rpartition("/")[2]
        if "/" in name:
            vendor, _, bare = name.rpartition("/")
            vendors = (vendor.rpartition("/")[2], *vendors)
            name = bare
        name, vendor_hint = _bedrock_id(name)
        if vendor_hint is not None:
            vendors = (vendor_hint, *vendors)
        name = name.partition("@")[0]  # Vertex's Claude ids: claude-sonnet-4@20250514
        for candidate in _family_names(name):
            price = self._find(candidate, vendors)
            if price is not None:
                return price
        return None

    def _find(self, model: str, vendors: tuple[str, ...]) -> Price | None:
        for vendor in vendors:
            price = self.prices.get(f"{vendor}/{model}")
            if price is not None:
                return price
        owners = self._by_model.get(model, ())
        if len(owners) == 1:  # an OpenAI-compatible deployment of another vendor's model (deepseek-chat)
            return self.prices[f"{owners[0]}/{model}"]
        return None

    def resolve(self, dep: Deployment) -> Price | None:
        """The deployment's own price, else the table's for its model, else None."""
        if dep.price is not None:
            return dep.price
        options = dep.options
        model = (options.price_model if isinstance(options, ProviderOptions) else None) or dep.model
        return self.lookup(model, _VENDORS_BY_PROVIDER.get(dep.provider, ()))


def _bedrock_id(name: str) -> tuple[str, str | None]:
    """A Bedrock model id without its region profile and vendor prefixes, and that vendor
    (`us.anthropic.claude-3-5-sonnet-20241022-v2:0` → `claude-3-5-sonnet-20241022-v2:0`, anthropic)."""
    for prefix in _BEDROCK_REGION_PREFIXES:
        if name.startswith(prefix) and name[len(prefix) :].partition(".")[0] in _BEDROCK_VENDORS:
            name = name[len(prefix) :]
            break
    vendor, dot, rest = name.partition(".")
    if dot and vendor in _BEDROCK_VENDORS and rest:
        return rest, _BEDROCK_VENDORS[vendor]
    return name, None


def _family_names(name: str) -> list[str]:
    """`name`, then `name` with snapshot suffixes stripped one by one (most specific first)."""
    names = [name]
    current = name
    changed = True
    while changed:
        changed = False
        for suffix in _SNAPSHOT_SUFFIXES:
            stripped = suffix.sub("", current)
            if stripped != current and stripped:
                current = stripped
                names.append(current)
                changed = True
                break
    dashed = [_DOTTED_VERSION.sub(r"\1-\2", n) for n in names]  # claude-sonnet-4.5 → claude-sonnet-4-5
    names.extend(n for n in dashed if n not in names)
    return names


def resolve_price(dep: Deployment, table: PriceTable | None = None) -> Price | None:
    """Price of one deployment: its config `price` wins, else the default table (by provider + model)."""
    if dep.price is not None:
        return dep.price
    return (table or PriceTable.load()).resolve(dep)


def unpriced(deployments: list[Deployment], prices: dict[str, Price | None]) -> list[str]:
    """Names of the chat/embedding deployments whose price is unknown (cost reported as 0 for them)."""
    return [dep.name for dep in deployments if prices.get(dep.name) is None]
