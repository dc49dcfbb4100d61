"""The `rules` strategy: conditional routing on request features, declared as a table in YAML.

```yaml
models:
  agent:
    strategy: rules
    candidates: [opus, sonnet, haiku]
    rules:
      - when: {task: [reasoning, coding], complexity: high}
        use: [opus, sonnet]          # deployments, tried in this order (or `strategy:` to rank them)
      - when: {task: search}
        use: fast                    # or another model name: delegate to its own strategy
      - when: {prompt_tokens: {gt: 8000}}
        use: [sonnet]
      - use: [haiku]                 # no `when`: the default
```
Conditions: `task`, `complexity`, `key`, `tags` (any of), `metadata.<name>`, `has_tools`, `has_images`,
`json`, `stream`, and `prompt_tokens` with `gt`/`gte`/`lt`/`lte`. Rules compile once, at config load,
into predicate tuples, so matching costs a few attribute reads per rule.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from modelyard.routing.features import RequestFeatures

Predicate = Callable[[RequestFeatures], bool]


class RuleError(ValueError):
    """A rule that cannot be compiled; the message names the rule and the key."""


@dataclass(frozen=True, slots=True)
class Rule:
    index: int
    predicates: tuple[Predicate, ...]
    use: tuple[str, ...]
    model: str | None
    strategy: str | None
    text: str

    def matches(self, features: RequestFeatures) -> bool:
        return all(predicate(features) for predicate in self.predicates)


def _one_of(value: Any) -> frozenset[str]:
    return frozenset(str(v) for v in value) if isinstance(value, list) else frozenset({str(value)})


_COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


def _bound(compare: Callable[[float, float], bool], bound: float, value: int) -> bool:
    return compare(value, bound)


def _compare(spec: Any, where: str) -> Predicate:
    if isinstance(spec, int | float):
        limit = spec
        return lambda f: f.prompt_tokens == limit
    if not isinstance(spec, dict) or not spec:
        raise RuleError(f"{where}: prompt_tokens needs {{gt|gte|lt|lte: number}}")
    checks: list[Callable[[int], bool]] = []
    for op, bound in spec.items():
        if not isinstance(bound, int | float):
            raise RuleError(f"{where}: prompt_tokens.{op} must be a number")
        compare = _COMPARISONS.get(op)
        if compare is None:
            raise RuleError(f"{where}: unknown comparison {op!r} (use gt, gte, lt, lte)")
        checks.append(partial(_bound, compare, float(bound)))
    return lambda f: all(check(f.prompt_tokens) for check in checks)


_FLAGS: dict[str, Callable[[RequestFeatures], bool]] = {
    "has_tools": lambda f: f.needs_tools,
    "has_images": lambda f: f.needs_vision,
    "json": lambda f: f.needs_json,
    "stream": lambda f: f.stream,
}

_STRINGS: dict[str, Callable[[RequestFeatures], str | None]] = {
    "task": lambda f: f.task,
    "complexity": lambda f: f.complexity,
    "key": lambda f: f.key_name,
}


def _predicate(name: str, value: Any, where: str) -> Predicate:
    if name in _FLAGS:
        if not isinstance(value, bool):
            raise RuleError(f"{where}: {name} must be true or false")
        flag = _FLAGS[name]
        return lambda f: flag(f) is value
    if name in _STRINGS:
        allowed = _one_of(value)
        getter = _STRINGS[name]
        return lambda f: getter(f) in allowed
    if name == "tags":
        wanted = _one_of(value)
        return lambda f: not wanted.isdisjoint(f.tags)
    if name == "prompt_tokens":
        return _compare(value, where)
    if name.startswith("metadata."):
        field = name.removeprefix("metadata.")
        allowed = _one_of(value)
        return lambda f: f.metadata.get(field) in allowed
    raise RuleError(
        f"{where}: unknown condition {name!r} (task, complexity, key, tags, metadata.<name>, "
        "has_tools, has_images, json, stream, prompt_tokens)"
    )


def compile_rules(
    raw_rules: list[dict[str, Any]], model: str, known_models: set[str], known_deployments: set[str]
) -> tuple[Rule, ...]:
    rules: list[Rule] = []
    for i, raw in enumerate(raw_rules):
        where = f"models.{model}.rules[{i}]"
        unknown = set(raw) - {"when", "use", "strategy"}
        if unknown:
            raise RuleError(f"{where}: unknown key(s) {sorted(unknown)} (a rule has when, use, strategy)")
        when = raw.get("when") or {}
        if not isinstance(when, dict):
            raise RuleError(f"{where}.when must be a mapping of conditions")
        predicates = tuple(_predicate(str(k), v, f"{where}.when") for k, v in when.items())
        use = raw.get("use")
        target_model: str | None = None
        targets: tuple[str, ...] = ()
        if isinstance(use, str):
            if use in known_models:
                target_model = use
            elif use in known_deployments:
                targets = (use,)
            else:
                raise RuleError(f"{where}.use: {use!r} is neither a model nor a deployment")
        elif isinstance(use, list) and use:
            for name in use:
                if name not in known_deployments:
                    raise RuleError(f"{where}.use: unknown deployment {name!r}")
            targets = tuple(str(n) for n in use)
        else:
            raise RuleError(f"{where}.use must name a model or list deployments")
        if target_model == model:
            raise RuleError(f"{where}.use: a rule cannot delegate to its own model")
        text = ", ".join(f"{k}={v}" for k, v in when.items()) or "default"
        rules.append(Rule(i, predicates, targets, target_model, raw.get("strategy"), text))
    return tuple(rules)


def first_match(rules: tuple[Rule, ...], features: RequestFeatures) -> Rule | None:
    for rule in rules:
        if rule.matches(features):
            return rule
    return None
