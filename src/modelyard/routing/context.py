"""The inputs of one routing decision, gathered so filters and strategies stay pure functions of them."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from modelyard.accounting.prices import estimate_cost_usd
from modelyard.config.model import Deployment, Price
from modelyard.routing.features import RequestFeatures
from modelyard.routing.health import HealthTracker
from modelyard.routing.limits import DeploymentLimits


@dataclass(slots=True)
class Skip:
    deployment: str
    reason: str


#: Learned quality per deployment for this request (filled by the `learned` strategy's predictor).
QualityFn = Callable[[Deployment], float | None]


@dataclass(slots=True)
class DecisionContext:
    """Everything a decision reads. `now` is passed in: nothing inside a decision reads a clock."""

    features: RequestFeatures
    health: HealthTracker
    limits: DeploymentLimits
    now: float
    rng: random.Random
    prices: dict[str, Price | None]
    constraints: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    explain: bool = False
    skipped: list[Skip] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    quality: QualityFn | None = None

    def skip(self, dep: Deployment, reason: str) -> None:
        self.skipped.append(Skip(dep.name, reason))

    def note(self, dep: Deployment, text: str) -> None:
        if self.explain:
            self.notes[dep.name] = text

    def estimated_cost(self, dep: Deployment) -> float:
        features = self.features
        return estimate_cost_usd(features.prompt_tokens, features.output_estimate(), self.prices.get(dep.name))

    def quality_of(self, dep: Deployment) -> float | None:
        if self.quality is not None:
            learned = self.quality(dep)
            if learned is not None:
                return learned
        return dep.quality_for(self.features.task)
