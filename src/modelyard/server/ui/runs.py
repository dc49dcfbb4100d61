"""The dashboard's Runs pages: the workflow runs in the run store, and one run's graph, timeline and steps.

Both are clients of the admin API's query functions (server/admin_runs.py): every figure comes from
`runs_data` / `run_data`, the same dicts `GET /admin/runs[/{id}]` answers with.
"""

from __future__ import annotations

from typing import Any

from modelyard.server.admin_runs import parse_limit, run_data, runs_data
from modelyard.server.ui.app import PREFIX, Page, UiApp, UiRequest
from modelyard.server.ui.graphs import dag, gantt

#: Bars drawn on a run's timeline; a larger fan-out is cut there (the steps table and the API keep all).
MAX_BARS = 300

#: A run's status → its badge class (static/ui.css).
_RUN_BADGE = {
    "succeeded": "finished",
    "running": "running",
    "failed": "failed",
    "partial": "cancelled",
    "stopped": "cancelled",
    "interrupted": "cancelled",
}
#: A step's state → its badge class.
_STEP_BADGE = {
    "succeeded": "finished",
    "failed": "failed",
    "cancelled": "failed",
    "running": "running",
    "interrupted": "cancelled",
    "stopped": "cancelled",
    "blocked": "skip",
    "skipped": "skip",
    "pending": "pending",
}


def run_badge(status: str) -> str:
    return _RUN_BADGE.get(status, "pending")


def step_badge(state: str) -> str:
    return _STEP_BADGE.get(state, "pending")


async def runs_page(ui: UiRequest) -> Page:
    limit = parse_limit(ui.query.get("limit"))
    runs = (await runs_data(ui.gw, limit))["data"]
    live = any(run["status"] == "running" for run in runs)
    return ui.render("runs.html", runs=runs, limit=limit, live=live, run_badge=run_badge)


async def run_page(ui: UiRequest) -> Page:
    run = await run_data(ui.gw, ui.param)
    by_key = {step["key"]: step for step in run["steps"]}
    rows = [by_key[key] for key in run["rows"] if key in by_key]
    bars, hidden = timeline_bars(rows)
    return ui.render(
        "run.html",
        run=run,
        rows=rows,
        graph=dag(run["dag"]["nodes"], run["dag"]["edges"]),
        timeline=gantt(bars),
        bars=len(bars),
        hidden_bars=hidden,
        live=run["status"] == "running",
        run_badge=run_badge,
        step_badge=step_badge,
    )


def timeline_bars(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """One bar per step row and per fan-out item (each after its step), at most MAX_BARS; and how many were
    left out."""
    bars: list[dict[str, Any]] = []
    total = 0
    for step in rows:
        entries = [_bar(step, step["key"], step["depth"])]
        for item in step.get("fanout") or []:
            entries.append(_bar(item, item["key"][len(step["key"]) :], step["depth"] + 1))
        total += len(entries) + max(0, int(step.get("fanout_total", 0)) - len(step.get("fanout") or []))
        bars.extend(entries[: max(0, MAX_BARS - len(bars))])
    return bars, total - len(bars)


def _bar(record: dict[str, Any], label: str, depth: int) -> dict[str, Any]:
    return {
        "key": record["key"],
        "label": label,
        "state": record["state"],
        "start_s": record.get("started_offset_s"),
        "end_s": record.get("finished_offset_s"),
        "depth": depth,
    }


def install(app: UiApp) -> None:
    """Register this module's pages."""
    app.page("GET", f"{PREFIX}/runs", runs_page)
    app.prefixed("GET", f"{PREFIX}/runs/", run_page)
