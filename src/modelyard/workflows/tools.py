"""Tool steps: resolving `call: package.module:function`, and a few built-in tools for non-model work.

A tool module is imported normally; if it is not importable, a `module.py` beside the workflow file is
loaded instead, so a workflow can ship its own helpers without being installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from modelyard.config.imports import CallableImportError, import_callable


def resolve_callable(ref: str, base_dir: Path | None = None) -> Callable[..., Any]:
    """The function named by `module:function`, or from `module.py` beside the workflow when the module is
    not installed; raises CallableImportError saying what is missing."""
    return import_callable(ref, fallback=lambda name: _load_local(name, base_dir))


def _load_local(module_name: str, base_dir: Path | None) -> ModuleType:
    file = (base_dir or Path.cwd()) / (module_name.replace(".", "/") + ".py")
    if not file.is_file():
        raise CallableImportError(f"cannot import {module_name} (not installed, and no {file})")
    key = f"modelyard_workflow_local.{file.resolve().as_posix().replace('/', '_').replace('.', '_')}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, file)
    if spec is None or spec.loader is None:
        raise CallableImportError(f"cannot load {file}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise CallableImportError(f"loading {file} failed: {type(exc).__name__}: {exc}") from None
    sys.modules[key] = module
    return module


# --------------------------------------------------------------------------- built-in tools


def _path(path: str, base: str | None) -> Path:
    file = Path(path)
    return file if file.is_absolute() or not base else Path(base) / file


def read_lines(path: str, base: str | None = None, limit: int | None = None, skip_blank: bool = True) -> list[str]:
    """The lines of a text file (stripped; blank and # lines dropped), to fan out over as items.

    A relative `path` is read from `base` when given (pass `{{ workflow.dir }}` for the workflow's folder).
    """
    lines = [line.strip() for line in _path(path, base).read_text(encoding="utf-8").splitlines()]
    if skip_blank:
        lines = [line for line in lines if line and not line.startswith("#")]
    return lines[:limit] if limit is not None else lines


def read_text(path: str, base: str | None = None, max_chars: int | None = None) -> str:
    """A text file's content, optionally cut to `max_chars`."""
    text = _path(path, base).read_text(encoding="utf-8")
    return text[:max_chars] if max_chars is not None else text


def read_json(path: str, base: str | None = None) -> Any:
    return json.loads(_path(path, base).read_text(encoding="utf-8"))


def count_by(items: list[Any], field: str | None = None) -> dict[str, int]:
    """How many items have each value (of `field`, for dict items), most common first."""
    counts: dict[str, int] = {}
    for item in items:
        value = item.get(field) if field and isinstance(item, dict) else item
        counts[str(value)] = counts.get(str(value), 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
