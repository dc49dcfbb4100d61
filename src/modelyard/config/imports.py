"""`package.module:function` in a config, a workflow or a suite, imported the one way (guardrail `python:`
checks, workflow tools, acceptance `python:` assertions, workflow backend factories)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

from modelyard.schema.errors import ModelyardError


class CallableImportError(ModelyardError, ValueError):
    """The reference cannot be imported, or names no function; the message says what is missing."""


def import_callable(ref: str, *, fallback: Callable[[str], ModuleType] | None = None) -> Callable[..., Any]:
    """The function `ref` names. `fallback(module_name)` loads a module that is not installed (workflows find
    a `module.py` beside their file); it is asked only when the named module itself is missing, not when
    something the module imports is."""
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if fallback is None or exc.name is None or not module_name.startswith(exc.name):
            raise CallableImportError(f"importing {module_name} failed: {exc}") from None
        module = fallback(module_name)
    except Exception as exc:
        raise CallableImportError(f"importing {module_name} failed: {type(exc).__name__}: {exc}") from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise CallableImportError(f"{module_name} has no function {attr!r}")
    return function  # type: ignore[no-any-return]
