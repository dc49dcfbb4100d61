"""Provider adapters, one module per wire format, looked up by the deployment's `provider`.

`provider` is a built-in name, an installed `modelyard.providers` entry point or `"package.module:Class"`;
`config.providers` resolves every form (at config load, so a bad name is a `file:line` error there).
"""

from __future__ import annotations

from modelyard.config.providers import adapter_class
from modelyard.providers.base import Adapter

__all__ = [
    "load_adapter",
    "load_adapters",
]


def load_adapter(provider: str) -> Adapter:
    """A fresh adapter instance for `provider` (adapters are stateless; callers keep their own)."""
    adapter: Adapter = adapter_class(provider)()
    return adapter


def load_adapters(providers: set[str]) -> dict[str, Adapter]:
    return {name: load_adapter(name) for name in sorted(providers)}
