"""The routing table: the config compiled once into what decisions need (indexes, rules, prices)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from modelyard.config.model import Config, Deployment, ModelGroup, Price
from modelyard.routing.aliases import Aliases
from modelyard.routing.candidates import GroupProfile
from modelyard.routing.rules import Rule, RuleError, compile_rules
from modelyard.routing.sticky import applies as sticky_applies
from modelyard.routing.sticky import session_key
from modelyard.routing.strategies import STRATEGIES
from modelyard.schema.chat import ChatRequest

#: Strategies that are not plain rankers in STRATEGIES but handled by the planner.
SPECIAL_STRATEGIES = frozenset({"rules"})

PriceResolver = Callable[[Deployment], Price | None]


@dataclass(frozen=True, slots=True)
class CompiledGroup:
    name: str
    group: ModelGroup
    candidates: tuple[Deployment, ...]
    rules: tuple[Rule, ...]
    hedge_after_ms: float | None
    hedge_p95: bool
    profile: GroupProfile
    #: Static per-model results cached by strategies (see DecisionContext.static_cache).
    cache: dict[Any, Any] = field(default_factory=dict)
    #: Whether requests for this model should carry a session key (routing/sticky.py).
    sticky: bool = False
    #: Models (or deployments) tried when every candidate failed, in order.
    fallbacks: tuple[str, ...] = ()
    #: `when: saturated` tiers: they serve classes that allow it while every candidate is at its limits.
    saturation_tiers: tuple[str, ...] = ()


@dataclass(slots=True)
class RoutingTable:
    deployments: dict[str, Deployment]
    groups: dict[str, CompiledGroup]
    prices: dict[str, Price | None]
    config: Config
    public_models: list[str] = field(default_factory=list)
    aliases: Aliases = field(default_factory=lambda: Aliases({}))

    @classmethod
    def from_config(cls, config: Config, resolve_price: PriceResolver | None = None) -> RoutingTable:
        groups, errors = compile_groups(config)
        if errors:
            raise errors[0]
        prices = {dep.name: (resolve_price(dep) if resolve_price else dep.price) for dep in config.deployments}
        deployments = {dep.name: dep for dep in config.deployments}
        return cls(deployments, groups, prices, config, list(config.models), Aliases(config.aliases))

    def resolve(self, name: str) -> str:
        """The configured name a client's model name stands for: itself when it is a model or a deployment,
        else its alias's target (`aliases:`), else itself (the planner then answers 404)."""
        if name in self.groups or name in self.deployments or not self.aliases:
            return name
        return self.aliases.resolve(name) or name

    def sticky(self, model: str) -> bool:
        """Whether the ingress should compute `routing.sticky.session_key` for a request of `model` (a model
        group, or an alias of one, whose strategy may choose among equals and whose `options.sticky` is on)."""
        group = self.groups.get(model)
        if group is None and self.aliases:
            group = self.groups.get(self.resolve(model))
        return group is not None and group.sticky

    def session(self, req: ChatRequest, key_id: str | None, explicit: str | None = None) -> str | None:
        """The request's session key for `RequestFeatures.session`, or None when its model is not sticky
        (so the prefix is hashed only when it matters). `explicit`: the client's own session id, if any."""
        return session_key(key_id, explicit, req) if self.sticky(req.model) else None


def compile_groups(config: Config) -> tuple[dict[str, CompiledGroup], list[RuleError]]:
    """Every model group compiled, and every group's error (`modelyard check` lists them all at once)."""
    deployments = {dep.name: dep for dep in config.deployments}
    groups: dict[str, CompiledGroup] = {}
    errors: list[RuleError] = []
    for name, group in config.models.items():
        try:
            groups[name] = _compile_group(name, group, deployments, set(config.models))
        except RuleError as exc:
            errors.append(exc)
    return groups, errors


def _compile_group(name: str, group: ModelGroup, deployments: dict[str, Deployment], models: set[str]) -> CompiledGroup:
    if group.strategy not in STRATEGIES and group.strategy not in SPECIAL_STRATEGIES:
        known = ", ".join(sorted({*STRATEGIES, *SPECIAL_STRATEGIES}))
        raise RuleError(f"models.{name}.strategy", f"unknown strategy {group.strategy!r} (one of {known})")
    rules = compile_rules(group.rules, name, models, set(deployments)) if group.rules else ()
    if group.strategy == "rules" and not rules:
        raise RuleError(f"models.{name}.rules", "strategy rules needs a `rules:` list")
    hedge = group.hedge_after_ms
    hedge_p95 = hedge == "p95"
    if isinstance(hedge, str) and not hedge_p95:
        raise RuleError(f"models.{name}.hedge_after_ms", "a number of milliseconds or 'p95'")
    candidates = tuple(deployments[c] for c in group.candidates)
    return CompiledGroup(
        name=name,
        group=group,
        candidates=candidates,
        profile=GroupProfile.of(candidates),
        rules=rules,
        hedge_after_ms=float(hedge) if isinstance(hedge, int | float) else None,
        hedge_p95=hedge_p95,
        sticky=sticky_applies(group.strategy, group.options.sticky)
        or (group.strategy == "rules" and group.options.sticky),
        fallbacks=tuple(group.error_fallbacks),
        saturation_tiers=tuple(group.saturation_fallbacks),
    )
