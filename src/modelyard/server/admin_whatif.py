"""Admin API: whatif (JSON; the dashboard's pages call the same query functions). (Filled in by its owner.)"""

from __future__ import annotations

from modelyard.server.admin_routes import AdminRoutes


def install(routes: AdminRoutes) -> None:
    """Register this module's endpoints."""
