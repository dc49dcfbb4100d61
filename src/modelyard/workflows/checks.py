"""What makes a workflow file invalid, found before anything runs.

Two passes: `structural_issues` checks the YAML against the exported JSON Schema (types, unknown keys,
the format version) and `semantic_issues` checks what a schema cannot: references between steps, cycles,
the names each template reads (a template may only read what its step declares), output schemas.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator, SchemaError, ValidationError
from jsonschema.validators import validator_for

from modelyard.config.imports import CallableImportError
from modelyard.workflows import include
from modelyard.workflows.approval_checks import check_approval
from modelyard.workflows.graph import find_cycle
from modelyard.workflows.issues import Issue
from modelyard.workflows.schema import SCHEMA_VERSION, workflow_json_schema
from modelyard.workflows.source import Source
from modelyard.workflows.templates import TemplateEngine, TemplateError
from modelyard.workflows.tools import resolve_callable

if TYPE_CHECKING:
    from modelyard.workflows.spec import StepSpec, WorkflowSpec

RESERVED_NAMES = frozenset({"inputs", "workflow", "item", "item_index", "iteration", "loop", "self"})
#: Keys that only mean something for some kinds of step; elsewhere they would be silently ignored.
_ONLY_FOR: dict[str, frozenset[str]] = {
    "system": frozenset({"model"}),
    "temperature": frozenset({"model"}),
    "max_tokens": frozenset({"model"}),
    "task": frozenset({"model"}),
    "route": frozenset({"model"}),
    "args": frozenset({"tool"}),
    "foreach": frozenset({"model", "tool", "workflow"}),
    "max_parallel": frozenset({"model", "tool", "workflow"}),
    "inputs": frozenset({"workflow"}),
    "retries": frozenset({"model", "tool"}),
    "timeout": frozenset({"model", "tool"}),
}
#: Attributes a template may use on any dict-valued output without the schema declaring them.
_DICT_METHODS = frozenset({"items", "keys", "values", "get"})

# --------------------------------------------------------------------------- structure (JSON Schema)


def structural_issues(source: Source) -> list[Issue]:
    issues = [
        Issue(source.name, line, f"duplicate key '{path[-1]}'", _step_of(path)) for path, line in source.duplicates
    ]
    if not isinstance(source.data, dict):
        return [*issues, Issue(source.name, 1, "a workflow is a YAML mapping (name, steps, ...)")]
    validator = Draft202012Validator(workflow_json_schema())
    for error in validator.iter_errors(source.data):
        issues.append(_schema_issue(source, error))
    return issues


def _schema_issue(source: Source, error: ValidationError) -> Issue:
    path = tuple(error.absolute_path)
    line = source.lines.line(path)
    keyword = error.validator
    if keyword == "additionalProperties":
        extra = _unexpected_key(error)
        if extra is not None:
            line = source.lines.line((*path, extra))
            known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
            hint = difflib.get_close_matches(extra, list(known), n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            return Issue(source.name, line, f"unknown key '{extra}'{suggestion}", _step_of(path))
    return Issue(source.name, line, _schema_message(path, error), _step_of(path))


def _unexpected_key(error: ValidationError) -> str | None:
    allowed = set(error.schema.get("properties", {})) if isinstance(error.schema, dict) else set()
    if isinstance(error.instance, dict):
        for key in error.instance:
            if key not in allowed:
                return str(key)
    return None


def _schema_message(path: tuple[Any, ...], error: ValidationError) -> str:
    keyword, where = error.validator, _dotted(path)
    if path == ("schema",):
        return f"unsupported format {error.instance!r}: this modelyard reads `schema: {SCHEMA_VERSION}`"
    if keyword == "required" and "'schema'" in error.message:
        return f"missing `schema: {SCHEMA_VERSION}` (the workflow format version)"
    if keyword == "oneOf" and _is_step_path(path):
        return "a step has exactly one of `model` (with `prompt`), `call` (a tool), `loop`, `approve` or `workflow`"
    if keyword == "oneOf" and len(path) == 2 and path[0] == "inputs":
        return "an input is a type name (string, number, ...) or a mapping {type, default, description, enum}"
    if keyword == "oneOf" and path[-1:] == ("foreach",):
        return 'foreach is a template ("{{ step.list }}") or a YAML list'
    if keyword == "dependentRequired":
        return "a model step needs both `model` and `prompt`"
    if keyword == "propertyNames" or (keyword == "pattern" and path[-2:-1] != ("call",)):
        return f"'{error.instance}' is not a valid name: use letters, digits and _, not starting with a digit"
    return f"{where}: {error.message}" if where else error.message


def _is_step_path(path: tuple[Any, ...]) -> bool:
    return len(path) >= 2 and path[-2] == "steps"


def _dotted(path: Iterable[Any]) -> str:
    return ".".join(str(p) for p in path)


def _step_of(path: tuple[Any, ...]) -> str | None:
    names: list[str] = []
    for index, part in enumerate(path[:-1]):
        if part == "steps" and (index == 0 or path[index - 1] == "loop"):
            names.append(str(path[index + 1]))
    return ".".join(names) or None


# --------------------------------------------------------------------------- semantics


@dataclass(frozen=True)
class _Scope:
    """What one step's templates may see, and which names exist elsewhere (for good messages)."""

    visible: frozenset[str]
    siblings: frozenset[str]
    elsewhere: frozenset[str]


