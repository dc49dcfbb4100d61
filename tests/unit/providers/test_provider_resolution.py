"""`provider:` resolves to an adapter class (built-in name, entry point, or `module:Class`), and `options:`
become that adapter's typed Struct once, when the Deployment is built: from YAML with `file:line` errors,
and from code (tests, demos, embedders) through the same rule."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import Any, ClassVar

import msgspec
import pytest

from modelyard.config import providers as registry
from modelyard.config.loader import ConfigError, parse_config
from modelyard.config.model import Deployment
from modelyard.config.providers import AdapterConfigError, adapter_class, bind_options
from modelyard.providers import load_adapter
from modelyard.providers.anthropic import AnthropicAdapter, AnthropicOptions
from modelyard.providers.gemini import GeminiAdapter, GeminiOptions
from modelyard.providers.openai import OpenAIAdapter, OpenAIOptions
from modelyard.schema.errors import ModelyardError
from tests.plugins.acme_adapter import AcmeAdapter, AcmeOptions

ACME = "tests.plugins.acme_adapter:AcmeAdapter"
HERE = __name__


class NoOptions:
    """Has the six methods but no `options_type`."""

    name: ClassVar[str] = "no-options"

    def chat_call(self, *args: Any) -> Any: ...
    def parse_chat(self, *args: Any) -> Any: ...
    def stream_translator(self, *args: Any) -> Any: ...
    def error(self, *args: Any) -> Any: ...
    def embeddings_call(self, *args: Any) -> Any: ...
    def parse_embeddings(self, *args: Any) -> Any: ...


class DictOptions(NoOptions):
    options_type: ClassVar[Any] = dict


class HalfAnAdapter:
    options_type: ClassVar[type[msgspec.Struct]] = AcmeOptions

    def chat_call(self, *args: Any) -> Any: ...


@pytest.mark.parametrize(
    ("provider", "cls", "options"),
    [
        ("openai", OpenAIAdapter, OpenAIOptions),
        ("anthropic", AnthropicAdapter, AnthropicOptions),
        ("gemini", GeminiAdapter, GeminiOptions),
        (ACME, AcmeAdapter, AcmeOptions),
    ],
)
def test_every_form_of_provider_resolves_to_its_class_and_options(provider: str, cls: type, options: type) -> None:
    assert adapter_class(provider) is cls
    assert type(load_adapter(provider)) is cls
    dep = Deployment(name="d", provider=provider, model="m")
    assert dep.options == options()  # no options: the Struct's defaults, typed


def test_an_installed_entry_point_names_an_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    point = EntryPoint(name="acme", value=ACME, group=registry.ENTRY_POINT_GROUP)

    def fake_entry_points(*, group: str) -> list[EntryPoint]:
        return [point] if group == registry.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    assert adapter_class("acme") is AcmeAdapter
    config = parse_config(
        "deployments:\n  - {name: a, provider: acme, model: m, options: {tone: formal}}\nmodels: {}\n", source="c.yaml"
    )
    assert config.deployments[0].options == AcmeOptions(tone="formal")


@pytest.mark.parametrize(
    ("provider", "needle"),
    [
        (
            "openia",
            "unknown provider 'openia': one of openai, anthropic, gemini, azure, bedrock, vertex, vertex_anthropic, "
            "cohere, jina, voyage, an installed 'modelyard.providers'",
        ),
        ("tests.plugins.nowhere:Adapter", "cannot import 'tests.plugins.nowhere'"),
        ("tests.plugins.acme_adapter:Nope", "'tests.plugins.acme_adapter:Nope' names nothing"),
        ("tests.plugins.acme_adapter:PATH", "names a str, not a class"),
        (f"{HERE}:HalfAnAdapter", "is not an adapter: it lacks parse_chat, stream_translator, error, embeddings_call"),
        (f"{HERE}:NoOptions", "its `options_type` must be a msgspec Struct class"),
        (f"{HERE}:DictOptions", "its `options_type` must be a msgspec Struct class"),
        (":AcmeAdapter", "is not 'package.module:ClassName'"),
        ("tests.plugins.acme_adapter:", "is not 'package.module:ClassName'"),
    ],
)
def test_a_provider_that_names_no_adapter_says_why(provider: str, needle: str) -> None:
    with pytest.raises(AdapterConfigError) as info:
        adapter_class(provider)
    assert needle in info.value.message
    assert info.value.key == "provider"
    assert isinstance(info.value, ModelyardError)
    with pytest.raises(ConfigError) as loaded:
        parse_config(f"deployments:\n  - name: a\n    provider: '{provider}'\n    model: m\n", source="c.yaml")
    assert str(loaded.value).startswith(f"c.yaml:3: deployments[0].provider: {info.value.message}")


BASE = "deployments:\n  - name: a\n    provider: {provider}\n    model: m\n    options:\n      {option}\n"


@pytest.mark.parametrize(
    ("provider", "option", "expected"),
    [
        ("openai", "stream_usag: false", "options.stream_usag: Object contains unknown field `stream_usag`"),
        ("openai", "max_tokens_field: max_token", "options.max_tokens_field: Invalid enum value 'max_token'"),
        ("anthropic", "samplng: false", "options.samplng: Object contains unknown field `samplng`"),
        ("anthropic", "api_version: june", "options.api_version: Expected `str` matching regex"),
        ("anthropic", "api_version: 2023-06-01", "options.api_version: Expected `str`, got `date` (quote it"),
        ("anthropic", "beta: [1, 2]", "options.beta[0]: Expected `str`, got `int`"),
        ("gemini", "thinking_budget: 1024", "options.thinking_budget: Object contains unknown field"),
        ("gemini", "task_type: retrieval query", "options.task_type: Expected `str` matching regex"),
        ("gemini", "safety_settings: {a: b}", "options.safety_settings: Expected `array | null`, got `object`"),
        (ACME, "default_budget: 0", "options.default_budget: Expected `int` >= 1"),
    ],
)
def test_a_mistake_in_any_adapters_options_is_a_file_line_error(provider: str, option: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE.format(provider=provider, option=option), source="c.yaml")
    assert str(info.value).startswith(f"c.yaml:6: deployments[0].{expected}"), str(info.value)


def test_options_given_as_the_struct_itself_are_kept_and_the_wrong_struct_is_refused() -> None:
    options = OpenAIOptions(stream_usage=False)
    assert Deployment(name="d", provider="openai", model="m", options=options).options is options
    with pytest.raises(AdapterConfigError, match="expected a mapping or AnthropicOptions, got OpenAIOptions"):
        Deployment(name="d", provider="anthropic", model="m", options=options)


def test_options_built_in_code_are_checked_like_the_yaml() -> None:
    dep = Deployment(name="d", provider="gemini", model="m", options={"thought_signatures": False})
    assert dep.options == GeminiOptions(thought_signatures=False)
    with pytest.raises(AdapterConfigError) as info:
        Deployment(name="d", provider="openai", model="m", options={"stream_usag": False})
    assert info.value.key == "options.stream_usag"
    assert str(info.value) == "options.stream_usag: Object contains unknown field `stream_usag`"
    with pytest.raises(AdapterConfigError, match=r"options\.tone: Invalid enum value 'loud'"):
        bind_options(ACME, {"tone": "loud"})


def test_price_model_is_an_option_every_built_in_adapter_takes() -> None:
    for provider in ("openai", "anthropic", "gemini"):
        dep = Deployment(name="d", provider=provider, model="m", options={"price_model": "openai/gpt-4o-mini"})
        assert dep.options.price_model == "openai/gpt-4o-mini"


@pytest.mark.parametrize(
    ("provider", "kind", "says"),
    [
        ("anthropic", "speech", "provider 'anthropic' does not serve /v1/audio/speech (kind: speech)"),
        ("gemini", "image", "provider 'gemini' does not serve /v1/images/generations (kind: image)"),
        (ACME, "rerank", "does not serve /v1/rerank (kind: rerank)"),
    ],
)
def test_a_kind_the_adapter_does_not_serve_is_a_file_line_error(provider: str, kind: str, says: str) -> None:
    """A deployment of a non-chat kind needs an adapter with that endpoint: refused at load, at its `kind:` line."""
    text = f"deployments:\n  - name: a\n    provider: '{provider}'\n    model: m\n    kind: {kind}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="c.yaml")
    assert str(info.value).startswith("c.yaml:5: deployments[0].kind: "), str(info.value)
    assert says in str(info.value)
