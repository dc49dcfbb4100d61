"""The one public way to build the gateway: `modelyard.create_app(config)`.

`app_from_env` is only uvicorn's factory for `modelyard serve --workers N` (it reads the config path that
`serve` put in $MODELYARD_CONFIG).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from modelyard.config.loader import load_config
from modelyard.config.model import Config
from modelyard.server.app import Gateway

__all__ = ["create_app"]


def create_app(config: Config | str | os.PathLike[str], **kwargs: Any) -> Gateway:
    """The gateway (an ASGI app) with the services its config asks for: prices, keys, budgets, spend log,
    metrics. `config` is a loaded `Config` or the path of a YAML file. Keyword arguments are for tests
    and embedders: `router=` (a prebuilt Router), `observer=` (an extra request observer), and
    `Gateway`'s own options."""
    from modelyard.server.services import build_services

    if isinstance(config, str | Path | os.PathLike):
        config = load_config(config)
    services = build_services(config, kwargs.pop("router", None))
    observer = services.observer(kwargs.pop("observer", None))
    return Gateway(config, router=services.router, observer=observer, services=services, **kwargs)


def app_from_env() -> Gateway:
    """uvicorn's factory: reads $MODELYARD_CONFIG (set by `modelyard serve`)."""
    from modelyard.server.serving import WATCH_ENV

    gateway = create_app(load_config(os.environ.get("MODELYARD_CONFIG")))
    gateway.tune_gc = True  # this process serves only the gateway
    gateway.owns_process = True  # its signals: SIGTERM drains, SIGHUP reloads
    gateway.watch = os.environ.get(WATCH_ENV) == "1"
    return gateway
