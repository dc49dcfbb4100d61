"""The pass-rate matrix on the terminal: one row per model, one column per task."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from modelyard.acceptance.report import Cell, Report


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _cell(cell: Cell) -> str:
    if cell.samples == 0:
        return f"[dim]not run ({cell.skipped} skipped)[/dim]"
    low, high = cell.interval
    colour = "green" if cell.accepted else "red"
    p50 = "-" if cell.p50_ms is None else f"{cell.p50_ms:.0f}ms"
    text = (
        f"[{colour}]{_pct(cell.pass_rate)}[/{colour}] [dim]{_pct(low)}-{_pct(high)}[/dim]\n"
        f"${cell.cost_usd:.5f} p50 {p50}"
    )
    if cell.cached:
        text += f"\n[dim]{cell.cached} cached[/dim]"
    if cell.errors:
        text += f"\n[yellow]{cell.errors} errors[/yellow]"
    return text


def matrix(report: Report) -> Table:
    table = Table(title=f"acceptance: {escape(report.suite)}", show_lines=True)
    table.add_column("model")
    for task in report.tasks:
        floor = report.cells[(report.targets[0], task)].min_pass_rate if report.targets else 0.0
        table.add_column(f"{escape(task)}\n[dim]min {_pct(floor)}[/dim]")
    for target in report.targets:
        verdict = "[green]accepted[/green]" if report.accepted(target) else "[red]rejected[/red]"
        table.add_row(f"{escape(target)}\n{verdict}", *(_cell(report.cell(target, task)) for task in report.tasks))
    return table


def summary(report: Report) -> str:
    r = report.result
    line = (
        f"{len(r.runs)} case runs in {r.elapsed_s:.1f}s, ${r.spent_usd:.5f} spent"
        f" (judge ${r.judge_usd:.5f}), {r.cache_hits} cached"
    )
    if r.budget_skipped:
        line += f"; [yellow]budget ${r.budget_usd:g} reached: {r.budget_skipped} case runs not run[/yellow]"
    return line
