"""The Deployments page (`/ui/deployments`): every deployment's breaker, cooldown, error rate, latency, limits'
headroom and price, and every model's routing. Every figure is `admin_fleet.deployments_data`'s (the
`/admin/deployments` answer); this module only adds the headroom bars."""

from __future__ import annotations

from typing import Any

from markupsafe import Markup

from modelyard.server.admin_fleet import deployments_data
from modelyard.server.ui.app import PREFIX, Page, UiApp, UiRequest
from modelyard.server.ui.charts import share_bar


def _used(left: float | None, capacity: float | None) -> float | None:
    return None if left is None or capacity is None else max(0.0, capacity - left)


def headroom_bars(row: dict[str, Any]) -> dict[str, Markup]:
    """Used vs limit for each limit the deployment has (requests, tokens, concurrent calls)."""
    room = row["headroom"]
    limits = row["limits"]
    bars = {
        "rpm": share_bar(_used(room["rpm_left"], room["rpm_capacity"]), room["rpm_capacity"]),
        "tpm": share_bar(_used(room["tpm_left"], room["tpm_capacity"]), room["tpm_capacity"]),
        "concurrency": share_bar(
            float(row["in_flight"]) if limits["max_concurrency"] is not None else None, limits["max_concurrency"]
        ),
    }
    return {name: bar for name, bar in bars.items() if bar}


async def show_deployments(ui: UiRequest) -> Page:
    data = await deployments_data(ui.gw)
    bars = {row["name"]: headroom_bars(row) for row in data["data"]}
    return ui.render("deployments.html", data=data, bars=bars)


def install(app: UiApp) -> None:
    """Register this module's pages."""
    app.page("GET", f"{PREFIX}/deployments", show_deployments)
