"""Build the gateway from a config file; `app_from_env` is uvicorn's factory for `--workers N`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from modelyard.config.loader import load_config, parse_config
from modelyard.config.model import Config
from modelyard.server.app import Gateway

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "defaults" / "demo.yaml"


def demo_config(sim_url: str) -> Config:
    """The embedded default config, pointed at a running simulator."""
    env = dict(os.environ)
    env["SIM_URL"] = sim_url.rstrip("/")
    return parse_config(DEMO_CONFIG.read_text(encoding="utf-8"), source=str(DEMO_CONFIG), env=env)


def build_gateway(config: Config, **kwargs: Any) -> Gateway:
    """The gateway with the services its config asks for (spend log, keys, metrics)."""
    return Gateway(config, **kwargs)


def app_from_env() -> Gateway:
    """uvicorn factory: reads $MODELYARD_CONFIG (set by `modelyard serve`)."""
    return build_gateway(load_config(os.environ.get("MODELYARD_CONFIG")))
