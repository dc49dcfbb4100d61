"""The What-if page (`/ui/whatif`): edit one model's routing policy, replay a labelled file through it and the
models to compare, and see each policy's cost and quality on a chart. The options and the results are
`admin_whatif`'s (the `/admin/whatif` answers); the replay runs in a child process, one at a time per process
(the page and the API share the slot), and the form's POST waits for it (up to the replay's timeout)."""

from __future__ import annotations

import re
from typing import Any

from markupsafe import Markup

from modelyard.schema.errors import GatewayError
from modelyard.server.admin_whatif import runner_of, whatif_ask, whatif_options
from modelyard.server.ui.app import PREFIX, Page, UiApp, UiRequest
from modelyard.server.ui.scatter import ScatterPoint, scatter
from modelyard.server.validation import whole_number

_COMPARE = "compare:"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
#: The policy offered when no model is picked to start from.
_EXAMPLE = "strategy: cost\ncandidates: []\nconstraints:\n  min_quality: 0.8\n"


def chart(result: dict[str, Any]) -> Markup:
    """The edited policy, the compared ones and the single-model baselines as three kinds of points."""
    points: list[ScatterPoint] = []
    for policy in result["policies"]:
        kind = "point" if policy.get("policy") == result["name"] else "point-alt"
        points.append((str(policy.get("policy")), policy.get("cost_per_1000_usd"), policy.get("mean_quality"), kind))
    for model in result["models"]:
        points.append(
            (str(model.get("policy")), model.get("cost_per_1000_usd"), model.get("mean_quality"), "point-base")
        )
    return scatter(points)


def _form_body(form: dict[str, str]) -> dict[str, Any]:
    """The form's fields as the API's body (one checkbox field per compared model; limit as a number)."""
    body: dict[str, Any] = {
        "data": form.get("data", ""),
        "policy": form.get("policy", ""),
        "name": form.get("name", "").strip() or "whatif",
        "compare": [key[len(_COMPARE) :] for key, value in form.items() if key.startswith(_COMPARE) and value],
    }
    limit = whole_number(form.get("limit"), "limit", 1, 1_000_000)
    if limit is not None:
        body["limit"] = limit  # the admin API applies its own, tighter bound
    return body


async def _page(
    ui: UiRequest,
    form: dict[str, Any],
    *,
    result: dict[str, Any] | None = None,
    problem: str | None = None,
    status: int = 200,
) -> Page:
    start = ui.query.get("from") if ui.request.method == "GET" else None
    options = await whatif_options(ui.gw, start)
    if not form.get("policy"):
        form["policy"] = options["policy"] or _EXAMPLE
    return ui.render(
        "whatif.html",
        status,
        options=options,
        form=form,
        result=result,
        chart=chart(result) if result is not None else None,
        problem=problem,
    )


async def show_whatif(ui: UiRequest) -> Page:
    start = ui.query.get("from") or ""
    form: dict[str, Any] = {
        "data": "",
        "policy": "",
        # The edited copy beside the original, compared with it (a name the API accepts, whatever the model's).
        "name": f"{_UNSAFE.sub('-', start)[:57]}-edited" if start else "whatif",
        "compare": [start] if start else [],
        "limit": "",
    }
    return await _page(ui, form)


async def run_whatif(ui: UiRequest) -> Page:
    shown: dict[str, Any] = {"limit": ui.form.get("limit", "")[:8]}
    try:
        body = _form_body(ui.form)
        shown.update({k: body[k] for k in ("data", "policy", "name", "compare")})
        ask = whatif_ask(ui.gw.config, body)
        result = await runner_of(ui.gw).run(ui.gw, ask)
    except GatewayError as error:
        shown.setdefault("policy", ui.form.get("policy", ""))
        shown.setdefault("data", ui.form.get("data", ""))
        shown.setdefault("name", ui.form.get("name", ""))
        shown.setdefault("compare", [])
        if error.status in (401, 403, 404):
            raise
        return await _page(ui, shown, problem=error.message, status=error.status)
    return await _page(ui, shown, result=result)


def install(app: UiApp) -> None:
    """Register this module's pages."""
    app.page("GET", f"{PREFIX}/whatif", show_whatif)
    app.page("POST", f"{PREFIX}/whatif", run_whatif)
