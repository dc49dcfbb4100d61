"""modelyard: a self-hosted LLM gateway, router and workflow engine.

`modelyard.create_app(config)` builds the gateway (an ASGI app). It is imported on first use, so importing
a small part of the package (its schema, its config) does not load the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelyard.schema.errors import ModelyardError

if TYPE_CHECKING:
    from modelyard.server.factory import create_app

__version__ = "0.1.0"
__all__ = ["ModelyardError", "__version__", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from modelyard.server.factory import create_app

        return create_app
    raise AttributeError(f"module 'modelyard' has no attribute {name!r}")
