"""Build the gateway from a config file; `app_from_env` is uvicorn's factory for `--workers N`."""

from __future__ import annotations

import os
from typing import Any

from modelyard.config.demo import DEMO_CONFIG, demo_config
from modelyard.config.loader import load_config
from modelyard.config.model import Config
from modelyard.server.app import Gateway


def build_gateway(config: Config, **kwargs: Any) -> Gateway:
    """The gateway with the services its config asks for (prices, keys, budgets, spend log, metrics)."""
    from modelyard.server.services import build_services

    services = build_services(config, kwargs.pop("router", None))
    observer = services.observer(kwargs.pop("observer", None))
    return Gateway(config, router=services.router, observer=observer, services=services, **kwargs)


__all__ = ["DEMO_CONFIG", "app_from_env", "build_gateway", "demo_config"]


def app_from_env() -> Gateway:
    """uvicorn factory: reads $MODELYARD_CONFIG (set by `modelyard serve`)."""
    gateway = build_gateway(load_config(os.environ.get("MODELYARD_CONFIG")))
    gateway.tune_gc = True  # this process serves only the gateway
    return gateway
