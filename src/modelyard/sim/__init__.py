"""modelyard.sim: a provider simulator speaking the OpenAI, Anthropic and Gemini wire formats.

The embedded default upstream (`modelyard demo`, no API keys) and the test double of every test: a fleet
of simulated models with realistic latency and injectable faults, deterministic from a seed. See
`docs/simulator.md`.
"""

from modelyard.sim.app import SimApp, create_app
from modelyard.sim.fleet import (
    Faults,
    Fleet,
    FleetError,
    Latency,
    RateLimit,
    SimModel,
    TokenRange,
    default_fleet,
    load_fleet,
)
from modelyard.sim.server import SimServer, run_sim

__all__ = [
    "Faults",
    "Fleet",
    "FleetError",
    "Latency",
    "RateLimit",
    "SimApp",
    "SimModel",
    "SimServer",
    "TokenRange",
    "create_app",
    "default_fleet",
    "load_fleet",
    "run_sim",
]
