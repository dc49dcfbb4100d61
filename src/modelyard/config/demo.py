"""The embedded default config: a gateway over the provider simulator (no keys, no network)."""

from __future__ import annotations

import os
from pathlib import Path

from modelyard.config.loader import parse_config
from modelyard.config.model import Config

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "defaults" / "demo.yaml"


def demo_config_text(sim_url: str) -> str:
    return DEMO_CONFIG.read_text(encoding="utf-8").replace("${SIM_URL}", sim_url.rstrip("/"))


def demo_config(sim_url: str) -> Config:
    """The demo config, pointed at a running simulator."""
    env = dict(os.environ)
    env["SIM_URL"] = sim_url.rstrip("/")
    return parse_config(DEMO_CONFIG.read_text(encoding="utf-8"), source=str(DEMO_CONFIG), env=env)
