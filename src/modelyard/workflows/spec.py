"""A workflow file as typed, validated data.

`load_workflow(path)` reads YAML, checks it against the exported JSON Schema (`schema.py`), builds the
dataclasses below, then runs the checks a schema cannot express (`checks.py`): unknown references,
cycles, templates naming steps they do not `need`, output schemas that are not JSON Schema. Every problem
is reported at once, as `file:line: step 'x': message`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec

from modelyard.workflows import checks, include
from modelyard.workflows.backend import RouteHints
from modelyard.workflows.issues import Issue, WorkflowError
from modelyard.workflows.routing import successors_of
from modelyard.workflows.source import LineMap, Source, YamlSyntaxError, load_source
from modelyard.workflows.typed_outputs import split_outputs

StepKind = Literal["model", "tool", "loop", "approval", "workflow"]
YamlPath = tuple[str | int, ...]
DEFAULT_MAX_PARALLEL = 16
DEFAULT_LOOP_ITERATIONS = 3


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: The default of an input that has none (the caller must give it).
REQUIRED: Any = _Required()


@dataclass(frozen=True)
class InputSpec:
    name: str
    type: str = "string"
    default: Any = REQUIRED
    description: str = ""
    enum: tuple[Any, ...] | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class EstimateHint:
    """What `plan` assumes where it cannot know: fan-out width, answer size, loop rounds."""

    items: int | None = None
    output_tokens: int | None = None
    iterations: int | None = None


@dataclass(frozen=True)
class LoopSpec:
    steps: dict[str, StepSpec]
    max_iterations: int = DEFAULT_LOOP_ITERATIONS
    until: str | bool | None = None


@dataclass(frozen=True)
class ApprovalSpec:
    """`approve:` — the run pauses (checkpointed; the process may exit) until a person decides."""

    prompt: str
    #: A template rendered from the step's context: what the person is shown.
    show: str | None = None
    #: Seconds to wait; None waits for ever.
    timeout: float | None = None
    on_timeout: Literal["reject", "approve"] = "reject"


@dataclass(frozen=True)
class SubWorkflowSpec:
    """`workflow: path.yaml` — another workflow run as one step; its outputs are the step's output."""

    #: As written in the YAML (relative to the including file).
    path: str
    #: The included workflow, loaded and validated with its own file's line numbers.
    spec: WorkflowSpec
    #: Templates over the including step's context, one per input of the included workflow.
    inputs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StepSpec:
    """One step. `qualname` is `id` at the top level and `loop.id` inside a loop."""

    id: str
    kind: StepKind
    path: YamlPath
    line: int
    qualname: str
    needs: tuple[str, ...] = ()
    description: str = ""
    model: str | None = None
    prompt: str | None = None
    system: str | None = None
    call: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    foreach: str | list[Any] | None = None
    max_parallel: int | None = None
    when: str | bool | None = None
    retries: int = 0
    timeout: float | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    task: str | None = None
    #: `task` and `route:` (strategy, constraints, candidates), typed when the workflow is loaded.
    route: RouteHints = field(default_factory=RouteHints)
    output_schema: dict[str, Any] | bool | None = None
    loop: LoopSpec | None = None
    estimate: EstimateHint = field(default_factory=EstimateHint)
    approve: ApprovalSpec | None = None
    workflow: SubWorkflowSpec | None = None
    #: A template choosing which of the declared successors (`successors`) run, from this step's output.
    next: str | None = None
    #: The steps `next` may choose among (each of them `needs` this step); empty without `next`.
    successors: tuple[str, ...] = ()


@dataclass(frozen=True)
class Budget:
    max_cost_usd: float | None = None
    max_seconds: float | None = None


@dataclass(frozen=True)
class ReportSpec:
    """The counterfactual the report prints: the same tokens priced at `premium_model`."""

    premium_model: str | None = None
    tasks_step: str | None = None
    per_tasks: int = 1000


@dataclass(frozen=True)
class WorkflowSpec:
    name: str
    steps: dict[str, StepSpec]
    source: str = "<string>"
    text: str = ""
    description: str = ""
    inputs: dict[str, InputSpec] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    #: JSON Schemas declared for outputs (`outputs: {name: {value: ..., schema: ...}}`), by output name.
    output_schemas: dict[str, dict[str, Any] | bool] = field(default_factory=dict)
    budget: Budget = field(default_factory=Budget)
    max_parallel: int = DEFAULT_MAX_PARALLEL
    report: ReportSpec = field(default_factory=ReportSpec)
    lines: LineMap = field(default_factory=LineMap, compare=False, repr=False)
    #: The parsed YAML, for checks that need to know which keys were written.
    raw: Any = field(default=None, compare=False, repr=False)

    @property
    def base_dir(self) -> Path:
        """Where relative paths in the workflow (schema files, tool modules) are resolved."""
        if self.source.startswith("<"):
            return Path.cwd()
        return Path(self.source).resolve().parent

    def deps(self) -> dict[str, list[str]]:
        return {sid: list(step.needs) for sid, step in self.steps.items()}


