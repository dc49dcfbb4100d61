"""What a model name can lead to: every deployment and model a request for it may reach.

Authorisation and budgets both need this set, not just the name a client asked for: a key allowed only
`cheap` must not be served by another deployment through per-request overrides, fallbacks, rule targets,
replanning or a hedged leg, and its budget reservation must be priced at the dearest deployment it may
actually reach. Pure functions over the routing table; `Scope` is computed once per distinct allowed set.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from modelyard.accounting.prices import units_cost_usd
from modelyard.config.model import Price
from modelyard.routing.table import RoutingTable
from modelyard.schema.chat import ModelyardOptions, Usage


def reached(table: RoutingTable, names: Iterable[str]) -> tuple[frozenset[str], frozenset[str]]:
    """(model names, deployment names) reachable from `names`: a model's candidates, its rule targets
    (deployments and delegated models) and its fallbacks, transitively; a deployment name reaches itself."""
    models: set[str] = set()
    deployments: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in models or name in deployments:
            continue
        group = table.groups.get(name)
        if group is None:
            if name in table.deployments:
                deployments.add(name)
            continue
        models.add(name)
        deployments.update(dep.name for dep in group.candidates)
        for rule in group.rules:
            deployments.update(rule.use)
            if rule.model is not None:
                pending.append(rule.model)
        pending.extend(group.group.error_fallbacks)
        pending.extend(group.group.saturation_fallbacks)  # a saturated request's tier is reachable too
    return frozenset(models), frozenset(deployments)


def request_reach(table: RoutingTable, model: str, overrides: ModelyardOptions | None) -> frozenset[str]:
    """Every deployment one request may be served by: its model's reach plus what its overrides name."""
    _, deployments = reached(table, [model])
    if overrides is None or (not overrides.candidates and not overrides.fallbacks):
        return deployments
    extra = set(overrides.candidates or ())
    extra.update(reached(table, overrides.fallbacks or ())[1])
    return deployments | extra


@dataclass(frozen=True, slots=True)
class Scope:
    """What a key restricted to some models may use: those models and everything they reach."""

    models: frozenset[str]
    deployments: frozenset[str]

    @classmethod
    def of(cls, table: RoutingTable, allowed: Iterable[str]) -> Scope:
        models, deployments = reached(table, allowed)
        return cls(models, deployments)

    def refusal(self, overrides: ModelyardOptions | None) -> tuple[str, str] | None:
        """(param, message) when per-request overrides name something outside the scope, else None."""
        if overrides is None:
            return None
        outside = [c for c in overrides.candidates or () if c not in self.deployments]
        if outside:
            return "modelyard.candidates", f"deployments {_names(outside)} are outside this key's models"
        outside = [f for f in overrides.fallbacks or () if f not in self.models and f not in self.deployments]
        if outside:
            return "modelyard.fallbacks", f"fallbacks {_names(outside)} are outside this key's models"
        return None


def dearest_per_token(prices: dict[str, Price | None], deployments: Iterable[str]) -> tuple[float, float]:
    """The highest (input, output) nano-dollars per token among `deployments`: an upper bound on what a
    request served by any of them is charged per token (cache writes and reasoning included)."""
    per_in = per_out = 0.0
    for name in deployments:
        price = prices.get(name)
        if price is None:
            continue
        per_in = max(per_in, price.input, price.cache_write or 0.0, price.cached_input or 0.0)
        per_out = max(per_out, price.output, price.reasoning or 0.0)
    return per_in * 1000, per_out * 1000


def dearest_units_nano(prices: dict[str, Price | None], deployments: Iterable[str], units: Usage) -> float:
    """The most the non-chat `units` (audio seconds, characters, images, search units) cost at any of
    `deployments`, in nano-dollars: the budget reservation of an audio, image or rerank request."""
    dearest = 0.0
    for name in deployments:
        price = prices.get(name)
        if price is not None:
            dearest = max(dearest, units_cost_usd(units, price))
    return dearest * 1e9


def _names(names: list[str]) -> str:
    shown = ", ".join(f"`{n[:64]}`" for n in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")
