"""Admin API: the online recalibration's state, read-only (routing/recalibration.py).

    GET /admin/recalibration → {object: "recalibration", refreshed_at, errors, last_error,
                                routes: {<model>: {target, estimated_quality, weight, samples, knob_shift,
                                                   lambda, threshold, explore, corrections: [...]}}}

Read-only on purpose: the state is a fold of the store's feedback rows on every replica, so there is nothing
here to set (a change would be one replica's and gone at its next refresh); it moves only with feedback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelyard.server.admin import _services
from modelyard.server.http import Request, send_json

if TYPE_CHECKING:
    from modelyard.server.admin_routes import AdminRoutes
    from modelyard.server.app import Gateway
    from modelyard.server.context import RequestContext

RECALIBRATION_PATH = "/admin/recalibration"


async def recalibration(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    await _services(gw, ctx)
    recal = gw.current.intelligence.recalibration
    body = recal.snapshot() if recal is not None else {"object": "recalibration", "routes": {}}
    await send_json(request.send, 200, body)


def install(routes: AdminRoutes) -> None:
    """Register this module's endpoint."""
    routes.add("GET", RECALIBRATION_PATH, recalibration)
