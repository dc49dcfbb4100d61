"""Admin API: a person's decision for a workflow run's waiting approval step.

    POST /admin/runs/{id}/steps/{step}/approve   {"comment": "..."} (optional)
    POST /admin/runs/{id}/steps/{step}/reject    {"comment": "..."}

The same decision as `modelyard runs approve|reject --no-resume`: written once to the run store's decisions
table (`workflows/approval.py`); the gateway does not run workflows, so the answer names the command that
continues the run. Authorised first (the master key or a key with role admin), the body bounded and decoded
into a typed struct, the store opened in a worker thread within `state.store_timeout_s`. 404 for an unknown run
or step, 409 for a step that is not waiting (or was decided already, or waited past its timeout).
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from modelyard.schema.errors import GatewayError
from modelyard.server.admin import ADMIN_BODY_LIMIT, subject_services
from modelyard.server.admin_routes import AdminRoutes
from modelyard.server.admin_runs import read_run_store, resume_command, runs_store_path, valid_run_id
from modelyard.server.http import Request, send_json

if TYPE_CHECKING:
    from modelyard.server.app import Gateway
    from modelyard.server.context import RequestContext

#: The step may hold `/` (sent as %2F, decoded by the server): a sub-workflow's gate is `review/gate`.
DECISION_PATH = re.compile(r"/admin/runs/([^/]{1,128})/steps/(.{1,256})/(approve|reject)")
#: A step key as the engine makes them: names, loop rounds (`build#2.gate`), fan-out items (`s[3]`),
#: sub-workflow steps (`review[1]/gate`).
_STEP_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.#\[\]/]{0,255}$")


class DecisionBody(msgspec.Struct, forbid_unknown_fields=True):
    comment: str | None = None


async def decide_endpoint(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    _, subject = await subject_services(gw, ctx)
    found = DECISION_PATH.fullmatch(request.path)
    assert found is not None  # the route matched this pattern
    run_id, step, verb = found.groups()
    raw = await request.body(ADMIN_BODY_LIMIT)
    body = _decode(raw)
    if not valid_run_id(run_id) or not _STEP_KEY.match(step):
        raise GatewayError(404, "no such workflow run or step", code="run_not_found")
    await send_json(request.send, 200, await _decide(gw, run_id, step, verb == "approve", body.comment, subject))


def _decode(raw: bytes) -> DecisionBody:
    if not raw.strip():
        return DecisionBody()
    try:
        return msgspec.json.decode(raw, type=DecisionBody)
    except msgspec.ValidationError as exc:
        raise GatewayError(400, f"invalid decision body: {exc}", param="comment", code="invalid_request") from None
    except msgspec.DecodeError as exc:
        raise GatewayError(400, f"Invalid JSON body: {exc}", code="invalid_json") from None


async def _decide(
    gw: Gateway, run_id: str, step: str, approved: bool, comment: str | None, subject: str
) -> dict[str, Any]:
    config = gw.config
    timeout = config.state.store_timeout_s
    # Read first, through the admin API's read-only reader: a hostile path never writes to the run store.
    if not await read_run_store(gw, lambda reader, _: reader.header(run_id) is not None, False):
        raise GatewayError(404, "no such workflow run", code="run_not_found")

    def work() -> dict[str, Any]:
        from modelyard.workflows.approval import DecisionError, decide
        from modelyard.workflows.checkpoint import SqliteStore

        path = runs_store_path(config)
        store = SqliteStore(path, busy_timeout_s=timeout)  # written only for a run that exists
        try:
            key, made = decide(store, run_id, step, approved=approved, comment=comment, decided_by=f"admin:{subject}")
        except DecisionError as exc:
            raise GatewayError(exc.status, exc.message, code=exc.code) from None
        finally:
            store.close()
        return _answer(run_id, key, made, path)

    try:
        return await asyncio.wait_for(asyncio.to_thread(work), timeout)
    except TimeoutError:
        raise GatewayError(503, "the workflow run store did not answer in time", type="api_error") from None
    except (OSError, sqlite3.Error) as exc:
        raise GatewayError(
            503, f"the workflow run store cannot be written: {type(exc).__name__}", type="api_error"
        ) from None


def _answer(run_id: str, key: str, made: dict[str, Any], store: Path) -> dict[str, Any]:
    return {
        "object": "workflow.decision",
        "run_id": run_id,
        "step": key,
        **made,
        "resume": resume_command(run_id, store),
    }


def install(routes: AdminRoutes) -> None:
    """Register this module's endpoints."""
    routes.add_pattern("POST", DECISION_PATH, decide_endpoint)
