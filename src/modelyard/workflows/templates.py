"""Jinja2 rendering in a sandbox, with context scoping.

A step's templates are rendered against a context that holds only what the step declared (`inputs`, the
outputs of its `needs`, `item` in a fan-out, `iteration` in a loop), with `StrictUndefined`: a template
cannot reach, or silently drop, data it did not declare. The same parser finds the names a template uses
so that `spec` can reject undeclared references before anything runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from jinja2 import ChainableUndefined, StrictUndefined, TemplateSyntaxError, nodes
from jinja2.environment import Template
from jinja2.meta import find_undeclared_variables
from jinja2.sandbox import ImmutableSandboxedEnvironment

from modelyard.schema.errors import ModelyardError

#: A template that is exactly one `{{ expression }}` is evaluated to its native value (list, dict, bool).
_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\{\{|\}\}).)*)\}\}\s*$", re.DOTALL)
_FALSE_WORDS = frozenset({"", "false", "no", "0", "none", "null", "off"})


class TemplateError(ModelyardError):
    """A template failed to parse or render; `line` is relative to the template's first line."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


def _finalize(value: Any) -> Any:
    """How values print inside text: structures as JSON, None as nothing (a skipped step)."""
    if value is None:
        return ""
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, ensure_ascii=False, default=str)
    return value


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent, default=str)


@dataclass
class References:
    """What a template reads: top-level names, `inputs.X` fields, and `step.field` accesses."""

    names: dict[str, int] = field(default_factory=dict)
    input_fields: dict[str, int] = field(default_factory=dict)
    attributes: list[tuple[str, str, int]] = field(default_factory=list)


class TemplateEngine:
    """A sandboxed Jinja2 environment with a cache of compiled templates (one per workflow run)."""

    def __init__(self) -> None:
        self.env = ImmutableSandboxedEnvironment(
            undefined=StrictUndefined, autoescape=False, finalize=_finalize, keep_trailing_newline=True
        )
        self.env.filters["tojson"] = _tojson
        self._templates: dict[str, Template] = {}
        self._expressions: dict[str, Any] = {}
        #: Stands for step data that is left out: every attribute, item, loop and filter on it is empty.
        self.hollow = ChainableUndefined(name="left out")

    @property
    def global_names(self) -> frozenset[str]:
        return frozenset(self.env.globals)

    def render(self, source: str, context: dict[str, Any]) -> str:
        template = self._templates.get(source)
        try:
            if template is None:
                template = self._templates[source] = self.env.from_string(source)
            return template.render(context)
        except TemplateSyntaxError as exc:
            raise TemplateError(exc.message or str(exc), exc.lineno) from None
        except Exception as exc:  # undefined names, sandbox violations, filter errors
            raise TemplateError(_describe(exc)) from None

    def render_hollow(self, source: str, context: dict[str, Any], left_out: Iterable[str]) -> str:
        """The template's own text with the names in `left_out` rendered as nothing.

        Rendering a prompt with its step data left out (inputs kept) measures its instructions apart from
        the data it carries, for the pass-everything comparison. Uses the same compiled template.
        """
        return self.render(source, {**context, **dict.fromkeys(left_out, self.hollow)})

    def evaluate(self, source: Any, context: dict[str, Any]) -> Any:
        """The value of a template: native for a lone `{{ expr }}`, text otherwise; non-strings as is."""
        if not isinstance(source, str):
            return source
        match = _SINGLE_EXPRESSION.match(source)
        if match is None:
            return self.render(source, context)
        expr = match.group("expr")
        compiled = self._expressions.get(expr)
        try:
            if compiled is None:
                compiled = self.env.compile_expression(expr, undefined_to_none=False)
                self._expressions[expr] = compiled
            value = compiled(**context)
        except TemplateSyntaxError as exc:
            raise TemplateError(exc.message or str(exc), exc.lineno) from None
        except Exception as exc:
            raise TemplateError(_describe(exc)) from None
        if isinstance(value, StrictUndefined):
            raise TemplateError(f"'{expr.strip()}' is undefined")
        return value

    def truthy(self, source: Any, context: dict[str, Any]) -> bool:
        value = self.evaluate(source, context)
        if isinstance(value, str):
            return value.strip().lower() not in _FALSE_WORDS
        return bool(value)

    def references(self, source: str) -> References:
        """Names the template reads; raises TemplateError on a syntax error."""
        try:
            ast = self.env.parse(source)
        except TemplateSyntaxError as exc:
            raise TemplateError(exc.message or str(exc), exc.lineno) from None
        refs = References()
        undeclared = find_undeclared_variables(ast)
        for name_node in ast.find_all(nodes.Name):
            if name_node.ctx == "load" and name_node.name in undeclared:
                refs.names.setdefault(name_node.name, name_node.lineno)
        for getattr_node in ast.find_all(nodes.Getattr):
            target = getattr_node.node
            if isinstance(target, nodes.Name) and target.name in undeclared:
                _add_attribute(refs, target.name, getattr_node.attr, getattr_node.lineno)
        for getitem_node in ast.find_all(nodes.Getitem):
            target, arg = getitem_node.node, getitem_node.arg
            if not isinstance(target, nodes.Name) or target.name not in undeclared:
                continue
            if isinstance(arg, nodes.Const) and isinstance(arg.value, str):
                _add_attribute(refs, target.name, arg.value, getitem_node.lineno)
        return refs


def _add_attribute(refs: References, name: str, attr: str, line: int) -> None:
    if name == "inputs":
        refs.input_fields.setdefault(attr, line)
    else:
        refs.attributes.append((name, attr, line))


def _describe(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if type(exc).__name__ in text else f"{type(exc).__name__}: {text}"
