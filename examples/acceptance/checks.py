"""A `python:` assertion of the example suite: the answer must be valid Python (parsed, never executed)."""

from __future__ import annotations

import ast
from typing import Any


def parses(text: str, context: dict[str, Any]) -> bool | str:
    """True when the answer (a ```python fence allowed) parses as Python; otherwise the syntax error."""
    code = text.strip()
    if code.startswith("```"):
        code = code.split("\n", 1)[1] if "\n" in code else ""
        code = code.rsplit("```", 1)[0]
    try:
        ast.parse(code)
    except SyntaxError as exc:
        return f"not valid Python: {exc.msg} (line {exc.lineno})"
    return True
