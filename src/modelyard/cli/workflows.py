"""`modelyard run | plan | graph | runs list | runs show`: workflows from the command line.

A typer sub-app: the main CLI merges it with `main_app.add_typer(workflows.app)` (or `register(main_app)`),
and `python -m modelyard.cli.workflows ...` runs it alone. The model backend comes from a factory:
`--backend scripted` (fake answers), `--backend package.module:factory`, or by default the in-process
gateway for `--config` (a remote one with `--gateway-url`). MODELYARD_WORKFLOW_BACKEND sets `--backend`;
MODELYARD_RUNS_DB sets `--store`.

Exit codes: 0 the run succeeded; 1 it failed, partly failed or a budget stopped it; 2 the workflow, its
inputs or the options are invalid; 3 the run waits for approval (`runs approve|reject`, see approval_cli.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from modelyard.workflows.api import ResumeError, Workflow, resume_run
from modelyard.workflows.approval import waiting_lines
from modelyard.workflows.backend import BackendFactory, BackendUnavailable, load_backend_factory
from modelyard.workflows.checkpoint import DEFAULT_STORE, SqliteStore, list_runs, load_run
from modelyard.workflows.engine import EngineOptions
from modelyard.workflows.inputs import InputError, parse_cli_inputs
from modelyard.workflows.issues import WorkflowError
from modelyard.workflows.progress import LiveProgress
from modelyard.workflows.records import RunResult, RunStatus
from modelyard.workflows.render_graph import GraphFormat, render
from modelyard.workflows.report import (
    plan_lines,
    plan_table,
    print_run,
    result_from_stored,
    result_json,
    runs_table,
    timeline,
)
from modelyard.workflows.spec import WorkflowSpec, load_workflow, parse_workflow
from modelyard.workflows.streaming import TokenPrinter

if TYPE_CHECKING:
    from modelyard.workflows.checkpoint_pg import PostgresRunStore

app = typer.Typer(help="Declarative multi-model workflows: run, plan and inspect them.", no_args_is_help=True)
runs_app = typer.Typer(help="Inspect stored workflow runs.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")

_STORE_HELP = (
    "Run store: a SQLite file or postgresql://... (?schema=name; shared by machines). "
    "Default: $MODELYARD_RUNS_DB or ~/.modelyard/runs.db."
)
_BACKEND_HELP = "Backend factory: 'scripted' (fake answers) or package.module:function. Default: the gateway."
StoreOption = Annotated[str | None, typer.Option("--store", help=_STORE_HELP)]
BackendOption = Annotated[
    str | None, typer.Option("--backend", envvar="MODELYARD_WORKFLOW_BACKEND", help=_BACKEND_HELP)
]
ConfigOption = Annotated[str | None, typer.Option("--config", "-c", help="Gateway config for the in-process router.")]
GatewayOption = Annotated[
    str | None, typer.Option("--gateway-url", help="Use a running modelyard gateway instead of in-process.")
]
InputOption = Annotated[list[str] | None, typer.Option("--input", "-i", help="An input as key=value (repeatable).")]
InputsFileOption = Annotated[Path | None, typer.Option("--inputs-file", help="Inputs as a JSON or YAML mapping.")]
JsonOption = Annotated[str | None, typer.Option("--json", help="Write the whole result as JSON to PATH ('-': stdout).")]
WorkflowArgument = Annotated[Path | None, typer.Argument(help="The workflow YAML (optional with --resume).")]
ResumeOption = Annotated[str | None, typer.Option("--resume", help="Continue the run RUN_ID from the store.")]
OutOption = Annotated[Path | None, typer.Option("--out", "-o", help="Write to FILE instead of stdout.")]
RunIdOption = Annotated[str | None, typer.Option("--run-id", help="Id for a new run (default: generated).")]


def register(parent: typer.Typer) -> None:
    """Add `run`, `plan` and `runs` (with `runs approve|reject`) to the main CLI."""
    add_decisions()
    parent.add_typer(app)


def add_decisions() -> None:
    """`runs approve` and `runs reject` (cli/approval_cli.py, which uses this module's helpers: imported here,
    not at the top, as the two modules import each other)."""
    from modelyard.cli import approval_cli

    approval_cli.register(runs_app)


# --------------------------------------------------------------------------- helpers


def _console(stderr: bool = False) -> Console:
    """A console; when output goes to a file or pipe, wide enough that tables stay readable."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 150)


def _fail(message: str, code: int = 2) -> typer.Exit:
    Console(stderr=True).print(message, style="red", highlight=False, markup=False, soft_wrap=True)
    return typer.Exit(code)


