"""The dashboard's requests page(s). (Filled in by its owner.)"""

from __future__ import annotations

from modelyard.server.ui.app import UiApp


def install(app: UiApp) -> None:
    """Register this module's pages."""
