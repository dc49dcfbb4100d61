"""Admin API: workflow runs, read from the run store that `modelyard run` writes (the dashboard's Runs pages
call the same query functions).

    GET /admin/runs?limit=50    recent runs, newest first, as `modelyard runs list` shows them
    GET /admin/runs/{id}        one run: `runs show --json`'s result plus each record's offsets on the run's
                                time axis, fan-out items with their timing, the step graph, the context
                                saved by scoping, and the command that resumes it

The run store is a SQLite file another process appends to. The gateway opens it read-only (`mode=ro`: it can
never create, write or write-lock it), in a worker thread, bounded by `state.store_timeout_s` (503
`runs_store_unavailable` past it, the query interrupted). A store file that does not exist yet is an empty
list. Where it is: `ui.runs_store` (relative to the config file), else $MODELYARD_RUNS_DB, else
~/.modelyard/runs.db, as the CLI.

The workflow package is imported by the first runs request, not when the gateway starts: it brings
jsonschema, rich and the engine, about a third more import time for every gateway that never shows a run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import shlex
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from modelyard.schema.errors import GatewayError
from modelyard.server.admin import _services
from modelyard.server.admin_routes import AdminRoutes
from modelyard.server.http import Request, send_json
from modelyard.server.validation import whole_number

if TYPE_CHECKING:
    from modelyard.config.model import Config
    from modelyard.server.app import Gateway
    from modelyard.server.context import RequestContext
    from modelyard.workflows.checkpoint import SqliteReader, StoredRun
    from modelyard.workflows.records import RunResult, StepRecord

log = logging.getLogger("modelyard.admin")

RUNS_PATH = "/admin/runs"
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
#: Run ids as the engine makes them (`20261204-224429-ab12cd`) or `--run-id` gives them: no slash, no
#: leading dot, bounded.
_RUN_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$")
#: A record's output (and a run's inputs/outputs) beyond this many characters of JSON is cut in the answer.
MAX_OUTPUT_CHARS = 2000
MAX_ERROR_CHARS = 1000
#: Fan-out items listed with their timing under each `foreach` step (the rest are counted).
MAX_FANOUT_ITEMS = 1000

T = TypeVar("T")


# --------------------------------------------------------------------------- where the store is


def runs_store_path(config: Config) -> Path:
    """`ui.runs_store` relative to the config file's folder; else the CLI's default."""
    from modelyard.workflows.checkpoint import DEFAULT_STORE

    configured = config.ui.runs_store
    if not configured:
        return Path(os.environ.get("MODELYARD_RUNS_DB") or DEFAULT_STORE).expanduser()
    path = Path(configured).expanduser()
    if path.is_absolute():
        return path
    source = config.source
    base = Path(source).parent if source and not source.startswith("<") else Path()
    return base / path


def resume_command(run_id: str, store: Path) -> str:
    """The exact command that continues the run (`modelyard run --resume`), naming the store unless it is
    the CLI's default."""
    from modelyard.workflows.checkpoint import DEFAULT_STORE

    parts = ["modelyard", "run", "--resume", run_id]
    if store.expanduser().absolute() != DEFAULT_STORE.expanduser().absolute():
        parts += ["--store", str(store.expanduser().absolute())]
    return shlex.join(parts)


def valid_run_id(run_id: str) -> bool:
    return bool(_RUN_ID.match(run_id)) and ".." not in run_id


def parse_limit(raw: str | None) -> int:
    """`limit`: an integer in 1..MAX_LIMIT (400 otherwise)."""
    return whole_number(raw, "limit", 1, MAX_LIMIT, DEFAULT_LIMIT) or DEFAULT_LIMIT


# --------------------------------------------------------------------------- reading, bounded


async def read_run_store(
    gw: Gateway, work: Callable[[SqliteReader, Path], T], missing: T, *, outlines: bool = False
) -> T:
    """`work(reader, store path)` in a worker thread on a read-only connection, within
    `state.store_timeout_s`; `missing` when the store file does not exist (or holds no run table yet).
    Everything runs in the thread, the workflow package's first import included: never on the event loop.
    `outlines`: see SqliteReader."""
    config = gw.config
    opened: list[SqliteReader] = []
    where: list[Path] = []

    def run() -> T:
        from modelyard.workflows.checkpoint import SqliteReader

        path = runs_store_path(config)
        where.append(path)
        try:
            reader = SqliteReader(path, busy_timeout_s=config.state.store_timeout_s, outlines=outlines)
        except FileNotFoundError:
            return missing
        opened.append(reader)
        try:
            return work(reader, path)
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return missing
            raise
        finally:
            reader.close()

    try:
        return await asyncio.wait_for(asyncio.to_thread(run), config.state.store_timeout_s)
    except TimeoutError:
        for reader in opened:
            reader.interrupt()
        raise _unavailable("did not answer in time") from None
    except (sqlite3.Error, ValueError, TypeError, KeyError) as exc:
        log.warning("the run store %s could not be read: %s: %s", where, type(exc).__name__, exc)
        raise _unavailable("could not be read") from None


