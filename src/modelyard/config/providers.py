"""Which adapter a deployment's `provider:` names, and its `options:` as that adapter's typed Struct.

`provider:` is a built-in name (`openai`, `anthropic`, `gemini`), the name of an installed plugin (entry-point
group `modelyard.providers`), or a `"package.module:ClassName"` path to any adapter class. Every form is
resolved to a class through `importlib`, so this module (the config layer) never imports `providers/`
statically: the layer table forbids it, since the adapters themselves import config. The class declares
its options as `options_type`, a msgspec Struct, and each deployment's `options:` mapping is converted into
it once, when the Deployment is built: a typo is an error at load (`file:line: key: unknown field`), and an
adapter reads its options by attribute on the hot path with no per-request conversion.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

import msgspec

from modelyard.schema.endpoints import ENDPOINT_KINDS
from modelyard.schema.errors import ModelyardError

#: Built-in provider name → "module:class" (strings: resolved on use, see the module docstring).
#: A new OpenAI-compatible vendor is config (`api_base`), not an entry here.
BUILTIN_ADAPTERS: dict[str, str] = {
    "openai": "modelyard.providers.openai:OpenAIAdapter",
    "anthropic": "modelyard.providers.anthropic:AnthropicAdapter",
    "gemini": "modelyard.providers.gemini:GeminiAdapter",
    "azure": "modelyard.providers.azure:AzureAdapter",
    "bedrock": "modelyard.providers.bedrock:BedrockAdapter",
    "vertex": "modelyard.providers.vertex:VertexGeminiAdapter",
    "vertex_anthropic": "modelyard.providers.vertex:VertexAnthropicAdapter",
    "cohere": "modelyard.providers.rerank:CohereAdapter",
    "jina": "modelyard.providers.rerank:JinaAdapter",
    "voyage": "modelyard.providers.rerank:VoyageAdapter",
}
#: The names of the built-in providers, for messages and docs.
BUILTIN_PROVIDERS: tuple[str, ...] = tuple(BUILTIN_ADAPTERS)
#: The entry-point group an installed package registers its adapters in (name = "module:Class").
ENTRY_POINT_GROUP = "modelyard.providers"
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]+)`")
#: The methods every adapter has (the contract of `providers.base.Adapter`).
ADAPTER_METHODS: tuple[str, ...] = (
    "chat_call",
    "parse_chat",
    "stream_translator",
    "error",
    "embeddings_call",
    "parse_embeddings",
)


class AdapterConfigError(ModelyardError, ValueError):
    """`provider:` names no usable adapter class, or `options:` do not fit its options Struct.

    `key` is the path below the deployment that is wrong, as msgspec writes it (`provider`, `options`,
    `options.sampling`), so the loader can point at its line.
    """

    def __init__(self, message: str, key: str = "provider") -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


class ProviderOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What every built-in adapter's options share; an outside adapter's options may subclass it.

    `price_model` names the price-table entry of a self-hosted model (`openai/gpt-4o-mini`); the price table
    reads it from any options Struct derived from this one.
    """

    price_model: str | None = None


def adapter_class(provider: str) -> type[Any]:
    """The adapter class `provider` names; raises AdapterConfigError saying why not."""
    path = BUILTIN_ADAPTERS.get(provider)
    if path is None:
        path = provider if ":" in provider else _plugin_path(provider)
    if path is None:
        raise AdapterConfigError(
            f"unknown provider {provider!r}: one of {', '.join(BUILTIN_PROVIDERS)}, an installed "
            f"{ENTRY_POINT_GROUP!r} entry point, or 'package.module:ClassName'"
        )
    return _import_adapter(path)


def _plugin_path(name: str) -> str | None:
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name == name:
            return str(point.value)
    return None


