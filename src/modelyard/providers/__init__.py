"""Provider adapters, one module per wire format, looked up by the deployment's `provider` name."""

from __future__ import annotations

from importlib import import_module

from modelyard.providers.base import Adapter

#: provider name → "module:class". A new OpenAI-compatible vendor is config (api_base), not an entry here.
ADAPTER_PATHS: dict[str, str] = {
    "openai": "modelyard.providers.openai:OpenAIAdapter",
    "anthropic": "modelyard.providers.anthropic:AnthropicAdapter",
    "gemini": "modelyard.providers.gemini:GeminiAdapter",
}


def load_adapter(provider: str) -> Adapter:
    """A fresh adapter instance for `provider` (adapters are stateless; callers keep their own)."""
    try:
        path = ADAPTER_PATHS[provider]
    except KeyError:
        raise ValueError(f"unknown provider {provider!r} (one of {', '.join(ADAPTER_PATHS)})") from None
    module_name, _, class_name = path.partition(":")
    adapter: Adapter = getattr(import_module(module_name), class_name)()
    return adapter


def load_adapters(providers: set[str]) -> dict[str, Adapter]:
    return {name: load_adapter(name) for name in sorted(providers)}