def _store(location: str | None) -> SqliteStore | PostgresRunStore:
    """The run store `--store` (or $MODELYARD_RUNS_DB) names: a SQLite file or a PostgreSQL DSN."""
    chosen = location or os.environ.get("MODELYARD_RUNS_DB") or str(DEFAULT_STORE)
    if not chosen.startswith(("postgresql://", "postgres://")):
        return SqliteStore(Path(chosen).expanduser())
    from modelyard.workflows.checkpoint_pg import PostgresRunStore, StoreWriteError

    try:
        return PostgresRunStore(chosen)
    except (StoreWriteError, ValueError) as exc:
        raise _fail(f"--store: {exc}") from None


def _load(path: Path) -> WorkflowSpec:
    try:
        return load_workflow(path)
    except WorkflowError as exc:
        count = len(exc.issues)
        raise _fail(f"{path}: {count} problem{'s' if count != 1 else ''}\n{exc}") from None


def _inputs(spec: WorkflowSpec, pairs: list[str] | None, file: Path | None) -> dict[str, Any]:
    import yaml

    values: dict[str, Any] = {}
    try:
        if file is not None:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
            if not isinstance(loaded, dict):
                raise InputError(f"{file} must hold a mapping of input names to values")
            values.update(loaded)
        values.update(parse_cli_inputs(spec, pairs or []))
    except (InputError, OSError, yaml.YAMLError) as exc:
        raise _fail(f"inputs: {exc}") from None
    return values


def _factory(ref: str | None) -> BackendFactory:
    try:
        return load_backend_factory(ref)
    except BackendUnavailable as exc:
        raise _fail(str(exc)) from None


def emit_json(data: dict[str, Any], target: str | None, console: Console) -> None:
    """`--json PATH`: the data as indented JSON to PATH, or to stdout for `-`."""
    if target is None:
        return
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str)
    if target == "-":
        print(text)
    else:
        Path(target).write_text(text + "\n", encoding="utf-8")
        console.print(f"wrote {target}", highlight=False)


# --------------------------------------------------------------------------- run


@app.command("run")
def run_command(
    workflow: WorkflowArgument = None,
    inputs: InputOption = None,
    inputs_file: InputsFileOption = None,
    resume: ResumeOption = None,
    force: Annotated[bool, typer.Option("--force", help="Resume even if the run looks alive.")] = False,
    run_id: RunIdOption = None,
    store: StoreOption = None,
    json_out: JsonOption = None,
    config: ConfigOption = None,
    gateway_url: GatewayOption = None,
    backend: BackendOption = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Live progress table.")] = True,
    stream: Annotated[bool, typer.Option("--stream", help="Print model steps' text as it arrives.")] = False,
) -> None:
    """Run a workflow (or resume one) and print its report."""
    console = _console(stderr=json_out == "-")
    factory = _factory(backend)
    runs = _store(store)
    try:
        if resume:
            if inputs or inputs_file:
                raise _fail("--resume continues a run with its own inputs; drop -i/--inputs-file")
            spec, given = _resume_spec(runs, resume, workflow), None
        elif workflow is None:
            raise _fail("give a workflow file, or --resume RUN_ID")
        else:
            spec = _load(workflow)
            given = _inputs(spec, inputs, inputs_file)
        job = _run(spec, given, factory, runs, config, gateway_url, resume, run_id, force, progress, console, stream)
        try:
            result = asyncio.run(job)
        except (InputError, ResumeError, BackendUnavailable) as exc:
            raise _fail(str(exc)) from None
    finally:
        runs.close()
    finish(result, json_out, console)


def _resume_spec(runs: SqliteStore | PostgresRunStore, run_id: str, workflow: Path | None) -> WorkflowSpec:
    if workflow is not None:
        return _load(workflow)
    stored = runs.header(run_id)
    if stored is None:
        raise _fail(f"no run {run_id!r} in {runs.path}")
    try:
        return parse_workflow(stored.text, stored.source)
    except WorkflowError as exc:
        raise _fail(f"the workflow stored with run {run_id} no longer validates:\n{exc}") from None


async def _run(
    spec: WorkflowSpec,
    inputs: dict[str, Any] | None,
    factory: BackendFactory,
    runs: SqliteStore | PostgresRunStore,
    config: str | None,
    gateway_url: str | None,
    resume: str | None,
    run_id: str | None,
    force: bool,
    progress: bool,
    console: Console,
    stream: bool = False,
) -> RunResult:
    async with factory(config, gateway_url) as backend:
        # Streamed text and a live table would overwrite each other: --stream prints lines instead.
        with LiveProgress(spec, console, enabled=progress and console.is_terminal and not stream) as live:
            listener, options = live.on_event, None
            if stream:
                listener, options = TokenPrinter(console.file, also=live.on_event).on_event, EngineOptions(stream=True)
            if resume:
                return await resume_run(
                    resume, backend=backend, store=runs, spec=spec, listener=listener, options=options, force=force
                )
            workflow = Workflow(spec)
            return await workflow.run(
                inputs, backend=backend, store=runs, run_id=run_id, listener=listener, options=options
            )


