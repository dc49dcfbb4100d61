"""Counters of what the simulator served, per model: requests, faults, successes, tokens, wire formats, and
what its rate limit admitted and refused with the peak admitted rates (per second, per minute)."""

from __future__ import annotations

from typing import Any

from modelyard.sim.fleet import FAULT_NAMES
from modelyard.sim.rate_limits import PeakRate

WIRES: tuple[str, ...] = ("openai", "anthropic", "gemini")


class ModelStats:
    __slots__ = (
        "accepted",
        "by_wire",
        "faults",
        "per_minute",
        "per_second",
        "rate_limited",
        "requests",
        "successes",
        "tokens_in",
        "tokens_out",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.successes = 0
        self.tokens_in = 0
        self.tokens_out = 0
        self.faults: dict[str, int] = dict.fromkeys(FAULT_NAMES, 0)
        self.by_wire: dict[str, int] = dict.fromkeys(WIRES, 0)
        #: Requests the model's rate limit admitted (all, without one) and refused with a 429.
        self.accepted = 0
        self.rate_limited = 0
        self.per_minute = PeakRate(60.0)
        self.per_second = PeakRate(1.0)

    def admitted(self, now: float) -> None:
        """One request passed the rate limit at `now` (monotonic seconds)."""
        self.accepted += 1
        self.per_minute.add(now)
        self.per_second.add(now)

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "successes": self.successes,
            "faults": dict(self.faults),
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "by_wire": dict(self.by_wire),
            "accepted": self.accepted,
            "rate_limited": self.rate_limited,
            "max_per_minute": self.per_minute.peak,
            "max_per_second": self.per_second.peak,
        }


class Stats:
    """Owned by one app; mutated only on its event loop."""

    def __init__(self, models: list[str]) -> None:
        self.models: dict[str, ModelStats] = {name: ModelStats() for name in models}
        #: Requests refused before reaching a model (unknown model, bad key, bad body).
        self.rejected = 0

    def model(self, name: str) -> ModelStats:
        stats = self.models.get(name)
        if stats is None:
            stats = self.models[name] = ModelStats()
        return stats

    def snapshot(self) -> dict[str, Any]:
        models = {name: s.snapshot() for name, s in self.models.items()}
        return {
            "models": models,
            "totals": {
                "requests": sum(s.requests for s in self.models.values()),
                "successes": sum(s.successes for s in self.models.values()),
                "rejected": self.rejected,
            },
        }
