"""Counters of what the simulator served, per model: requests, faults, successes, tokens, wire formats."""

from __future__ import annotations

from typing import Any

from modelyard.sim.fleet import FAULT_NAMES

WIRES: tuple[str, ...] = ("openai", "anthropic", "gemini")


class ModelStats:
    __slots__ = ("by_wire", "faults", "requests", "successes", "tokens_in", "tokens_out")

    def __init__(self) -> None:
        self.requests = 0
        self.successes = 0
        self.tokens_in = 0
        self.tokens_out = 0
        self.faults: dict[str, int] = dict.fromkeys(FAULT_NAMES, 0)
        self.by_wire: dict[str, int] = dict.fromkeys(WIRES, 0)

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "successes": self.successes,
            "faults": dict(self.faults),
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "by_wire": dict(self.by_wire),
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
