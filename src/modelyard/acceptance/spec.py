"""An acceptance suite file as typed, validated data.

A suite is YAML (`schema: modelyard.acceptance/v1`) converted into the msgspec Structs below in one pass
with the config loader's line marks, so every problem is reported as `file:line: key: message`. What a
Struct cannot check (one assertion kind per entry, RE2 patterns, JSON Schemas, importable `python:`
functions, unique case ids, files that exist) is checked after conversion, at the line of the key.
`suite_json_schema()` is the exported JSON Schema (`docs/acceptance.schema.json`, kept equal by a test).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from modelyard.acceptance.matchers import compile_regex, schema_problem
from modelyard.acceptance.request import case_body
from modelyard.config.imports import CallableImportError
from modelyard.config.loader import (
    ConfigError,
    ConfigErrors,
    Marks,
    convert_with_marks,
    format_path,
    line_for,
    load_yaml_with_marks,
    parse_path,
)
from modelyard.schema.chat import ChatRequest
from modelyard.workflows.tools import resolve_callable

SCHEMA_VERSION = "modelyard.acceptance/v1"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
CALL_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$"
Name = Annotated[str, Meta(pattern=NAME_PATTERN, max_length=128)]
Rate = Annotated[float, Meta(ge=0.0, le=1.0)]
Positive = Annotated[float, Meta(gt=0.0)]

#: The assertion kinds, in the order a case's report lists them.
KINDS: tuple[str, ...] = (
    "contains",
    "not_contains",
    "regex",
    "equals",
    "json_schema",
    "is_json",
    "max_tokens",
    "max_latency_ms",
    "max_cost_usd",
    "tool_call",
    "similar",
    "judge",
    "python",
)


class ToolCallCheck(Struct, kw_only=True, forbid_unknown_fields=True):
    """The answer calls tool `name`, and its arguments match `arguments` (a JSON Schema) when given."""

    name: str
    arguments: dict[str, Any] | None = None


class SimilarCheck(Struct, kw_only=True, forbid_unknown_fields=True):
    """MiniLM cosine between the answer and `to` (default: the case's `reference`) is at least `threshold`."""

    threshold: Annotated[float, Meta(ge=-1.0, le=1.0)] = 0.8
    to: str | None = None


class JudgeCheck(Struct, kw_only=True, forbid_unknown_fields=True):
    """Another model grades the answer against `rubric` and must say PASS; its cost is counted."""

    rubric: str
    model: str | None = None  # default: the suite's `judge_model`, else its route


class Assertion(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Exactly one of these keys per entry (`- contains: refund`)."""

    contains: str | list[str] | None = None
    not_contains: str | list[str] | None = None
    regex: str | None = None
    equals: str | None = None
    json_schema: dict[str, Any] | bool | None = None
    is_json: bool | None = None
    max_tokens: Annotated[int, Meta(ge=0)] | None = None
    max_latency_ms: Positive | None = None
    max_cost_usd: Annotated[float, Meta(ge=0.0)] | None = None
    tool_call: ToolCallCheck | None = None
    similar: SimilarCheck | float | None = None
    judge: JudgeCheck | str | None = None
    python: Annotated[str, Meta(pattern=CALL_PATTERN)] | None = None
    #: `equals`/`contains`/`not_contains` ignore case when false.
    case_sensitive: bool = True

    @property
    def kind(self) -> str:
        """The one assertion key set (validated at load)."""
        for name in KINDS:
            if getattr(self, name) is not None:
                return name
        return ""


class CaseSpec(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """One prompt (or message list) and what its answer must satisfy."""

    id: Name
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    system: str | None = None
    #: The ideal answer: `similar` compares with it; the simulator answers it with its model's accuracy.
    reference: str | None = None
    #: Simulator only: the plausible wrong answer.
    wrong: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    #: Named `assert` in the file (a Python keyword).
    asserts: list[Assertion] = msgspec.field(default_factory=list, name="assert")


class TaskSpec(Struct, kw_only=True, forbid_unknown_fields=True):
    """The cases of one task; a model is accepted for the task when its pass rate reaches `min_pass_rate`."""

    cases: Annotated[list[CaseSpec], Meta(min_length=1)]
    min_pass_rate: Rate = 0.9
    description: str = ""


class SuiteSpec(Struct, kw_only=True, forbid_unknown_fields=True):
    """The whole file."""

    schema: str
    name: Name
    route: str | None = None
    tasks: Annotated[dict[str, TaskSpec], Meta(min_length=1)]
    description: str = ""
    config: str | None = None
    simulator: str | None = None
    judge_model: str | None = None


@dataclass(frozen=True)
class Suite:
    """A loaded suite: the spec, where it came from, and the functions its `python:` checks name."""

    spec: SuiteSpec
    source: str
    functions: dict[str, Callable[..., Any]] = field(default_factory=dict)

    @property
    def base_dir(self) -> Path:
        return Path(self.source).resolve().parent

    def path_of(self, relative: str | None) -> Path | None:
        """A path written in the suite, resolved against the suite's directory."""
        return None if relative is None else self.base_dir / relative

    @property
    def case_count(self) -> int:
        return sum(len(task.cases) for task in self.spec.tasks.values())


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file; raises ConfigError (or ConfigErrors) at `file:line`."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the suite: {exc.strerror or exc}", source=str(path)) from None
    return parse_suite(text, str(path))


def parse_suite(text: str, source: str = "<suite>") -> Suite:
    """Validate suite YAML text; `source` names the file in messages and anchors relative paths."""
    data, marks = load_yaml_with_marks(text, source=source, env={})
    if not isinstance(data, dict):
        raise ConfigError("a suite is a mapping with `schema:`, `name:` and `tasks:`", source=source, line=1)
    version = data.get("schema")
    if version != SCHEMA_VERSION:
        line = line_for(("schema",), marks) or 1
        raise ConfigError(f"expected `{SCHEMA_VERSION}`, got {version!r}", source=source, line=line, key="schema")
    spec: SuiteSpec = convert_with_marks(data, SuiteSpec, marks, source)
    checker = _Checker(source, marks)
    functions = checker.suite(spec)
    if checker.errors:
        errors = sorted(checker.errors, key=lambda error: error.line or 0)
        raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
    return Suite(spec, source, functions)


class _Checker:
    """What conversion cannot see, collected at the lines of the keys (every problem in one pass)."""

    def __init__(self, source: str, marks: Marks) -> None:
        self.source = source
        self.marks = marks
        self.errors: list[ConfigError] = []
        self.base = Path.cwd() if source.startswith("<") else Path(source).resolve().parent
        self.spec: SuiteSpec | None = None

    def add(self, path: tuple[str | int, ...], message: str) -> None:
        line = line_for(path, self.marks)
        self.errors.append(ConfigError(message, source=self.source, line=line, key=format_path(path)))

    def suite(self, spec: SuiteSpec) -> dict[str, Callable[..., Any]]:
        self.spec = spec
        for key in ("config", "simulator"):
            relative = getattr(spec, key)
            if relative is not None and not (self.base / relative).is_file():
                self.add((key,), f"file not found: {relative} (relative to the suite)")
        functions: dict[str, Callable[..., Any]] = {}
        for task_name, task in spec.tasks.items():
            seen: dict[str, int] = {}
            for i, case in enumerate(task.cases):
                at: tuple[str | int, ...] = ("tasks", task_name, "cases", i)
                if case.id in seen:
                    self.add((*at, "id"), f"duplicate case id {case.id!r} (also cases[{seen[case.id]}])")
                seen.setdefault(case.id, i)
                self.case(case, at, functions)
        return functions

    def case(self, case: CaseSpec, at: tuple[str | int, ...], functions: dict[str, Callable[..., Any]]) -> None:
        if (case.prompt is None) == (case.messages is None):
            self.add(at, "a case needs exactly one of `prompt` or `messages`")
        if not case.asserts:
            self.add(at, "a case needs at least one assertion under `assert`")
        elif (case.prompt is None) != (case.messages is None):
            problem = request_problem(case_body(case, "task", "model", 0))
            if problem is not None:
                message, _, where = problem.rpartition(" - at `")
                inner = parse_path(where.rstrip("`")) if message else ()
                inner = _case_path(case, inner)
                self.add((*at, *inner), f"not a valid chat request: {message or problem}")
        for j, check in enumerate(case.asserts):
            self.assertion(check, case, (*at, "assert", j), functions)

    def assertion(
        self, check: Assertion, case: CaseSpec, at: tuple[str | int, ...], functions: dict[str, Callable[..., Any]]
    ) -> None:
        kinds = [name for name in KINDS if getattr(check, name) is not None]
        if len(kinds) != 1:
            found = ", ".join(kinds) or "none"
            self.add(at, f"an assertion has exactly one of {', '.join(KINDS)} (found: {found})")
            return
        kind = kinds[0]
        where = (*at, kind)
        problem = _problem(check, case) or (_judge_problem(check, self.spec) if kind == "judge" else None)
        if problem is not None:
            self.add(where, problem)
        if kind == "python" and check.python is not None:
            try:
                functions[check.python] = import_function(check.python, self.base)
            except ValueError as exc:
                self.add(where, str(exc))


def _case_path(case: CaseSpec, inner: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """Where in the case a problem of its built request lies (the request adds `system` as message 0)."""
    fallback: tuple[str | int, ...] = ("messages" if case.messages is not None else "prompt",)
    if not inner or inner[0] not in CaseSpec.__struct_fields__:
        return fallback
    if inner[0] == "messages":
        if case.messages is None:
            return fallback
        if case.system is not None and len(inner) > 1 and isinstance(inner[1], int):
            return ("messages", inner[1] - 1, *inner[2:])
    return inner


def _problem(check: Assertion, case: CaseSpec) -> str | None:
    """The one thing wrong with a single-kind assertion, or None."""
    for kind in ("contains", "not_contains"):
        value = getattr(check, kind)
        if value is not None and (value == [] or "" in (value if isinstance(value, list) else [value])):
            # `contains: []` passes every answer and `not_contains: ""` none: almost surely a mistake.
            return f"`{kind}` needs at least one non-empty string"
    if check.regex is not None:
        return compile_regex(check.regex)[1]
    if check.json_schema is not None and not isinstance(check.json_schema, bool):
        return schema_problem(check.json_schema)
    if check.tool_call is not None and check.tool_call.arguments is not None:
        return schema_problem(check.tool_call.arguments)
    if check.similar is not None:
        target = check.similar.to if isinstance(check.similar, SimilarCheck) else None
        if target is None and case.reference is None:
            return "`similar` compares with the case's `reference` (or `to:`), and this case has neither"
        if isinstance(check.similar, float | int) and not -1.0 <= check.similar <= 1.0:
            return "a cosine threshold is within [-1, 1]"
    return None


def _judge_problem(check: Assertion, spec: SuiteSpec | None) -> str | None:
    """A `judge` needs a rubric, and a model to grade with, known now rather than when the run gets there: the
    assertion's `model:`, else the suite's `judge_model:`, else its `route:` (`--judge-model` replaces the suite's
    two at run time, but a suite must name a grader of its own, so it loads and runs the same everywhere)."""
    judge = check.judge
    rubric = judge.rubric if isinstance(judge, JudgeCheck) else judge
    if not rubric or not rubric.strip():
        return '`judge` needs a rubric (`judge: "..."` or `judge: {rubric: ...}`)'
    model = judge.model if isinstance(judge, JudgeCheck) else None
    if model is None and spec is not None and spec.judge_model is None and spec.route is None:
        return (
            "`judge` has no model to grade with: give it `model:`, or set the suite's `judge_model:` (or its `route:`)"
        )
    if model is not None and not model.strip():
        return "`judge` `model:` is empty"
    return None


def request_problem(body: dict[str, Any]) -> str | None:
    """Why a case's request would be refused (a bad message, tool or response_format), or None."""
    try:
        msgspec.convert(body, ChatRequest)
    except msgspec.ValidationError as exc:
        return str(exc)
    return None


def import_function(ref: str, base: Path | None = None) -> Callable[..., Any]:
    """`pkg.mod:fn` imported now (a missing module or name is a load error, not a failed case). Modules
    beside the suite file (`base`) are found too: the workflow tools' one rule for that."""
    try:
        return resolve_callable(ref, base)
    except CallableImportError as exc:
        raise ValueError(str(exc)) from None


def suite_json_schema() -> dict[str, Any]:
    """The JSON Schema of a suite file, for editors (`python -m modelyard.acceptance.spec`)."""
    _, components = msgspec.json.schema_components([SuiteSpec], ref_template="#/$defs/{name}")
    root = dict(components["SuiteSpec"])
    root["properties"] = dict(root["properties"])
    root["properties"]["schema"] = {"const": SCHEMA_VERSION}
    defs = {name: value for name, value in components.items() if name != "SuiteSpec"}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://modelyard.dev/schemas/acceptance-v1.json",
        "title": "modelyard acceptance suite",
        **root,
        "$defs": defs,
    }


if __name__ == "__main__":  # pragma: no cover - writes docs/acceptance.schema.json
    import json

    print(json.dumps(suite_json_schema(), indent=2, sort_keys=True))
