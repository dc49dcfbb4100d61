"""`modelyard batch`: one workflow over every row of an inputs file; `modelyard batches list | show`.

    modelyard batch WORKFLOW --inputs rows.jsonl --out results.jsonl [--map input=column]... [--concurrency 16]
        [--max-cost-usd X] [--ordered] [--retry-failed] [--engine local|ray] [--provider-batch] [--store ...]
    modelyard batch --resume BATCH_ID [--concurrency N] [--max-cost-usd X] [--engine ...] [--out FILE]

Exit codes: 0 every row succeeded; 1 some rows failed, or the budget stopped the batch (rows left); 2 bad
input or options; 130 Ctrl-C (what finished is saved; a second Ctrl-C exits at once).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from modelyard.batch.budget import Estimator, check_concurrency, check_limit, planner_estimator
from modelyard.batch.driver import BatchDriver
from modelyard.batch.engine import LocalEngine, RowEngine
from modelyard.batch.model import BackendRef, BatchHeader, BatchOptions, new_batch_id
from modelyard.batch.progress import BatchProgress
from modelyard.batch.results import require_writer
from modelyard.batch.store import BatchStore, open_batch_store
from modelyard.batch.summary import BatchReport, print_report
from modelyard.cli.workflows import emit_json
from modelyard.schema.errors import ModelyardError
from modelyard.workflows.api import Workflow
from modelyard.workflows.backend import BackendFactory, BackendUnavailable, ModelBackend, load_backend_factory
from modelyard.workflows.issues import WorkflowError
from modelyard.workflows.spec import WorkflowSpec, load_workflow, parse_workflow

app = typer.Typer(help="Run a workflow over every row of a table.", no_args_is_help=True)
batches_app = typer.Typer(help="Inspect stored batches.", no_args_is_help=True)
app.add_typer(batches_app, name="batches")

EXIT_INTERRUPTED = 130
_OUT_SUFFIXES = (".jsonl", ".parquet")
_STORE_HELP = "Batch store: a SQLite path or postgresql://... Default: $MODELYARD_RUNS_DB or ~/.modelyard/runs.db."
StoreOption = Annotated[str | None, typer.Option("--store", envvar="MODELYARD_BATCH_STORE", help=_STORE_HELP)]
JsonOption = Annotated[str | None, typer.Option("--json", help="Write the report as JSON to PATH ('-': stdout).")]


class BadInput(ModelyardError):
    """Bad input or options: printed without a traceback, exit 2."""


@dataclass
class Given:
    """The options given on the command line; None: not given (a resume keeps the stored value)."""

    concurrency: int | None = None
    max_cost_usd: float | None = None
    out: str | None = None
    ordered: bool | None = None
    retry_failed: bool | None = None
    engine: str | None = None
    ray_address: str | None = None
    provider_batch: bool | None = None


def register(parent: typer.Typer) -> None:
    parent.add_typer(app)


# --------------------------------------------------------------------------- batch


@app.command("batch")
def batch_command(
    workflow: Annotated[Path | None, typer.Argument(help="The workflow YAML (not with --resume).")] = None,
    inputs: Annotated[Path | None, typer.Option("--inputs", help="Rows: .jsonl, .csv or .parquet.")] = None,
    out: Annotated[
        str | None, typer.Option("--out", help="Results: .jsonl (written as rows finish) or .parquet.")
    ] = None,
    mapping: Annotated[list[str] | None, typer.Option("--map", help="input=column (repeatable).")] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", help="Rows in flight (default 16).")] = None,
    max_cost_usd: Annotated[float | None, typer.Option("--max-cost-usd", help="Budget of the whole batch.")] = None,
    ordered: Annotated[bool | None, typer.Option("--ordered", help="Write rows in input order as they finish.")] = None,
    retry_failed: Annotated[bool | None, typer.Option("--retry-failed", help="Re-run failed/partial rows.")] = None,
    engine: Annotated[str | None, typer.Option("--engine", help="local (default) or ray.")] = None,
    ray_address: Annotated[str | None, typer.Option("--ray-address", envvar="RAY_ADDRESS")] = None,
    provider_batch: Annotated[bool | None, typer.Option("--provider-batch", help="Providers' Batch APIs.")] = None,
    store: StoreOption = None,
    config: Annotated[str | None, typer.Option("--config", "-c", help="Gateway config (in-process router).")] = None,
    gateway_url: Annotated[str | None, typer.Option("--gateway-url", help="A running gateway instead.")] = None,
    backend: Annotated[str | None, typer.Option("--backend", envvar="MODELYARD_WORKFLOW_BACKEND")] = None,
    batch_id: Annotated[str | None, typer.Option("--batch-id", help="Id of a new batch (default: generated).")] = None,
    resume: Annotated[str | None, typer.Option("--resume", help="Continue the batch BATCH_ID.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Resume even if the batch looks alive.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Live progress on stderr.")] = True,
    json_out: JsonOption = None,
) -> None:
    """Run WORKFLOW once per row of --inputs, resumable per row, within one budget; print a summary."""
    given = Given(concurrency, max_cost_usd, out, ordered, retry_failed, engine, ray_address, provider_batch)
    console = Console(stderr=json_out == "-", width=None if sys.stdout.isatty() else 150)
    try:
        _check(given)
        factory = load_backend_factory(backend)
        opened = open_batch_store(store)
    except (ModelyardError, ValueError, OSError) as exc:
        raise _fail(str(exc)) from None
    try:
        try:
            if resume:
                spec, header, options = _resumed(opened, resume, workflow, inputs, mapping, given, _store_file(store))
            else:
                _check_batch_id(batch_id)
                spec, header, options = _new(opened, workflow, inputs, mapping, given, batch_id, _store_file(store))
        except (ModelyardError, ValueError, OSError) as exc:
            raise _fail(str(exc)) from None
        backend_ref = BackendRef(backend, config, gateway_url)
        session = _Session(Workflow(spec), header, opened, options, factory, backend_ref, store, progress, force)
        try:
            report = asyncio.run(session.run())
        except (BackendUnavailable, ModelyardError) as exc:
            raise _fail(str(exc)) from None
    finally:
        opened.close()
    print_report(report, console)
    emit_json(report.to_json(), json_out, console)
    if report.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    raise typer.Exit(0 if report.all_succeeded else 1)


#: A batch id: it names rows in stores and custom ids at providers, so no paths, quotes or control characters.
_BATCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _check_batch_id(batch_id: str | None) -> None:
    if batch_id is not None and not _BATCH_ID.match(batch_id):
        raise BadInput("--batch-id: 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit")


def _check_out(out: str | None, inputs_path: str, store: str | None) -> None:
    """Never write the results over the rows they come from, or over the store that keeps them; never run a
    batch whose results could only fail to be written at its end."""
    if out is None:
        return
    require_writer(out)
    targets = [out, out + ".partial.jsonl"] if out.endswith(".parquet") else [out]
    for target in targets:
        for name, other in (("--inputs", inputs_path), ("--store", store)):
            if other and _same_file(target, other):
                raise BadInput(f"--out {out} is the {name} file: give the results a file of their own")


def _store_file(location: str | None) -> str | None:
    """The SQLite file a store location names (None for PostgreSQL)."""
    from modelyard.batch.store_sqlite import default_path
    from modelyard.workflows.checkpoint_pg import is_postgres

    if location is None:
        return str(default_path())
    return None if is_postgres(location) else location


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet: not the same file
        return False


def _check(given: Given) -> None:
    if given.concurrency is not None:
        check_concurrency(given.concurrency)
    check_limit(given.max_cost_usd)
    if given.engine is not None and given.engine not in ("local", "ray"):
        raise BadInput(f"--engine must be local or ray, not {given.engine!r}")
    if given.out is not None and not given.out.endswith(_OUT_SUFFIXES):
        raise BadInput(f"--out {given.out}: the results file must end in .jsonl or .parquet")
    if given.out is not None:
        given.out = str(Path(given.out).resolve())  # stored: a resume from another directory writes the same file


def _new(
    store: BatchStore,
    workflow: Path | None,
    inputs: Path | None,
    pairs: list[str] | None,
    given: Given,
    batch_id: str | None,
    store_location: str | None,
) -> tuple[WorkflowSpec, BatchHeader, BatchOptions]:
    from modelyard.batch.rows import inspect_inputs, parse_mapping

    if workflow is None or inputs is None or given.out is None:
        raise BadInput("give a workflow file, --inputs FILE and --out FILE (or --resume BATCH_ID)")
    spec = _load(workflow)
    mapping = parse_mapping(pairs or [])
    found = inspect_inputs(inputs, spec, mapping)
    _check_out(given.out, str(found.path), store_location)
    options = _merge(BatchOptions(), given)
    header = BatchHeader(
        batch_id=batch_id or new_batch_id(),
        workflow=spec.name,
        source=str(workflow),
        text=workflow.read_text(encoding="utf-8"),
        inputs_path=str(found.path.resolve()),
        inputs_format=found.format,
        inputs_fingerprint=found.fingerprint,
        rows=found.rows,
        mapping=mapping,
        options=asdict(options),
    )
    store.create_batch(header)  # ValueError when the id exists
    return spec, header, options


def _resumed(
    store: BatchStore,
    batch_id: str,
    workflow: Path | None,
    inputs: Path | None,
    pairs: list[str] | None,
    given: Given,
    store_location: str | None,
) -> tuple[WorkflowSpec, BatchHeader, BatchOptions]:
    """The stored batch, its workflow text, its inputs file (or the same bytes at --inputs), options overridden."""
    from modelyard.batch.rows import inspect_inputs

    if workflow is not None or pairs:
        raise BadInput("--resume runs the batch's own workflow and mapping; drop WORKFLOW and --map")
    header = store.header(batch_id)
    if header is None:
        raise BadInput(f"no batch {batch_id!r} in the store")
    try:
        spec = parse_workflow(header.text, header.source)
    except WorkflowError as exc:
        raise BadInput(f"the workflow stored with batch {batch_id} no longer validates:\n{exc}") from None
    path = inputs or Path(header.inputs_path)
    found = inspect_inputs(path, spec, header.mapping)
    if found.fingerprint != header.inputs_fingerprint:
        raise BadInput(f"{path} changed since batch {batch_id} started (its bytes differ); give the original file")
    header.inputs_path = str(found.path.resolve())
    _check_out(given.out or header.options.get("out"), header.inputs_path, store_location)
    stored = BatchOptions(**{f.name: header.options[f.name] for f in fields(BatchOptions) if f.name in header.options})
    stored.retry_failed = False  # a flag of one session
    return spec, header, _merge(stored, given)


def _merge(options: BatchOptions, given: Given) -> BatchOptions:
    for name, value in asdict(given).items():
        if value is not None:
            setattr(options, name, value)
    return options


def _load(path: Path) -> WorkflowSpec:
    try:
        return load_workflow(path)
    except WorkflowError as exc:
        count = len(exc.issues)
        raise BadInput(f"{path}: {count} problem{'s' if count != 1 else ''}\n{exc}") from None


# --------------------------------------------------------------------------- one session


class _Session:
    """The async part of one `modelyard batch`: the backend, the engine, the driver, Ctrl-C."""

    def __init__(
        self,
        workflow: Workflow,
        header: BatchHeader,
        store: BatchStore,
        options: BatchOptions,
        factory: BackendFactory,
        backend_ref: BackendRef,
        store_location: str | None,
        progress: bool,
        force: bool = False,
    ) -> None:
        self.workflow = workflow
        self.header = header
        self.store = store
        self.options = options
        self.factory = factory
        self.backend_ref = backend_ref
        self.store_location = store_location
        self.progress = progress
        self.force = force

    async def run(self) -> BatchReport:
        async with self.factory(self.backend_ref.config, self.backend_ref.gateway_url) as backend:
            estimator, planned = self._estimator(backend)
            async with self._engine(backend) as engine:
                console = Console(stderr=True)
                driver = BatchDriver(
                    self.workflow,
                    self.header,
                    self.store,
                    engine,
                    self.options,
                    estimator=estimator if self.options.max_cost_usd is not None else None,
                    progress=BatchProgress(console, enabled=self.progress),
                    planned_row_cost=planned,
                    force=self.force,
                )
                with _sigint(driver):
                    return await driver.run()

    def _estimator(self, backend: ModelBackend) -> tuple[Estimator | None, float | None]:
        """The planner's per-row estimate when the backend can price calls (checked on the first row)."""
        first = next(iter(self._first_row()), None)
        if first is None:
            return None, None
        estimator = planner_estimator(self.workflow.spec, backend, first)
        return estimator, estimator(first) if estimator is not None else None

    def _first_row(self) -> list[dict[str, Any]]:
        from modelyard.batch.rows import InputsFile, read_rows

        header = self.header
        found = InputsFile(Path(header.inputs_path), header.inputs_format, header.inputs_fingerprint, header.rows, ())
        for _, inputs in read_rows(found, self.workflow.spec, header.mapping):
            return [inputs]
        return []

    def _engine(self, backend: ModelBackend) -> AbstractAsyncContextManager[RowEngine]:
        options = self.options
        if options.provider_batch:
            from modelyard.batch.provider_batch import open_provider_engine

            return open_provider_engine(self.workflow, self.header, self.store, config=self.backend_ref.config)
        if options.engine == "ray":
            from modelyard.batch.ray_engine import open_ray_engine
            from modelyard.batch.store_sqlite import default_path

            location = self.store_location or str(default_path())
            return open_ray_engine(
                self.header, location, self.backend_ref, address=options.ray_address, priority=options.priority
            )
        return _local(LocalEngine(_runner(self.workflow, backend, self.store, self.header.batch_id, options)))