# --------------------------------------------------------------------------- plan


@app.command("plan")
def plan_command(
    workflow: Annotated[Path, typer.Argument(help="The workflow YAML.")],
    inputs: InputOption = None,
    inputs_file: InputsFileOption = None,
    json_out: JsonOption = None,
    config: ConfigOption = None,
    gateway_url: GatewayOption = None,
    backend: BackendOption = None,
) -> None:
    """Estimate each step's model, tokens, cost and latency, and the critical path. Calls no model."""
    console = _console(stderr=json_out == "-")
    spec = _load(workflow)
    given = _inputs(spec, inputs, inputs_file)
    factory = _factory(backend)

    async def build() -> Any:
        async with factory(config, gateway_url) as chosen:
            return Workflow(spec).plan(given, backend=chosen)

    try:
        plan = asyncio.run(build())
    except (InputError, BackendUnavailable) as exc:
        raise _fail(str(exc)) from None
    console.print(plan_table(plan))
    for line in plan_lines(plan):
        console.print(line, highlight=False, markup=False)
    emit_json(plan.to_json(), json_out, console)


# --------------------------------------------------------------------------- runs


@runs_app.command("list")
def runs_list(
    store: StoreOption = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many recent runs.")] = 20,
    json_out: JsonOption = None,
    waiting: Annotated[bool, typer.Option("--waiting", help="Only runs waiting for approval.")] = False,
) -> None:
    """Recent runs, newest first."""
    console = _console(stderr=json_out == "-")
    runs = _store(store)
    try:
        rows = list_runs(runs, limit)
    finally:
        runs.close()
    if waiting:
        rows = [row for row in rows if row.status is RunStatus.WAITING]
    console.print(runs_table(rows))
    data = {"runs": [{**vars(row), "status": row.status.value} for row in rows]}
    emit_json(data, json_out, console)


@runs_app.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(help="The run id (see `runs list`).")],
    store: StoreOption = None,
    json_out: JsonOption = None,
    html: Annotated[bool, typer.Option("--html", help="The timeline as a self-contained HTML page.")] = False,
    out: OutOption = None,
) -> None:
    """One run: its steps, totals, outputs and a text timeline (or, with --html, an HTML timeline)."""
    console = _console(stderr=json_out == "-" or (html and out is None))
    runs = _store(store)
    try:
        stored = load_run(runs, run_id)
        where = Path(str(runs.path))
    finally:
        runs.close()
    if stored is None:
        raise _fail(f"no run {run_id!r} in the store")
    if html:
        from modelyard.server.admin_runs import run_detail
        from modelyard.workflows.run_html import run_html

        _write(run_html(run_detail(stored, where)), out, console)
        return
    result = result_from_stored(stored)
    print_run(result, console)
    console.print(f"sessions: {result.sessions}", highlight=False)
    console.print("timeline:", highlight=False)
    for line in timeline(result):
        console.print(line, highlight=False, markup=False)
    for line in waiting_lines(result):
        console.print(line, highlight=False, markup=False)
    emit_json(result_json(result), json_out, console)


# --------------------------------------------------------------------------- graph


@app.command("graph")
def graph_command(
    workflow: Annotated[Path, typer.Argument(help="The workflow YAML.")],
    fmt: Annotated[GraphFormat, typer.Option("--format", "-f", help="mermaid, dot or svg.")] = "mermaid",
    out: OutOption = None,
) -> None:
    """A picture of the step graph: steps, needs, fan-outs, loops, conditions, next: and sub-workflows."""
    _write(render(_load(workflow), fmt), out, _console(stderr=out is None))


def _write(text: str, out: Path | None, console: Console) -> None:
    """`--out FILE`, or stdout."""
    if out is None:
        sys.stdout.write(text)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise _fail(f"--out {out}: {exc.strerror or exc}") from None
    console.print(f"wrote {out}", highlight=False)


def finish(result: RunResult, json_out: str | None, console: Console) -> None:
    """A run's end on the command line (run, resume, approve, reject): the report, how to see it again, what
    it waits for, the JSON file, and the exit code."""
    print_run(result, console)
    console.print(f"run id: {result.run_id}  (modelyard runs show {result.run_id})", highlight=False)
    for line in waiting_lines(result):
        console.print(line, highlight=False, markup=False)
    emit_json(result_json(result), json_out, console)
    raise typer.Exit(exit_code(result.status))


def exit_code(status: RunStatus) -> int:
    """0 succeeded, 3 waiting for approval, 1 anything else that ran."""
    return 0 if status is RunStatus.SUCCEEDED else 3 if status is RunStatus.WAITING else 1


if __name__ == "__main__":
    # The importable module, not this __main__ copy, so `runs approve|reject` attach to the app that runs.
    from modelyard.cli import workflows as importable

    importable.add_decisions()
    importable.app()