def _unavailable(why: str) -> GatewayError:
    return GatewayError(503, f"the workflow run store {why}", type="api_error", code="runs_store_unavailable")


# --------------------------------------------------------------------------- query functions


async def runs_data(gw: Gateway, limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
    """Recent runs, newest first: what `modelyard runs list --json` gives, plus each run's step count."""

    def work(reader: SqliteReader, store: Path) -> list[dict[str, Any]]:
        from modelyard.workflows.checkpoint import list_runs

        rows = []
        for row in list_runs(reader, limit):
            header = reader.header(row.run_id)
            steps = len(header.deps) if header is not None else 0
            rows.append({**vars(row), "status": row.status.value, "steps": steps})
        return rows

    return {"object": "list", "data": await read_run_store(gw, work, [], outlines=True)}


async def run_data(gw: Gateway, run_id: str) -> dict[str, Any]:
    """One run (404 for an id that is not in the store or not a run id at all)."""
    if not valid_run_id(run_id):
        raise _not_found(run_id)

    def work(reader: SqliteReader, store: Path) -> dict[str, Any] | None:
        from modelyard.workflows.checkpoint import load_run

        stored = load_run(reader, run_id)
        return None if stored is None else run_detail(stored, store)

    found = await read_run_store(gw, work, None)
    if found is None:
        raise _not_found(run_id)
    return found


def _not_found(run_id: str) -> GatewayError:
    shown = re.sub(r"[^\x20-\x7e]", "?", run_id[:64])
    return GatewayError(404, f"no workflow run `{shown}` in the run store", code="run_not_found")


# --------------------------------------------------------------------------- one run, as JSON


def run_detail(stored: StoredRun, store: Path) -> dict[str, Any]:
    """`result_json` with, per record: offsets (s) from the run's first start, its parent (the fan-out or loop
    it belongs to), the pass-everything tokens and context saved; per fan-out step its items' timing; the
    step graph; the summary; the resume command."""
    from modelyard.workflows.keys import depth
    from modelyard.workflows.records import StepRecord
    from modelyard.workflows.report import full_context_tokens, result_from_stored, result_json

    result = result_from_stored(stored)
    data = result_json(result)
    origin = result.started_at
    full = full_context_tokens(result.leaves)
    sent = {r.key: r.prompt_tokens for r in result.leaves if r.key in full}
    full_by, sent_by = _rollup(full), _rollup(sent)
    items: dict[str, list[StepRecord]] = {}
    for record in result.records.values():
        parent = parent_key(record.key)
        if parent is not None and record.key.endswith("]"):
            items.setdefault(parent, []).append(record)
    # A step that has not started yet (a running or interrupted run) is listed too, as pending.
    waiting = [StepRecord(sid, sid, "") for sid in result.deps if sid not in result.records]
    steps = []
    for record in [*result.records.values(), *waiting]:
        entry = _bounded_record(record.to_dict())
        entry.update(_timing(record, origin))
        entry["parent"] = parent_key(record.key)
        entry["depth"] = depth(record.key)
        full_tokens = full_by.get(record.key, 0)
        entry["pass_everything_tokens"] = full_tokens
        entry["context_saved_tokens"] = max(0, full_tokens - sent_by.get(record.key, 0))
        if record.kind == "foreach":
            own = items.get(record.key, [])
            entry["fanout_total"] = len(own)
            entry["fanout"] = [_item(item, origin) for item in own[:MAX_FANOUT_ITEMS]]
        steps.append(entry)
    data["steps"] = steps
    data["inputs"] = _bounded_values(result.inputs)
    data["outputs"] = _bounded_values(result.outputs)
    data["errors"] = [_cut(str(e), MAX_ERROR_CHARS) for e in result.errors]
    data["rows"] = display_order(result)
    data["dag"] = _graph(result)
    data["summary"] = _summary(data["totals"], sum(full.values()), sum(sent.values()))
    data["resume"] = resume_command(result.run_id, store)
    data["object"] = "workflow.run"
    return data


def parent_key(key: str) -> str | None:
    """The record a key belongs to (workflows/keys.py; imported here, when a run is read)."""
    from modelyard.workflows.keys import parent_key as parent

    return parent(key)


def display_order(result: RunResult) -> list[str]:
    """The steps table's rows, as `runs show` prints them: top-level steps in declared order (those not
    started yet too), each loop followed by its rounds' steps; fan-out items folded into their step."""
    from modelyard.workflows.keys import nested_rows

    rows: list[str] = []
    for key in result.deps:
        rows.append(key)
        record = result.records.get(key)
        if record is not None:
            rows += nested_rows(result.records, key, record.kind)
    return rows


def _graph(result: RunResult) -> dict[str, Any]:
    nodes = []
    for sid in result.deps:
        record = result.records.get(sid)
        nodes.append(
            {
                "id": sid,
                "state": record.state.value if record is not None else "pending",
                "kind": record.kind if record is not None else "",
                "model": record.model if record is not None else None,
                "items": record.items if record is not None else 0,
                "iterations": record.iterations if record is not None else 0,
                "note": _cut(record.note, MAX_ERROR_CHARS) if record is not None else None,
            }
        )
    edges = [{"from": need, "to": sid} for sid, needs in result.deps.items() for need in needs if need in result.deps]
    return {"nodes": nodes, "edges": edges}


def _summary(totals: dict[str, Any], full: int, sent: int) -> dict[str, Any]:
    return {
        "cost_usd": totals["cost_usd"],
        "prompt_tokens": totals["prompt_tokens"],
        "completion_tokens": totals["completion_tokens"],
        "tokens": totals["prompt_tokens"] + totals["completion_tokens"],
        "calls": totals["calls"],
        "cached_calls": totals["cached_calls"],
        "context_tokens_sent": sent,
        "context_tokens_full": full,
        "context_tokens_saved": max(0, full - sent),
        "context_saved_pct": totals["context_saved_pct"],
        "wall_s": totals["wall_s"],
        "critical_path": totals["critical_path"],
        "critical_path_s": totals["critical_path_s"],
    }


def _rollup(figures: dict[str, int]) -> dict[str, int]:
    """Each record's figure: a leaf's own, an aggregate's the sum over its items and rounds (one pass)."""
    totals: dict[str, int] = {}
    for key, value in figures.items():
        cursor: str | None = key
        while cursor is not None:
            totals[cursor] = totals.get(cursor, 0) + value
            cursor = parent_key(cursor)
    return totals


def _timing(record: StepRecord, origin: float) -> dict[str, float | None]:
    start = _offset(record.started_at, origin)
    end = _offset(record.finished_at, origin)
    duration = record.duration_s if start is not None and end is not None else None
    return {"started_offset_s": start, "finished_offset_s": end, "duration_s": duration}


def _offset(moment: float | None, origin: float) -> float | None:
    if moment is None or not isinstance(moment, int | float) or not math.isfinite(moment):
        return None
    return round(moment - origin, 6)


def _item(record: StepRecord, origin: float) -> dict[str, Any]:
    return {
        "key": record.key,
        "state": record.state.value,
        **_timing(record, origin),
        "model": record.model,
        "served_model": record.served_model,
        "deployment": record.deployment,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "cost_usd": record.cost_usd,
        "cached": record.cached,
        "error": _cut(record.error, MAX_ERROR_CHARS),
    }


def _bounded_record(entry: dict[str, Any]) -> dict[str, Any]:
    for name in ("error", "note"):
        entry[name] = _cut(entry.get(name), MAX_ERROR_CHARS)
    entry["output"], entry["output_truncated"] = _bounded(entry.get("output"))
    entry["output_repairs"] = _bounded_values(entry.get("output_repairs") or {})  # as long as an output can be
    return entry


def _bounded_values(values: dict[str, Any]) -> dict[str, Any]:
    return {name: _bounded(value)[0] for name, value in values.items()}


def _bounded(value: Any) -> tuple[Any, bool]:
    """`value`, or its JSON text cut to MAX_OUTPUT_CHARS when longer."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    if len(text) <= MAX_OUTPUT_CHARS:
        return value, False
    return text[:MAX_OUTPUT_CHARS] + "…", True


def _cut(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    return text if len(text) <= limit else text[:limit] + "…"


# --------------------------------------------------------------------------- endpoints


async def list_runs_endpoint(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    await _services(gw, ctx)
    limit = parse_limit(request.query.get("limit"))
    await send_json(request.send, 200, await runs_data(gw, limit))


async def show_run_endpoint(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    await _services(gw, ctx)
    await send_json(request.send, 200, await run_data(gw, request.path[len(RUNS_PATH) + 1 :]))


def install(routes: AdminRoutes) -> None:
    """Register this module's endpoints."""
    routes.add("GET", RUNS_PATH, list_runs_endpoint)
    routes.add_prefixed("GET", RUNS_PATH + "/", show_run_endpoint)