class _Checker:
    def __init__(self, spec: WorkflowSpec) -> None:
        self.spec = spec
        self.engine = TemplateEngine()
        self.issues: list[Issue] = []
        self.all_names = frozenset(_qualnames(spec.steps))
        self.by_id: dict[str, StepSpec] = dict(spec.steps)

    def add(self, line: int, message: str, step: StepSpec | None = None) -> None:
        self.issues.append(Issue(self.spec.source, line, message, step.qualname if step else None))

    def run(self) -> list[Issue]:
        self.check_graph(self.spec.steps, outer_needs=None)
        self.check_outputs()
        self.check_report()
        return self.issues

    def check_graph(self, steps: dict[str, StepSpec], outer_needs: frozenset[str] | None) -> None:
        siblings = frozenset(steps)
        for step in steps.values():
            self.check_step(step, siblings, outer_needs)
        deps = {sid: [d for d in step.needs if d in siblings and d != sid] for sid, step in steps.items()}
        cycle = find_cycle(deps)
        if cycle:
            first = steps[cycle[0]]
            self.add(first.line, "dependency cycle: " + " -> ".join(cycle), first)

    def check_step(self, step: StepSpec, siblings: frozenset[str], outer: frozenset[str] | None) -> None:
        if step.id in RESERVED_NAMES:
            self.add(step.line, f"'{step.id}' is a reserved name; call the step something else", step)
        allowed = siblings | (outer or frozenset())
        if outer is not None and step.id in outer:
            self.add(step.line, f"'{step.id}' is also the name of a step this loop needs; rename one", step)
        self.check_keys(step)
        for index, need in enumerate(step.needs):
            line = self.spec.lines.line((*step.path, "needs", index))
            if need == step.id:
                self.add(line, "a step cannot need itself", step)
            elif need not in allowed:
                self.add(line, _unknown_need(need, siblings, outer), step)
        self.check_templates(step, siblings)
        self.check_output_schema(step)
        if step.next is not None and not step.successors:
            line = self.spec.lines.line((*step.path, "next"))
            self.add(line, "`next` chooses among the steps that need this one, and no step needs it", step)
        if step.call is not None:
            try:
                resolve_callable(step.call, self.spec.base_dir)
            except CallableImportError as exc:
                self.add(self.spec.lines.line((*step.path, "call")), f"tool {step.call}: {exc}", step)
        if step.loop is not None:
            self.check_graph(step.loop.steps, outer_needs=frozenset(step.needs))
        if step.workflow is not None:
            self.issues.extend(include.input_issues(self.spec, step))

    def check_keys(self, step: StepSpec) -> None:
        raw = self._raw(step)
        for key, kinds in _ONLY_FOR.items():
            if key in raw and step.kind not in kinds:
                line = self.spec.lines.line((*step.path, key))
                where = " and ".join(f"{k} steps" for k in sorted(kinds))
                self.add(line, f"`{key}` applies to {where}, not to a {step.kind} step", step)

    def _raw(self, step: StepSpec) -> dict[str, Any]:
        """The step's mapping as written (to tell a key that is absent from one set to its default)."""
        node: Any = self.spec.raw
        for part in step.path:
            node = node[part]
        return node if isinstance(node, dict) else {}

    def check_templates(self, step: StepSpec, siblings: frozenset[str]) -> None:
        in_loop = "." in step.qualname
        base = {"inputs", "workflow", *step.needs} | ({"iteration"} if in_loop else set())
        fanned = base | ({"item", "item_index"} if step.foreach is not None else set())
        scope = _Scope(frozenset(fanned), siblings, self.all_names)
        once = _Scope(frozenset(base), siblings, self.all_names)
        fields: list[tuple[str, Any, _Scope]] = [
            ("prompt", step.prompt, scope),
            ("system", step.system, scope),
            ("foreach", step.foreach, once),
            ("when", step.when, once),
        ]
        for field, value, field_scope in fields:
            if isinstance(value, str):
                self.check_template(step, (*step.path, field), value, field_scope)
        for path, value in _strings(step.args, (*step.path, "args")):
            self.check_template(step, path, value, scope)
        if step.next is not None:  # `next` also reads the step's own output, by its id
            own = _Scope(frozenset({*base, step.id}), siblings, self.all_names)
            self.check_template(step, (*step.path, "next"), step.next, own)
        if step.approve is not None:
            check_approval(self, step, once)
        for path, value in _strings(step.workflow.inputs if step.workflow else {}, (*step.path, "inputs")):
            self.check_template(step, path, value, scope)
        if step.loop is not None and isinstance(step.loop.until, str):
            body = frozenset(step.loop.steps)
            names = frozenset({"inputs", "workflow", "iteration", *step.needs} | body)
            until_scope = _Scope(names, body, self.all_names)
            self.check_template(step, (*step.path, "loop", "until"), step.loop.until, until_scope)

    def check_template(self, step: StepSpec | None, path: tuple[Any, ...], text: str, scope: _Scope) -> None:
        first_line = self.spec.lines.text_line(path)
        try:
            refs = self.engine.references(text)
        except TemplateError as exc:
            self.add(first_line + (exc.line or 1) - 1, f"template syntax: {exc.message}", step)
            return
        visible = scope.visible | self.engine.global_names
        for name, lineno in refs.names.items():
            if name not in visible:
                self.add(first_line + lineno - 1, _unknown_name(name, path[-1], scope), step)
        if "inputs" in visible:
            for field, lineno in refs.input_fields.items():
                if field not in self.spec.inputs:
                    declared = ", ".join(self.spec.inputs) or "none"
                    self.add(first_line + lineno - 1, f"unknown input '{field}' (declared: {declared})", step)
        for name, attr, lineno in refs.attributes:
            problem = self.attribute_problem(step, name, attr) if name in visible else None
            if problem:
                self.add(first_line + lineno - 1, problem, step)

    def attribute_problem(self, step: StepSpec | None, name: str, attr: str) -> str | None:
        target = self._lookup(step, name)
        if target is None or attr in _DICT_METHODS:
            return None
        if target.workflow is not None:
            return include.output_problem(target, attr)
        if target.loop is not None and attr not in target.loop.steps:
            return f"loop '{name}' has no step '{attr}' (its steps: {', '.join(target.loop.steps)})"
        schema = target.output_schema
        if isinstance(schema, dict) and isinstance(schema.get("properties"), dict):
            fields = schema["properties"]
            if attr not in fields:
                return f"'{name}' has no field '{attr}' in its output schema (fields: {', '.join(fields)})"
        return None

    def _lookup(self, step: StepSpec | None, name: str) -> StepSpec | None:
        if step is not None and "." in step.qualname:
            for candidate in _walk(self.spec.steps):
                parent = step.qualname.rsplit(".", 1)[0]
                if candidate.qualname == f"{parent}.{name}":
                    return candidate
        return self.by_id.get(name)

    def check_output_schema(self, step: StepSpec) -> None:
        schema = step.output_schema
        if schema is None or isinstance(schema, bool):
            return
        self.check_schema(schema, (*step.path, "output", "schema"), "output.schema", step)
        if step.kind != "model":
            line = self.spec.lines.line((*step.path, "output"))
            self.add(line, "`output.schema` applies to model steps", step)

    def check_schema(self, schema: Any, path: tuple[Any, ...], what: str, step: StepSpec | None) -> None:
        """A declared JSON Schema must itself be valid: the problem at its own line."""
        if schema is None or isinstance(schema, bool):
            return
        try:
            validator_for(schema).check_schema(schema)
        except SchemaError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "top level"
            line = self.spec.lines.line((*path, *exc.absolute_path))
            self.add(line, f"{what} is not a valid JSON Schema ({where}): {exc.message}", step)

    def check_outputs(self) -> None:
        top = frozenset(self.spec.steps)
        scope = _Scope(frozenset({"inputs", "workflow"} | top), top, self.all_names)
        raw = (self.spec.raw or {}).get("outputs") if isinstance(self.spec.raw, dict) else None
        for name, text in self.spec.outputs.items():
            typed = isinstance(raw, dict) and isinstance(raw.get(name), dict)
            self.check_template(None, ("outputs", name, "value") if typed else ("outputs", name), text, scope)
        for name, schema in self.spec.output_schemas.items():
            self.check_schema(schema, ("outputs", name, "schema"), f"outputs.{name}.schema", None)

    def check_report(self) -> None:
        tasks = self.spec.report.tasks_step
        if tasks is None:
            return
        line = self.spec.lines.line(("report", "tasks_step"))
        step = self.spec.steps.get(tasks)
        if step is None:
            self.add(line, f"report.tasks_step names unknown step '{tasks}'")
        elif step.foreach is None:
            self.add(line, f"report.tasks_step '{tasks}' is not a fan-out (`foreach`) step")


