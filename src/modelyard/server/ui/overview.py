"""The overview page (`/ui/`): live rates, errors, latency percentiles and cost over a range, by model,
deployment and key. Every figure is `admin_traffic.overview_data`'s (the `/admin/overview` answer); this
module only turns it into charts and links."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from markupsafe import Markup

from modelyard.server.admin_traffic import NARROW, RANGES, overview_data
from modelyard.server.ui.app import PREFIX, Page, UiApp, UiRequest
from modelyard.server.ui.charts import line_chart
from modelyard.server.ui.render import milliseconds, money

#: The request log's filter name for each breakdown dimension.
_LOG_FILTER = {"model": "model", "deployment": "deployment", "key": "key"}


def _axis_money(usd: float) -> str:
    """A cost on the chart's axis, short enough for its margin ($0.00075, not $0.000750)."""
    return money(usd) if usd >= 1 or usd == 0 else f"${usd:.2g}"


def _charts(series: list[dict[str, Any]]) -> dict[str, Markup]:
    def points(name: str, *, gaps: bool = False) -> list[tuple[float, float | None]]:
        # Latency has no value in a bucket without traffic (a gap, not a zero); rates and cost are 0 there.
        return [(b["t"], b[name] if not gaps or b["requests"] else None) for b in series]

    return {
        "rps": line_chart([("requests/s", points("rps"))], title="Requests per second", fmt=lambda v: f"{v:.3g}"),
        "latency": line_chart(
            [("p50", points("p50_ms", gaps=True)), ("p95", points("p95_ms", gaps=True))],
            title="Latency p50 / p95 (bucket-interpolated)",
            fmt=milliseconds,
        ),
        "cost": line_chart([("cost", points("cost_usd"))], title="Cost per bucket", fmt=_axis_money),
    }


def _links(data: dict[str, Any]) -> dict[str, dict[str, dict[str, str]]]:
    """Per dimension and row: the overview narrowed to it, and the request log filtered to it."""
    out: dict[str, dict[str, dict[str, str]]] = {}
    for dim in NARROW:
        out[dim] = {}
        for row in data["by"][dim]:
            name = row["name"]
            if not name:
                continue
            out[dim][name] = {
                "overview": f"{PREFIX}/?{urlencode({'range': data['range'], dim: name})}",
                "requests": f"{PREFIX}/requests?{urlencode({_LOG_FILTER[dim]: name})}",
            }
    return out


async def show_overview(ui: UiRequest) -> Page:
    data = await overview_data(ui.gw, ui.query)
    narrowed = data["narrowed"]
    keep = {narrowed["dim"]: narrowed["value"]} if narrowed else {}
    ranges = [(name, f"{PREFIX}/?{urlencode({'range': name, **keep})}") for name in RANGES]
    return ui.render(
        "overview.html",
        data=data,
        charts=_charts(data["series"]),
        links=_links(data),
        ranges=ranges,
        dims=NARROW,
    )


def install(app: UiApp) -> None:
    """Register this module's pages."""
    app.page("GET", f"{PREFIX}/", show_overview)
