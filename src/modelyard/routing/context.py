"""The inputs of one routing decision, gathered so filters and strategies stay pure functions of them."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from modelyard.accounting.prices import estimate_cost_usd
from modelyard.config.model import Deployment, Price
from modelyard.config.routing_options import Constraints, ModelOptions
from modelyard.routing.features import RequestFeatures
from modelyard.routing.health import HealthTracker
from modelyard.routing.limits import DeploymentLimits


class Skip:
    """A candidate left out, and why. The reason is formatted only when someone reads it (explain mode,
    an error message): most skips of a busy gateway are never shown, and formatting is not free."""

    __slots__ = ("_args", "_template", "deployment")

    def __init__(self, deployment: str, template: str, args: tuple[object, ...] = ()) -> None:
        self.deployment = deployment
        self._template = template
        self._args = args

    @property
    def reason(self) -> str:
        return self._template.format(*self._args) if self._args else self._template

    @property
    def template(self) -> str:
        """The reason's template: what kind of reason it is, whatever the numbers."""
        return self._template

    def __repr__(self) -> str:
        return f"Skip({self.deployment!r}, {self.reason!r})"


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
    #: The model's constraints, with the request's overrides merged on (only when it carries some).
    constraints: Constraints = field(default_factory=Constraints)
    options: ModelOptions = field(default_factory=ModelOptions)
    explain: bool = False
    skipped: list[Skip] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    quality: QualityFn | None = None
    #: The learned router's calibrated knobs, used when a `learned` model sets neither `min_quality` nor
    #: `options.lambda` (λ first: it does better than a threshold on every curve measured, docs/routing.md).
    default_min_quality: float | None = None
    default_lambda: float | None = None
    #: A per-model cache for static work (e.g. which candidates meet a quality floor), offered by the
    #: planner only when the candidates are exactly the model's own list, unfiltered; else None.
    static_cache: dict[Any, Any] | None = None
    #: The deployment a session's rendezvous hashing put first (explain: `sticky: <deployment>`).
    sticky: str | None = None
    #: The deployment recalibration's exploration sent this request to (routing/recalibration.py), kept in
    #: the routing trace so an audit sees why a learned route chose a candidate it rates lower.
    explored: str | None = None

    @property
    def session(self) -> str | None:
        """The request's session key when the model keeps sessions sticky (`options.sticky`), else None."""
        return self.features.session if self.options.sticky else None

    def skip(self, dep: Deployment, template: str, *args: object) -> None:
        """Record that `dep` was left out; `template` is a str.format template for `args`."""
        self.skipped.append(Skip(dep.name, template, args))

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
        quality = dep.quality
        if quality is None or isinstance(quality, float):
            return quality
        return dep.quality_for(self.features.task)