def _import_adapter(path: str) -> type[Any]:
    module_name, _, class_name = path.partition(":")
    if not module_name or not class_name:
        raise AdapterConfigError(f"{path!r} is not 'package.module:ClassName'")
    try:
        module = import_module(module_name)
    except ImportError as exc:
        raise AdapterConfigError(f"cannot import {module_name!r} for {path!r}: {exc}") from None
    found = getattr(module, class_name, None)
    if not inspect.isclass(found):
        what = "nothing" if found is None else f"a {type(found).__name__}, not a class"
        raise AdapterConfigError(f"{path!r} names {what}")
    missing = [method for method in ADAPTER_METHODS if not callable(getattr(found, method, None))]
    if missing:
        raise AdapterConfigError(f"{path!r} is not an adapter: it lacks {', '.join(missing)}")
    options_type = getattr(found, "options_type", None)
    if not (inspect.isclass(options_type) and issubclass(options_type, msgspec.Struct)):
        raise AdapterConfigError(f"{path!r} is not an adapter: its `options_type` must be a msgspec Struct class")
    return found


def options_type_of(provider: str) -> type[msgspec.Struct]:
    """The options Struct of the adapter `provider` names."""
    options_type: type[msgspec.Struct] = adapter_class(provider).options_type
    return options_type


def bind_options(provider: str, options: Any) -> msgspec.Struct:
    """`options` as the adapter's options Struct: a mapping (or None) is converted, a Struct of that type kept.

    Raises AdapterConfigError for an unknown provider, options of the wrong type, or a field that does not fit.
    """
    options_type = options_type_of(provider)
    if type(options) is options_type:
        return options
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise AdapterConfigError(
            f"expected a mapping or {options_type.__name__}, got {type(options).__name__}", key="options"
        )
    try:
        converted: msgspec.Struct = msgspec.convert(dict(options), options_type, strict=False)
    except msgspec.ValidationError as exc:
        message, located, where = str(exc).rpartition(" - at `$")
        if not located:
            message, where = str(exc), ""
        where = where.rstrip("`")
        unknown = _UNKNOWN_FIELD.search(message)
        if unknown:
            where = f"{where}.{unknown.group(1)}"
        if message.startswith("Expected `str`, got `date"):
            message += " (quote it: YAML reads an unquoted 2023-06-01 as a date)"
        raise AdapterConfigError(message, key="options" + where) from None
    return converted


def _check_kind_served(provider: str, kind: object) -> None:
    """A deployment of a non-chat kind (`rerank`, `speech`, …) needs an adapter that serves one of its endpoints
    (the `Endpoints` capability's `endpoints`): found at load, not at the first request."""
    if not isinstance(kind, str):
        return
    paths = {path for path, served_by in ENDPOINT_KINDS.items() if served_by == kind}
    if not paths:
        return
    served: frozenset[str] = getattr(adapter_class(provider), "endpoints", frozenset())
    if not paths & set(served):
        wanted = " or ".join(f"/v1/{path}" for path in sorted(paths))
        raise AdapterConfigError(f"provider {provider!r} does not serve {wanted} (kind: {kind})", key="kind")


def bind_deployment_options(
    data: dict[str, Any], marks: dict[tuple[str | int, ...], int], source: str, errors: list[Any]
) -> None:
    """The loader's step before validation: resolve each deployment's provider and convert its `options:`
    in place, so an error points at its own key's line (`file:line: deployments[0].options.sampl: ...`).
    Each problem is appended to `errors` (a ConfigError) and the deployment's options dropped, so the rest of
    the file is still checked and `modelyard check` lists every mistake at once.

    Entries msgspec will reject anyway (not a mapping, a provider that is not a string) are left to it.
    """
    from modelyard.config.loader import ConfigError, format_path, line_for, parse_path

    deployments = data.get("deployments")
    if not isinstance(deployments, list):
        return
    for i, entry in enumerate(deployments):
        if not isinstance(entry, dict) or not isinstance(entry.get("provider"), str):
            continue
        try:
            entry["options"] = bind_options(entry["provider"], entry.get("options"))
            _check_kind_served(entry["provider"], entry.get("kind"))
        except AdapterConfigError as exc:
            path = ("deployments", i, *parse_path("$." + exc.key))
            errors.append(ConfigError(exc.message, source=source, line=line_for(path, marks), key=format_path(path)))
            entry.pop("options", None)
            if exc.key == "provider":
                entry["provider"] = BUILTIN_PROVIDERS[0]  # checked already: keep the rest of the entry checkable