def _runner(workflow: Workflow, backend: ModelBackend, store: BatchStore, batch_id: str, options: BatchOptions) -> Any:
    from modelyard.batch.runner import RowRunner

    return RowRunner(workflow, backend, store, batch_id, priority=options.priority)


@asynccontextmanager
async def _local(engine: LocalEngine) -> AsyncIterator[RowEngine]:
    try:
        yield engine
    finally:
        await engine.aclose()


class _sigint:
    """First Ctrl-C: the driver cancels the rows in flight and ends with what finished saved (exit 130).
    Second: exit at once."""

    def __init__(self, driver: BatchDriver) -> None:
        self.driver = driver
        self.count = 0
        self.loop = asyncio.get_running_loop()

    def __enter__(self) -> _sigint:
        try:
            self.loop.add_signal_handler(signal.SIGINT, self._on_sigint)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests calling the command in-process)
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.loop.remove_signal_handler(signal.SIGINT)
        except (NotImplementedError, RuntimeError):
            pass

    def _on_sigint(self) -> None:
        self.count += 1
        if self.count > 1:
            os._exit(EXIT_INTERRUPTED)
        Console(stderr=True).print("interrupted: saving what finished (Ctrl-C again to quit at once)", style="yellow")
        self.driver.interrupt()


def _fail(message: str, code: int = 2) -> typer.Exit:
    Console(stderr=True).print(message, style="red", highlight=False, markup=False, soft_wrap=True)
    return typer.Exit(code)


