"""The default price table and the resolver: config price wins, dated ids alias to their family,
other vendors' models behind OpenAI-compatible endpoints are found, unknown models stay unknown."""

from __future__ import annotations

import pytest

from modelyard.accounting.price_table import PriceTable, resolve_price, unpriced
from modelyard.config.model import Deployment, Price

TABLE = PriceTable.load()


SONNET = Price(input=3.0, cache_write=3.75, cached_input=0.3, output=15.0)
OPUS = Price(input=15.0, cache_write=18.75, cached_input=1.5, output=75.0)


def dep(provider: str, model: str, **extra: object) -> Deployment:
    return Deployment(name=f"{model}@{provider}", provider=provider, model=model, **extra)  # type: ignore[arg-type]


def test_table_is_dated_versioned_and_sourced() -> None:
    assert TABLE.version >= 1
    assert len(TABLE.date) == 10 and TABLE.date[4] == "-"
    assert set(TABLE.source) == {
        "openai",
        "anthropic",
        "google",
        "mistral",
        "deepseek",
        "amazon",
        "meta",
        "cohere",
        "voyage",
    }
    vendors = {key.partition("/")[0] for key in TABLE.prices}
    assert vendors == set(TABLE.source)  # every vendor in the table says where its prices come from


@pytest.mark.parametrize(
    ("provider", "model", "expected"),
    [
        ("openai", "gpt-4o", Price(input=2.5, cached_input=1.25, output=10.0)),
        ("openai", "gpt-4o-2024-08-06", Price(input=2.5, cached_input=1.25, output=10.0)),
        ("openai", "gpt-4o-mini-2024-07-18", Price(input=0.15, cached_input=0.075, output=0.6)),
        ("openai", "o3-mini-2025-01-31", Price(input=1.1, cached_input=0.55, output=4.4)),
        ("openai", "gpt-4.1-2025-04-14", Price(input=2.0, cached_input=0.5, output=8.0)),
        ("openai", "gpt-3.5-turbo-0125", Price(input=0.5, output=1.5)),
        ("anthropic", "claude-3-5-sonnet-20241022", SONNET),
        ("anthropic", "claude-sonnet-4-20250514", SONNET),
        ("anthropic", "claude-3-7-sonnet-latest", SONNET),
        ("anthropic", "claude-opus-4-1-20250805", OPUS),
        ("anthropic", "claude-haiku-4.5", Price(input=1.0, cache_write=1.25, cached_input=0.1, output=5.0)),
        ("gemini", "gemini-2.5-flash", Price(input=0.3, cached_input=0.03, output=2.5)),
        ("gemini", "gemini-2.5-flash-preview-05-20", Price(input=0.3, cached_input=0.03, output=2.5)),
        ("gemini", "models/gemini-1.5-pro-002", Price(input=1.25, cached_input=0.3125, output=5.0)),
        ("openai", "deepseek-chat", Price(input=0.28, cached_input=0.028, output=0.42)),
        ("openai", "mistral-large-2411", Price(input=2.0, output=6.0)),
        ("openai", "mistral-large-latest", Price(input=2.0, output=6.0)),
        ("openai", "deepseek/deepseek-reasoner", Price(input=0.28, cached_input=0.028, output=0.42)),
    ],
)
def test_known_models_resolve(provider: str, model: str, expected: Price) -> None:
    assert TABLE.resolve(dep(provider, model)) == expected


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("openai", "sim-large"),
        ("openai", "my-finetune"),
        ("anthropic", "claude-9"),
        ("gemini", "text-embedding-004"),
    ],
)
def test_unknown_models_stay_unknown(provider: str, model: str) -> None:
    assert TABLE.resolve(dep(provider, model)) is None


def test_config_price_wins_over_the_table() -> None:
    own = Price(input=1.0, output=2.0)
    assert resolve_price(dep("openai", "gpt-4o", price=own)) is own
    assert resolve_price(dep("openai", "gpt-4o"), TABLE) == TABLE.prices["openai/gpt-4o"]


def test_price_model_option_names_the_table_entry() -> None:
    hosted = dep("openai", "my-vllm-llama", options={"price_model": "openai/gpt-4o-mini"})
    assert TABLE.resolve(hosted) == TABLE.prices["openai/gpt-4o-mini"]


def test_vendor_of_the_provider_is_preferred() -> None:
    table = PriceTable.from_dict(
        {"models": {"openai/shared": {"input": 1, "output": 1}, "mistral/shared": {"input": 2, "output": 2}}}
    )
    assert table.resolve(dep("openai", "shared")) == Price(input=1, output=1)
    assert table.resolve(dep("gemini", "shared")) is None  # ambiguous and not Google's: unknown, not a guess


def test_unpriced_lists_the_deployments_without_a_price() -> None:
    deps = [dep("openai", "gpt-4o"), dep("openai", "sim-small")]
    prices = {d.name: TABLE.resolve(d) for d in deps}
    assert unpriced(deps, prices) == ["sim-small@openai"]


def test_bad_tables_are_rejected() -> None:
    with pytest.raises(ValueError):
        PriceTable.from_dict({"version": 1})
    with pytest.raises(ValueError):
        PriceTable.from_dict({"models": {"gpt-4o": {"input": 1, "output": 1}}})


@pytest.mark.parametrize(
    ("provider", "model", "expected"),
    [
        ("bedrock", "us.anthropic.claude-3-5-sonnet-20241022-v2:0", {"input": 3.0, "output": 15.0}),
        ("bedrock", "anthropic.claude-3-haiku-20240307-v1:0", {"input": 0.25, "output": 1.25}),
        (
            "bedrock",
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/global.anthropic.claude-sonnet-4-5-20250929-v1:0",
            {"input": 3.0, "output": 15.0},
        ),
        ("bedrock", "eu.amazon.nova-lite-v1:0", {"input": 0.06, "output": 0.24}),
        ("bedrock", "meta.llama3-1-70b-instruct-v1:0", {"input": 0.72, "output": 0.72}),
        ("bedrock", "mistral.mistral-large-2407-v1:0", {"input": 2.0, "output": 6.0}),
        ("vertex_anthropic", "claude-sonnet-4@20250514", {"input": 3.0, "output": 15.0}),
        ("vertex_anthropic", "claude-3-5-sonnet-v2@20241022", {"input": 3.0, "output": 15.0}),
        ("vertex", "gemini-2.5-flash", {"input": 0.3, "output": 2.5}),
        ("azure", "gpt-4o-2024-08-06", {"input": 2.5, "output": 10.0}),
        ("openai", "whisper-1", {"audio_minute": 0.006}),
        ("openai", "tts-1-hd", {"characters": 30.0}),
        ("openai", "dall-e-3", {"image": 0.04}),
        ("cohere", "rerank-v3.5", {"search_unit": 2.0}),
        ("voyage", "rerank-2-lite", {"input": 0.02}),
    ],
)
def test_cloud_and_media_model_ids_find_their_price(provider: str, model: str, expected: dict[str, float]) -> None:
    """Bedrock's profile, vendor and version decorations, ARNs, Vertex's `@date` ids and the non-chat models."""
    options = {"bedrock": {"region": "us-east-1"}, "vertex": {"project": "p"}, "vertex_anthropic": {"project": "p"}}
    price = PriceTable.load().resolve(
        Deployment(name="d", provider=provider, model=model, options=options.get(provider))
    )
    assert price is not None
    assert {key: getattr(price, key) for key in expected} == expected