def load_workflow(path: str | Path) -> WorkflowSpec:
    """Read and validate a workflow file; raises WorkflowError listing every problem."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        issue = Issue(str(path), 1, f"cannot read the workflow: {exc.strerror or exc}")
        raise WorkflowError([issue]) from None
    return parse_workflow(text, str(path))


def parse_workflow(text: str, name: str = "<string>", *, chain: tuple[Path, ...] = ()) -> WorkflowSpec:
    """Validate workflow YAML text; `name` is the file name used in messages and for relative paths.

    `chain`: the files including this one (sub-workflows), to refuse a cycle at the including step.
    """
    try:
        source = load_source(text, name)
    except YamlSyntaxError as exc:
        raise WorkflowError([Issue(name, exc.line, f"YAML syntax: {exc.message}")]) from None
    issues = checks.structural_issues(source)
    if issues:
        raise WorkflowError(issues)
    builder = _Builder(source, chain)
    spec = builder.workflow()
    issues = builder.issues + checks.semantic_issues(spec)
    if issues:
        raise WorkflowError(issues)
    return spec


class _Builder:
    """Turns schema-valid data into dataclasses; collects the problems only building can see."""

    def __init__(self, source: Source, chain: tuple[Path, ...] = ()) -> None:
        self.source = source
        self.chain = chain
        self.issues: list[Issue] = []
        self.base_dir = Path.cwd() if source.name.startswith("<") else Path(source.name).resolve().parent

    def workflow(self) -> WorkflowSpec:
        data: dict[str, Any] = self.source.data
        budget = data.get("budget") or {}
        report = data.get("report") or {}
        outputs, output_schemas = split_outputs(data.get("outputs") or {})
        return WorkflowSpec(
            name=data["name"],
            description=data.get("description", ""),
            steps=self.steps(data["steps"], ("steps",), prefix=""),
            source=self.source.name,
            text=self.source.text,
            inputs={name: _input(name, raw) for name, raw in (data.get("inputs") or {}).items()},
            outputs=outputs,
            output_schemas={
                name: self.schema_file(schema, ("outputs", name, "schema"), None)
                for name, schema in output_schemas.items()
            },
            budget=Budget(budget.get("max_cost_usd"), budget.get("max_seconds")),
            max_parallel=data.get("max_parallel", DEFAULT_MAX_PARALLEL),
            report=ReportSpec(report.get("premium_model"), report.get("tasks_step"), report.get("per_tasks", 1000)),
            lines=self.source.lines,
            raw=self.source.data,
        )

    def steps(self, raw: dict[str, Any], path: YamlPath, prefix: str) -> dict[str, StepSpec]:
        steps = {sid: self.step(sid, body, (*path, sid), prefix) for sid, body in raw.items()}
        needs = {sid: step.needs for sid, step in steps.items()}
        for sid, step in steps.items():
            if step.next is not None:
                steps[sid] = dataclasses.replace(step, successors=successors_of(sid, needs))
        return steps

    def step(self, sid: str, body: dict[str, Any], path: YamlPath, prefix: str) -> StepSpec:
        qualname = f"{prefix}{sid}"
        kind: StepKind = "loop" if "loop" in body else "tool" if "call" in body else "model"
        if "approve" in body:
            kind = "approval"
        kind = "workflow" if "workflow" in body else kind
        loop = None
        if "loop" in body:
            raw_loop = body["loop"]
            loop = LoopSpec(
                steps=self.steps(raw_loop["steps"], (*path, "loop", "steps"), prefix=f"{qualname}."),
                max_iterations=raw_loop.get("max_iterations", DEFAULT_LOOP_ITERATIONS),
                until=raw_loop.get("until"),
            )
        hint = body.get("estimate") or {}
        return StepSpec(
            id=sid,
            kind=kind,
            path=path,
            line=self.source.lines.line(path),
            qualname=qualname,
            needs=tuple(body.get("needs") or ()),
            description=body.get("description", ""),
            model=body.get("model"),
            prompt=body.get("prompt"),
            system=body.get("system"),
            call=body.get("call"),
            args=dict(body.get("args") or {}),
            foreach=body.get("foreach"),
            max_parallel=body.get("max_parallel"),
            when=body.get("when"),
            retries=body.get("retries", 0),
            timeout=body.get("timeout"),
            temperature=body.get("temperature"),
            max_tokens=body.get("max_tokens"),
            task=body.get("task"),
            route=self.route(body, path, qualname),
            output_schema=self.output_schema(body.get("output") or {}, path, qualname),
            loop=loop,
            estimate=EstimateHint(hint.get("items"), hint.get("output_tokens"), hint.get("iterations")),
            next=body.get("next"),
            approve=_approval(body.get("approve")),
            workflow=self.subworkflow(body, path, qualname) if "workflow" in body else None,
        )

    def route(self, body: dict[str, Any], path: YamlPath, qualname: str) -> RouteHints:
        """The step's routing hints; a misspelt constraint or a value out of range is an issue at its line."""
        raw = {name: value for name, value in (body.get("route") or {}).items() if value not in (None, [], {})}
        if body.get("task"):
            raw["task"] = body["task"]
        try:
            return msgspec.convert(raw, RouteHints)
        except msgspec.ValidationError as exc:
            line = self.source.lines.line((*path, "route", "constraints"))
            self.issues.append(Issue(self.source.name, line, f"route: {exc}", qualname))
            return RouteHints()

    def subworkflow(self, body: dict[str, Any], path: YamlPath, qualname: str) -> SubWorkflowSpec | None:
        """The included file, loaded with its own line numbers; a cycle or a bad file is an issue here."""
        target = include.locate(self.source.name, body["workflow"])
        line = self.source.lines.line((*path, "workflow"))
        own = include.identity(self.source.name)
        chain = (*self.chain, own) if own is not None else self.chain
        problem = include.chain_problem(target, chain)
        text = None
        if problem is None:
            text, problem = include.read(target)
        if problem is not None or text is None:
            self.issues.append(Issue(self.source.name, line, problem or "", qualname))
            return None
        try:
            child = parse_workflow(text, target.name, chain=chain)
        except WorkflowError as exc:  # the included file's own problems, at its own file:line
            self.issues.extend(exc.issues)
            count = f"{len(exc.issues)} problem" + ("s" if len(exc.issues) > 1 else "")
            message = f"sub-workflow {target.name} is invalid ({count})"
            self.issues.append(Issue(self.source.name, line, message, qualname))
            return None
        return SubWorkflowSpec(path=body["workflow"], spec=child, inputs=dict(body.get("inputs") or {}))

    def output_schema(self, output: dict[str, Any], path: YamlPath, qualname: str) -> Any:
        return self.schema_file(output.get("schema"), (*path, "output", "schema"), qualname)

    def schema_file(self, schema: Any, path: YamlPath, qualname: str | None) -> Any:
        """An inline schema as it is; a file name read as JSON beside the workflow (a problem at its line)."""
        if not isinstance(schema, str):
            return schema
        file = self.base_dir / schema
        line = self.source.lines.line(path)
        try:
            return json.loads(file.read_text(encoding="utf-8"))
        except OSError as exc:
            problem = f"cannot read schema file {schema}: {exc.strerror or exc}"
        except json.JSONDecodeError as exc:
            problem = f"schema file {schema} is not JSON: {exc}"
        self.issues.append(Issue(self.source.name, line, problem, qualname))
        return None


def _input(name: str, raw: Any) -> InputSpec:
    if isinstance(raw, str):
        return InputSpec(name=name, type=raw)
    enum = raw.get("enum")
    return InputSpec(
        name=name,
        type=raw.get("type", "string"),
        default=raw.get("default", REQUIRED),
        description=raw.get("description", ""),
        enum=tuple(enum) if enum is not None else None,
    )


def _approval(raw: dict[str, Any] | None) -> ApprovalSpec | None:
    if raw is None:
        return None
    return ApprovalSpec(raw["prompt"], raw.get("show"), raw.get("timeout"), raw.get("on_timeout", "reject"))


def walk_steps(steps: dict[str, StepSpec]) -> list[StepSpec]:
    """Every step, loop bodies included, in declaration order."""
    found: list[StepSpec] = []
    for step in steps.values():
        found.append(step)
        if step.loop is not None:
            found.extend(walk_steps(step.loop.steps))
    return found
