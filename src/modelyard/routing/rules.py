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
`json`, `stream`, and `prompt_tokens` with `gt`/`gte`/`lt`/`lte` (the fields of `config.routing_options.RuleWhen`,
so a misspelt one is a config error with its line). Rules compile once, at config load, into predicate
tuples, so matching costs a few attribute reads per rule.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import msgspec

from modelyard.config.routing_options import OneOrMany, RuleSpec, RuleWhen, TokenBounds
from modelyard.routing.features import RequestFeatures
from modelyard.schema.errors import ModelyardError

Predicate = Callable[[RequestFeatures], bool]


class RuleError(ModelyardError, ValueError):
    """A model's routing settings that cannot be compiled. `key` is the config path of the culprit
    (`models.agent.rules[1].use`), so the loader can put it at its file and line."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


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


def _one_of(value: OneOrMany) -> frozenset[str]:
    return frozenset(str(v) for v in value) if isinstance(value, list) else frozenset({str(value)})


_COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


def _bound(compare: Callable[[float, float], bool], bound: float, value: int) -> bool:
    return compare(value, bound)


def _compare(spec: int | float | TokenBounds, where: str) -> Predicate:
    if not isinstance(spec, TokenBounds):
        limit = spec
        return lambda f: f.prompt_tokens == limit
    bounds = [(op, bound) for op in _COMPARISONS if (bound := getattr(spec, op)) is not None]
    if not bounds:
        raise RuleError(where, "prompt_tokens needs {gt|gte|lt|lte: number}")
    checks = [partial(_bound, _COMPARISONS[op], float(bound)) for op, bound in bounds]
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


def _flag(getter: Callable[[RequestFeatures], bool], value: bool) -> Predicate:
    return lambda f: getter(f) is value


def _string(getter: Callable[[RequestFeatures], str | None], allowed: frozenset[str]) -> Predicate:
    return lambda f: getter(f) in allowed


def _tags(wanted: frozenset[str]) -> Predicate:
    return lambda f: not wanted.isdisjoint(f.tags)


def _metadata(name: str, allowed: frozenset[str]) -> Predicate:
    return lambda f: f.metadata.get(name) in allowed


def _conditions(when: RuleWhen, where: str) -> tuple[tuple[Predicate, ...], str]:
    """The predicates of `when` and their text for explanations (`task=coding, complexity=high`)."""
    predicates: list[Predicate] = []
    shown: list[str] = []
    for name in when.__struct_fields__:
        value = getattr(when, name)
        if value is None:
            continue
        if name in _FLAGS:
            predicates.append(_flag(_FLAGS[name], value))
        elif name in _STRINGS:
            predicates.append(_string(_STRINGS[name], _one_of(value)))
        elif name == "tags":
            predicates.append(_tags(_one_of(value)))
        elif name == "prompt_tokens":
            predicates.append(_compare(value, f"{where}.when.prompt_tokens"))
            value = msgspec.to_builtins(value)
        if name == "metadata":
            for field, accepted in value.items():
                predicates.append(_metadata(field, _one_of(accepted)))
                shown.append(f"metadata.{field}={accepted}")
        else:
            shown.append(f"{name}={value}")
    return tuple(predicates), ", ".join(shown)


def compile_rules(
    specs: list[RuleSpec], model: str, known_models: set[str], known_deployments: set[str]
) -> tuple[Rule, ...]:
    """The rules of `model`, compiled into predicates; names in `use` are checked against the config."""
    rules: list[Rule] = []
    for i, spec in enumerate(specs):
        where = f"models.{model}.rules[{i}]"
        predicates, text = _conditions(spec.when, where) if spec.when is not None else ((), "")
        use = spec.use
        target_model: str | None = None
        targets: tuple[str, ...] = ()
        if isinstance(use, str):
            if use in known_models:
                target_model = use
            elif use in known_deployments:
                targets = (use,)
            else:
                raise RuleError(f"{where}.use", f"{use!r} is neither a model nor a deployment")
        elif use:
            for name in use:
                if name not in known_deployments:
                    raise RuleError(f"{where}.use", f"unknown deployment {name!r}")
            targets = tuple(use)
        else:
            raise RuleError(f"{where}.use", "must name a model or list deployments")
        if target_model == model:
            raise RuleError(f"{where}.use", "a rule cannot delegate to its own model")
        rules.append(Rule(i, predicates, targets, target_model, spec.strategy, text or "default"))
    return tuple(rules)


def first_match(rules: tuple[Rule, ...], features: RequestFeatures) -> Rule | None:
    for rule in rules:
        if rule.matches(features):
            return rule
    return None
