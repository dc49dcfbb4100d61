"""Builders shared by the routing unit tests."""

from __future__ import annotations

import random
from typing import Any

from modelyard.config.model import Config, Deployment, Limits, ModelGroup, Price
from modelyard.config.routing_options import Constraints, ModelOptions, as_struct
from modelyard.routing.context import DecisionContext
from modelyard.routing.features import RequestFeatures
from modelyard.routing.health import HealthTracker
from modelyard.routing.limits import DeploymentLimits


def dep(name: str, *, price: tuple[float, float] = (1.0, 1.0), **kwargs: Any) -> Deployment:
    return Deployment(
        name=name,
        provider=kwargs.pop("provider", "openai"),
        model=kwargs.pop("model", name),
        api_base=kwargs.pop("api_base", f"http://{name}.invalid/v1"),
        price=Price(input=price[0], output=price[1]),
        **kwargs,
    )


def ctx(
    features: RequestFeatures | None = None,
    *,
    deployments: list[Deployment] | None = None,
    health: HealthTracker | None = None,
    limits: DeploymentLimits | None = None,
    now: float = 1000.0,
    seed: int = 0,
    constraints: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    explain: bool = True,
) -> DecisionContext:
    deployments = deployments or []
    return DecisionContext(
        features=features or RequestFeatures(prompt_tokens=100, max_output_tokens=100),
        health=health or HealthTracker(),
        limits=limits or DeploymentLimits(),
        now=now,
        rng=random.Random(seed),
        prices={d.name: d.price for d in deployments},
        constraints=as_struct(constraints or {}, Constraints),
        options=as_struct(options or {}, ModelOptions),
        explain=explain,
    )


def config(deployments: list[Deployment], models: dict[str, ModelGroup]) -> Config:
    return Config(deployments=deployments, models=models)


__all__ = ["Limits", "config", "ctx", "dep"]