# --------------------------------------------------------------------------- batches list | show


@batches_app.command("list")
def batches_list(
    store: StoreOption = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=1000, help="How many recent batches.")] = 20,
) -> None:
    """Recent batches, newest first: state, rows done of all, cost."""
    opened = _open(store)
    try:
        table = Table()
        for column in ("batch", "workflow", "state", "done", "rows", "failed", "cost $"):
            table.add_column(column)
        for batch_id in opened.batch_ids(limit):
            header = opened.header(batch_id)
            state = opened.state(batch_id)
            totals = opened.totals(batch_id)
            failed = totals.done - totals.by_status.get("succeeded", 0)
            table.add_row(
                batch_id,
                header.workflow if header else "?",
                state[0] if state else "created",
                f"{totals.done:,}",
                f"{header.rows:,}" if header else "?",
                f"{failed:,}",
                f"{totals.cost_usd:.4f}",
            )
    finally:
        opened.close()
    Console(width=None if sys.stdout.isatty() else 150).print(table)


@batches_app.command("show")
def batches_show(batch_id: Annotated[str, typer.Argument(help="The batch id.")], store: StoreOption = None) -> None:
    """One batch: its inputs, options, state, counts, cost and its last session's summary."""
    opened = _open(store)
    try:
        header = opened.header(batch_id)
        if header is None:
            raise _fail(f"no batch {batch_id!r} in the store")
        state = opened.state(batch_id)
        totals = opened.totals(batch_id)
    finally:
        opened.close()
    console = Console(width=None if sys.stdout.isatty() else 150)

    def say(text: str) -> None:
        console.print(text, highlight=False, markup=False, soft_wrap=True)

    say(f"batch {batch_id}: workflow {header.workflow} ({header.source})")
    say(f"inputs: {header.inputs_path} ({header.inputs_format}, {header.rows:,} rows)")
    say("options: " + json.dumps(header.options, default=str))
    say(f"state: {state[0] if state else 'created'}" + (f" ({state[1].get('reason')})" if state else ""))
    parts = ", ".join(f"{k} {v:,}" for k, v in sorted(totals.by_status.items())) or "none"
    say(f"rows: {parts}; not run {max(0, header.rows - totals.done):,}")
    say(f"cost: ${totals.cost_usd:.4f}")
    session = ((state[1] if state else {}).get("report") or {}).get("session") or {}
    for failure in session.get("failures") or []:
        say(f"  {failure['count']:>6,}  {failure['sample']}  (rows {failure['example_rows']})")
    if header.rows > totals.done:
        say(f"continue with: modelyard batch --resume {batch_id}")


def _open(store: str | None) -> BatchStore:
    try:
        return open_batch_store(store)
    except (ModelyardError, ValueError, OSError) as exc:
        raise _fail(str(exc)) from None


if __name__ == "__main__":
    app()
