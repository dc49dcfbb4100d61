"""Every page module of the dashboard, registered on one UiApp."""

from __future__ import annotations

from typing import TYPE_CHECKING

from modelyard.server.ui import auth, fleet, keys, overview, requests, runs, whatif
from modelyard.server.ui.app import UiApp

if TYPE_CHECKING:
    from modelyard.config.model import UiSettings
    from modelyard.server.access import Access


def build(settings: UiSettings, access: Access) -> UiApp:
    app = UiApp(settings, access)
    for module in (auth, overview, requests, keys, fleet, runs, whatif):
        module.install(app)
    return app
