"""The admin API's route table: every admin module registers its endpoints here (one list, no edits to
services.py per endpoint). Handlers have the gateway's handler signature and authorise themselves
(`admin._services`: the master key or a key with role admin)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelyard.server.context import Handler


@dataclass
class AdminRoutes:
    exact: dict[tuple[str, str], Handler] = field(default_factory=dict)
    #: (method, prefix) → handler for `prefix` + one path segment (an id), e.g. `/admin/requests/` + id.
    prefixed: list[tuple[str, str, Handler]] = field(default_factory=list)
    #: (method, pattern) → handler for paths with several parameters, e.g. `/admin/runs/{id}/steps/{step}/approve`.
    patterns: list[tuple[str, re.Pattern[str], Handler]] = field(default_factory=list)

    def add(self, method: str, path: str, handler: Handler) -> None:
        self.exact[(method, path)] = handler

    def add_prefixed(self, method: str, prefix: str, handler: Handler) -> None:
        self.prefixed.append((method, prefix, handler))

    def add_pattern(self, method: str, pattern: re.Pattern[str], handler: Handler) -> None:
        self.patterns.append((method, pattern, handler))

    def match(self, method: str, path: str) -> Handler | None:
        for route_method, pattern, handler in self.patterns:
            if method == route_method and pattern.fullmatch(path):
                return handler
        for route_method, prefix, handler in self.prefixed:
            if method == route_method and path.startswith(prefix):
                param = path[len(prefix) :]
                if param and "/" not in param:
                    return handler
        return None


def admin_routes() -> AdminRoutes:
    """Every admin module's endpoints (beyond admin.py's own, which services.py lists)."""
    from modelyard.server import (
        admin_decisions,
        admin_fleet,
        admin_keys,
        admin_recalibration,
        admin_runs,
        admin_traffic,
        admin_whatif,
    )

    routes = AdminRoutes()
    modules = (admin_traffic, admin_keys, admin_fleet, admin_runs, admin_whatif, admin_recalibration, admin_decisions)
    for module in modules:
        module.install(routes)
    return routes
