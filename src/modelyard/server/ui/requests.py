"""The request log (`/ui/requests`: filters, keyset pages) and one request's page (`/ui/requests/{id}`: facts,
tokens, the routing explanation, the attempts as a waterfall, the answer's headers, content when logged).
Every figure is `admin_traffic`'s (`/admin/requests`, `/admin/requests/{id}`); this module formats it."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from modelyard.server.admin_traffic import request_data, requests_data
from modelyard.server.ui.app import PREFIX, Page, UiApp, UiRequest
from modelyard.server.ui.charts import waterfall

#: The filter form's fields, in the order shown.
FILTERS = (
    "q",
    "key",
    "model",
    "deployment",
    "status",
    "guardrail",
    "min_cost",
    "min_latency_ms",
    "since",
    "until",
    "limit",
)


def _filters(query: dict[str, str]) -> dict[str, str]:
    return {name: query[name] for name in FILTERS if query.get(name)}


async def show_requests(ui: UiRequest) -> Page:
    data = await requests_data(ui.gw, ui.query)
    filters = _filters(ui.query)
    older = f"{PREFIX}/requests?{urlencode({**filters, 'before': data['next']})}" if data["next"] else None
    newest = f"{PREFIX}/requests?{urlencode(filters)}" if ui.query.get("before") else None
    return ui.render("requests.html", data=data, filters=filters, older=older, newest=newest)


def candidates(route: dict[str, Any], served_by: str | None, attempts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per deployment the routing decision considered: chosen (it answered), kept (ranked, and
    tried or held in reserve) or skipped (with the reason), with the strategy's note when it was explained."""
    notes: dict[str, str] = route.get("notes") or {}
    tried = {a.get("deployment") for a in attempts}
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for rank, name in enumerate(route.get("ranked") or [], 1):
        decision = "chosen" if name == served_by else "kept"
        reason = "answered" if decision == "chosen" else "tried, did not answer" if name in tried else "in reserve"
        rows.append({"name": name, "rank": rank, "decision": decision, "reason": reason, "note": notes.get(name)})
        seen.add(name)
    for pair in route.get("skipped") or []:
        name, reason = [*pair, "", ""][:2]
        rows.append({"name": name, "rank": None, "decision": "skipped", "reason": reason, "note": notes.get(name)})
        seen.add(name)
    for name in [a.get("deployment") for a in attempts]:  # e.g. a fallback model's deployments
        if name and name not in seen:
            decision = "chosen" if name == served_by else "kept"
            rows.append({"name": name, "rank": None, "decision": decision, "reason": "fallback", "note": None})
            seen.add(name)
    return rows


async def show_request(ui: UiRequest) -> Page:
    data = await request_data(ui.gw, ui.param)
    attempts: list[dict[str, Any]] = data["attempts"]
    served_by = data["deployment"] if data["status"] == "ok" else None
    return ui.render(
        "request.html",
        data=data,
        route=data["route"],
        candidates=candidates(data["route"], served_by, attempts),
        waterfall=waterfall(attempts, float(data["latency_ms"] or 0.0)) if attempts else None,
        by_key=f"{PREFIX}/requests?{urlencode({'key': data['key_id']})}" if data["key_id"] else None,
    )


def install(app: UiApp) -> None:
    """Register this module's pages."""
    app.page("GET", f"{PREFIX}/requests", show_requests)
    app.prefixed("GET", f"{PREFIX}/requests/", show_request)
