"""The dashboard's keys pages: the list with a create form and revoke buttons (`/ui/keys`), and one key with
its spend, usage charts and an edit form (`/ui/keys/{id}`).

Every figure comes from the admin API's query functions (admin.py: keys_data, create_key_data,
revoke_key_data; admin_keys.py: key_data, update_key_data), called in-process with the same validation the
JSON endpoints apply; a form only turns its text fields into the JSON body those functions take. A new key's
raw value is shown in the answer to the create form and never again (the store holds only its hash).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from markupsafe import Markup

from modelyard.schema.errors import GatewayError
from modelyard.server.access import has_admin_role
from modelyard.server.admin import create_key_data, keys_data, revoke_key_data
from modelyard.server.admin_keys import RANGES, key_data, update_key_data, usage_range
from modelyard.server.ui import charts
from modelyard.server.ui.app import PREFIX, Page, UiApp, UiRequest
from modelyard.server.ui.render import money

KEYS = f"{PREFIX}/keys"
REVOKE = f"{KEYS}/revoke"
_NUMBER_TEXT = 64
#: The create form's fields, as the page keeps them after a refusal.
_CREATE_FIELDS = ("name", "models", "rpm", "tpm", "budget_usd", "period", "expires_in", "role")
_EDIT_FIELDS = ("name", "models", "rpm", "tpm", "budget_usd", "period", "expires_in", "never_expires", "role")


def is_master(ui: UiRequest) -> bool:
    """The master key's sessions (only they may make admin keys)."""
    return ui.viewer is not None and ui.viewer.master


def form_number(text: str) -> int | float | str | None:
    """A number field as JSON would carry it: blank → None, an integer, a decimal, or (when it is neither, or
    too long) the text itself, for the admin API's checks to refuse with their own message."""
    text = text.strip()
    if not text:
        return None
    if len(text) > _NUMBER_TEXT:
        return text[:_NUMBER_TEXT]
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def duration_text(seconds: float | None) -> str:
    """A period as the forms accept it back: 30d, 12h, 90m or seconds."""
    if seconds is None:
        return ""
    for unit, width in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= width and seconds % width == 0:
            return f"{int(seconds // width)}{unit}"
    return f"{seconds:g}"


def create_body(form: dict[str, str]) -> dict[str, Any]:
    """The POST /admin/keys body of the create form (blank fields left out)."""
    body: dict[str, Any] = {"name": form.get("name", "")}
    for name in ("models", "period", "expires_in"):
        if form.get(name, "").strip():
            body[name] = form[name].strip()
    for name in ("rpm", "tpm", "budget_usd"):
        value = form_number(form.get(name, ""))
        if value is not None:
            body[name] = value
    if form.get("role") == "admin":
        body["metadata"] = {"role": "admin"}
    return body


def edit_body(form: dict[str, str], *, master: bool) -> dict[str, Any]:
    """The PATCH /admin/keys/{id} body of the edit form: a blank limit clears it, a blank expiry keeps it
    (`never_expires` clears it), the admin role only from the master key's form."""
    body: dict[str, Any] = {
        "name": form.get("name", ""),
        "models": form.get("models", "").strip() or None,
        "period": form.get("period", "").strip() or None,
    }
    for name in ("rpm", "tpm", "budget_usd"):
        body[name] = form_number(form.get(name, ""))
    if form.get("never_expires") == "1":
        body["expires_at"] = None
    elif form.get("expires_in", "").strip():
        body["expires_in"] = form["expires_in"].strip()
    if master:
        body["metadata"] = {"role": "admin" if form.get("role") == "admin" else None}
    return body


def _row(entry: dict[str, Any]) -> dict[str, Any]:
    """A key of keys_data as the table shows it."""
    spend = entry.get("spend")
    budget = entry.get("budget_usd")
    spent = spend["spent_usd"] if spend else None
    return {
        **entry,
        "models_text": ", ".join(entry.get("models") or []) or "all",
        "bar": charts.share_bar(spent, budget) if spent is not None and budget is not None else Markup(""),
        "budget_text": f"{money(spent or 0.0)} of {money(budget)} this period" if budget is not None else "no budget",
        "admin": (entry.get("metadata") or {}).get("role", "").strip().lower() == "admin",
    }


