"""`modelyard accept SUITE`: run an acceptance suite against every candidate model and report pass rates.

Exit codes: 0 the run finished and every `--require`d model is accepted for every task; 1 a required
model is not (or was not run); 2 the suite, the config or an option is invalid (`file:line: key: message`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from modelyard.acceptance.api import AcceptOptions, accept
from modelyard.acceptance.cache import DEFAULT_PATH
from modelyard.acceptance.html import render_html
from modelyard.acceptance.outcome import CaseRun
from modelyard.acceptance.report import Report, incomplete_cells, quality_results, write_json
from modelyard.acceptance.runner import RunOptions
from modelyard.acceptance.spec import Suite, load_suite
from modelyard.acceptance.terminal import matrix, summary
from modelyard.config.loader import ConfigError, ConfigErrors
from modelyard.schema.errors import ModelyardError

app = typer.Typer(no_args_is_help=True)
err = Console(stderr=True)


def _names(values: list[str] | None) -> list[str] | None:
    """`--models a,b --models c` → [a, b, c]."""
    if not values:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def _fail(exc: Exception) -> typer.Exit:
    errors = exc.errors if isinstance(exc, ConfigErrors) else [exc]
    for error in errors:
        err.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True)
    return typer.Exit(code=2)


@app.command("accept")
def accept_command(
    suite_path: Annotated[Path, typer.Argument(metavar="SUITE", help="The suite YAML (modelyard.acceptance/v1).")],
    models: Annotated[
        list[str] | None,
        typer.Option("--models", "-m", help="Models or deployments to test, comma-separated (default: the route's)."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Gateway config (default: the suite's, else the demo).")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=512, help="Case runs in flight at once.")] = 8,
    repeat: Annotated[int, typer.Option(min=1, max=1000, help="Runs per case (seed = repeat index).")] = 1,
    budget_usd: Annotated[
        float | None, typer.Option("--budget-usd", min=0.0, help="Stop launching case runs past this spend.")
    ] = None,
    cache: Annotated[Path, typer.Option("--cache", help="Answer cache (SQLite).")] = DEFAULT_PATH,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the answer cache.")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON.")] = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="Write a self-contained HTML report.")] = None,
    write_quality: Annotated[
        Path | None, typer.Option("--write-quality", help="Write per-deployment task quality (`quality_from:`).")
    ] = None,
    require: Annotated[
        list[str] | None, typer.Option("--require", help="Exit 1 unless these models pass every task.")
    ] = None,
    judge_model: Annotated[str | None, typer.Option("--judge-model", help="Model for `judge` assertions.")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", min=0.1, help="Seconds per case request.")] = None,
) -> None:
    """Run an acceptance suite: every case against every model, a pass-rate matrix (model x task)."""
    try:
        suite = load_suite(suite_path)
    except ConfigError as exc:
        raise _fail(exc) from None
    options = AcceptOptions(
        config=config,
        models=_names(models),
        run=RunOptions(concurrency=concurrency, repeat=repeat, budget_usd=budget_usd, judge_model=judge_model),
        cache_path=None if no_cache else cache,
        timeout_s=timeout,
    )
    required = _names(require) or []
    try:
        report = _run(suite, options)
    except ModelyardError as exc:
        raise _fail(exc) from None
    _outputs(report, suite, json_out, html_out, write_quality)
    missing = [name for name in required if name not in report.targets]
    failed = [name for name in required if name in report.targets and not report.accepted(name)]
    if missing:
        err.print(f"[bold red]required but not run:[/] {escape(', '.join(missing))}")
    if failed:
        err.print(f"[bold red]required but not accepted:[/] {escape(', '.join(failed))}")
    if missing or failed:
        raise typer.Exit(code=1)


def _run(suite: Suite, options: AcceptOptions) -> Report:
    out = Console()
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0, "cached": 0}
    bar = progress.add_task(suite.spec.name, total=None, status="")

    def on_start(total: int) -> None:
        progress.update(bar, total=total)

    def on_progress(run: CaseRun) -> None:
        counts[run.status] += 1
        counts["cached"] += bool(run.answer is not None and run.answer.cached)
        status = " ".join(f"{name} {n}" for name, n in counts.items() if n)
        progress.update(bar, advance=1, status=status)

    with progress:
        report = asyncio.run(accept(suite, options, on_start=on_start, on_progress=on_progress))
    out.print(matrix(report))
    out.print(summary(report))
    return report


def _outputs(report: Report, suite: Suite, json_out: Path | None, html_out: Path | None, quality: Path | None) -> None:
    if json_out is not None:
        write_json(json_out, report.to_dict())
        err.print(f"report: {json_out}")
    if html_out is not None:
        html_out.parent.mkdir(parents=True, exist_ok=True)
        html_out.write_text(render_html(report), encoding="utf-8")
        err.print(f"HTML report: {html_out}")
    if quality is not None:
        results = quality_results(report, suite)
        write_json(quality, results)
        err.print(f"quality: {quality} (reference it from the gateway config as `quality_from:`)")
        short = incomplete_cells(results)
        if short:
            cells = ", ".join(
                f"{name}/{task} ({n} run)" if n == 1 else f"{name}/{task} ({n} runs)" for name, task, n in short
            )
            err.print(
                f"[bold yellow]not accepted, incomplete:[/] {escape(cells)}: the budget stopped the run before "
                "every planned case ran; written with `complete: false, accepted: false` (rerun without the cap)",
                soft_wrap=True,
            )