def _unknown_need(need: str, siblings: frozenset[str], outer: frozenset[str] | None) -> str:
    if outer is not None:
        return f"needs '{need}', which is neither a step of this loop nor one of the loop's own needs"
    hint = difflib.get_close_matches(need, list(siblings), n=1)
    return f"needs unknown step '{need}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")


def _unknown_name(name: str, field: Any, scope: _Scope) -> str:
    if name in ("item", "item_index"):
        where = "in `foreach`/`when` themselves" if field in ("foreach", "when") else "without `foreach`"
        return f"'{name}' is only defined for each item of a fan-out, not {where}"
    if name == "iteration":
        return "'iteration' is only defined inside a loop"
    if name in scope.siblings:
        return f"the template reads step '{name}' but the step does not list it in `needs`"
    if name in scope.elsewhere or any(q.endswith(f".{name}") for q in scope.elsewhere):
        return f"step '{name}' is not visible here (it belongs to another scope; read it through `needs`)"
    return f"unknown name '{name}' (not an input, a needed step, `item` or `iteration`)"


def _strings(value: Any, path: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, (*path, index))


def _walk(steps: dict[str, StepSpec]) -> Iterator[StepSpec]:
    for step in steps.values():
        yield step
        if step.loop is not None:
            yield from _walk(step.loop.steps)


def _qualnames(steps: dict[str, StepSpec]) -> Iterator[str]:
    for step in _walk(steps):
        yield step.qualname


def semantic_issues(spec: WorkflowSpec) -> list[Issue]:
    return _Checker(spec).run()