async def _list_page(
    ui: UiRequest,
    *,
    status: int = 200,
    new_key: dict[str, Any] | None = None,
    problem: str | None = None,
    values: dict[str, str] | None = None,
) -> Page:
    include_revoked = ui.query.get("all", "") in ("1", "true")
    data = await keys_data(ui.gw, include_revoked=include_revoked)
    notice = None
    if new_key is not None:
        notice = f"Key {new_key['name']} created. Copy it now: it is shown this once."
    elif ui.query.get("revoked"):
        notice = "Key revoked."
    return ui.render(
        "keys.html",
        status,
        keys=[_row(entry) for entry in data["data"]],
        include_revoked=include_revoked,
        new_key=new_key,
        notice=notice,
        problem=problem,
        values={name: (values or {}).get(name, "") for name in _CREATE_FIELDS},
        master=is_master(ui),
    )


async def show_keys(ui: UiRequest) -> Page:
    return await _list_page(ui)


async def create_key(ui: UiRequest) -> Page:
    try:
        made = await create_key_data(ui.gw, create_body(ui.form), master=is_master(ui))
    except GatewayError as error:
        if error.status not in (400, 403):
            raise
        return await _list_page(ui, status=error.status, problem=error.message, values=ui.form)
    return await _list_page(ui, new_key=made)


async def revoke_key(ui: UiRequest) -> Page:
    key_id = ui.form.get("id", "")
    await revoke_key_data(ui.gw, key_id, master=is_master(ui))
    return ui.redirect(f"{KEYS}?revoked={quote(key_id[:64], safe='')}")


def _axis_usd(value: float) -> str:
    """A cost axis label short enough for the chart's margin (0.00075, 12, 1,250)."""
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


def _form_values(entry: dict[str, Any]) -> dict[str, str]:
    """The edit form's fields for a key as stored."""
    return {
        "name": str(entry["name"]),
        "models": ", ".join(entry.get("models") or []),
        "rpm": "" if entry.get("rpm") is None else str(entry["rpm"]),
        "tpm": "" if entry.get("tpm") is None else str(entry["tpm"]),
        "budget_usd": "" if entry.get("budget_usd") is None else f"{entry['budget_usd']:g}",
        "period": duration_text(entry.get("period_s")),
        "expires_in": "",
        "never_expires": "",
        "role": "admin" if (entry.get("metadata") or {}).get("role", "").strip().lower() == "admin" else "",
    }


async def _key_page(
    ui: UiRequest, *, status: int = 200, problem: str | None = None, values: dict[str, str] | None = None
) -> Page:
    range_name = usage_range(ui.query.get("range"))
    data = await key_data(ui.gw, ui.param, range_name)
    usage = data["usage"]
    points = usage["points"]
    spend = data.get("spend")
    budget = data.get("budget_usd")
    shown = values if values is not None else _form_values(data)
    return ui.render(
        "key.html",
        status,
        key=data,
        models_text=", ".join(data.get("models") or []) or "all",
        period_text=duration_text(data.get("period_s")) or "30d",
        metadata=sorted((data.get("metadata") or {}).items()),
        spend=spend,
        bar=charts.share_bar(spend["spent_usd"], budget) if spend and budget is not None else Markup(""),
        requests_chart=charts.line_chart(
            [("requests", [(p["t"], float(p["requests"])) for p in points])],
            title=f"Requests per {usage['grain']}",
            fmt=lambda v: f"{v:,.0f}",
            whole=True,
        ),
        cost_chart=charts.line_chart(
            [("cost", [(p["t"], float(p["cost_usd"])) for p in points])],
            title=f"Cost per {usage['grain']} (USD)",
            fmt=_axis_usd,
        ),
        usage=usage,
        ranges=list(RANGES),
        range_name=range_name,
        problem=problem,
        notice="Key updated." if ui.query.get("updated") and problem is None else None,
        values={name: shown.get(name, "") for name in _EDIT_FIELDS},
        master=is_master(ui),
        editable=data["status"] != "revoked" and (is_master(ui) or not has_admin_role(data.get("metadata") or {})),
    )


async def show_key(ui: UiRequest) -> Page:
    return await _key_page(ui)


async def edit_key(ui: UiRequest) -> Page:
    master = is_master(ui)
    try:
        await update_key_data(ui.gw, ui.param, edit_body(ui.form, master=master), master=master)
    except GatewayError as error:
        if error.status not in (400, 403):
            raise
        return await _key_page(ui, status=error.status, problem=error.message, values=ui.form)
    return ui.redirect(f"{KEYS}/{quote(ui.param, safe='')}?updated=1")


def install(app: UiApp) -> None:
    """Register this module's pages."""
    app.page("GET", KEYS, show_keys)
    app.page("POST", KEYS, create_key)
    app.page("POST", REVOKE, revoke_key)
    app.prefixed("GET", KEYS + "/", show_key)
    app.prefixed("POST", KEYS + "/", edit_key)
