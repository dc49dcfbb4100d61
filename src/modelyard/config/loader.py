"""Load `modelyard.yaml`: YAML with line marks, `${ENV}` interpolation, typed validation.

Errors name the file, the line and the key (`modelyard.yaml:12: deployments[1].price.input: Expected
number, got str`), because a config error found at start-up must be fixable without guesswork.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec
import yaml

from modelyard.config.model import Config, ModelGroup
from modelyard.config.providers import bind_deployment_options
from modelyard.config.quality_file import QualityFileError, apply_results, read_results, results_path
from modelyard.config.routing_options import Constraints, ModelOptions, RuleSpec, nest_metadata
from modelyard.schema.errors import ModelyardError

ENV_VAR = "MODELYARD_CONFIG"
_log = logging.getLogger("modelyard.config")
_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_ENUM_HINTS = {
    "kind": "chat, embedding, transcription, speech, image, rerank",
}
_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]+)`")
_PATH_TOKEN = re.compile(r"\.([A-Za-z_][\w\-]*)|\[(\d+)\]|\[`?([^\]`]+)`?\]")


class ConfigError(ModelyardError):
    """A config problem with its location; `str()` is the message to show the user."""

    def __init__(self, message: str, *, source: str = "<config>", line: int | None = None, key: str = "") -> None:
        self.source = source
        self.line = line
        self.key = key
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {key + ': ' if key else ''}{message}")


class ConfigErrors(ConfigError):
    """Several config problems found in one pass (each model group's sections are validated on their own), so
    `modelyard check` lists every typo at once; `str()` is one `file:line: key: message` per line."""

    def __init__(self, errors: list[ConfigError]) -> None:
        first = errors[0]
        self.source, self.line, self.key, self.errors = first.source, first.line, first.key, errors
        Exception.__init__(self, "\n".join(str(error) for error in errors))


Marks = dict[tuple[str | int, ...], int]


def load_config(path: str | os.PathLike[str] | None = None, *, env: dict[str, str] | None = None) -> Config:
    """Read and validate a config file (`path`, else $MODELYARD_CONFIG, else ./modelyard.yaml)."""
    environ = dict(os.environ) if env is None else env
    chosen = path or environ.get(ENV_VAR) or "modelyard.yaml"
    file = Path(chosen)
    if not file.is_file():
        raise ConfigError("config file not found", source=str(file))
    return parse_config(file.read_text(encoding="utf-8"), source=str(file), env=environ)


def parse_config(text: str, *, source: str = "<config>", env: dict[str, str] | None = None) -> Config:
    environ = dict(os.environ) if env is None else env
    data, marks = load_yaml_with_marks(text, source=source, env=environ)
    if not isinstance(data, dict):
        raise ConfigError("the config must be a mapping with `deployments:` and `models:`", source=source, line=1)
    errors: list[ConfigError] = []
    if isinstance(data.get("ui"), bool):  # `ui: false` turns the dashboard off
        data["ui"] = {"enabled": data["ui"]}
    bind_deployment_options(data, marks, source, errors)
    models = _convert_models(data.get("models"), marks, source, errors)
    rest = data if models is None else {key: value for key, value in data.items() if key != "models"}
    try:
        config: Config = convert_with_marks(rest, Config, marks, source)
    except ConfigError as exc:
        errors.append(exc)
    if errors:
        errors.sort(key=lambda error: error.line or 0)
        raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
    if models is not None:
        config.models = models
    config.source = source
    check_references(config, marks)
    if config.quality_from is not None:
        _apply_quality_file(config, config.quality_from, marks)
    return config


def _apply_quality_file(config: Config, quality_from: str, marks: Marks) -> None:
    """Read `quality_from:` into the deployments' per-task quality and acceptance; a missing or bad file is an
    error at `quality_from`'s line, a deployment the file names but the config lacks only a warning."""
    line = line_for(("quality_from",), marks)
    try:
        results = read_results(results_path(quality_from, config.source))
    except QualityFileError as exc:
        raise ConfigError(str(exc), source=config.source, line=line, key="quality_from") from None
    where = f"{config.source}:{line}" if line else config.source
    for warning in apply_results(config, results):
        _log.warning("%s: quality_from: %s", where, warning)


def problems_at_lines(path: str | os.PathLike[str], problems: Iterable[tuple[str, str]]) -> ConfigError:
    """Problems found after loading (a key path and a message each: the routing table's, say) placed at their
    `file:line`, by reading the file's line marks again; one ConfigError, or ConfigErrors for several."""
    source = str(path)
    _, marks = load_yaml_with_marks(Path(path).read_text(encoding="utf-8"), source=source)
    errors = [
        ConfigError(message, source=source, line=line_for(parse_path("$." + key), marks), key=key)
        for key, message in problems
    ]
    errors.sort(key=lambda error: error.line or 0)
    return errors[0] if len(errors) == 1 else ConfigErrors(errors)


def load_yaml_with_marks(text: str, *, source: str = "<yaml>", env: dict[str, str] | None = None) -> tuple[Any, Marks]:
    """Parse YAML into plain data plus a map from key path to 1-based line number."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid YAML: {problem}", source=source, line=line) from None
    marks: Marks = {}
    if node is None:
        return None, marks
    builder = _Builder(marks, source, env if env is not None else dict(os.environ))
    return builder.build(node, ()), marks


class _Builder:
    """Turns a composed YAML node tree into plain data, recording each key path's line."""

    def __init__(self, marks: Marks, source: str, env: dict[str, str]) -> None:
        self.marks = marks
        self.source = source
        self.env = env
        self.scalars = yaml.SafeLoader("")

    def build(self, node: yaml.Node, path: tuple[str | int, ...]) -> Any:
        return _build(self, node, path)


def _build(b: _Builder, node: yaml.Node, path: tuple[str | int, ...]) -> Any:
    marks, source, env = b.marks, b.source, b.env
    marks[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):  # `? [a, b]`: a list or mapping as a key
                raise ConfigError(
                    "mapping keys must be plain names, not lists or mappings",
                    source=source,
                    line=key_node.start_mark.line + 1,
                    key=format_path(path),
                )
            key = key_node.value
            if key in out:
                raise ConfigError(
                    f"duplicate key {key!r}",
                    source=source,
                    line=key_node.start_mark.line + 1,
                    key=format_path((*path, key)),
                )
            if key == "<<":
                raise ConfigError("YAML merge keys are not supported", source=source, line=key_node.start_mark.line + 1)
            out[key] = _build(b, value_node, (*path, key))
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(b, item, (*path, i)) for i, item in enumerate(node.value)]
    value = b.scalars.construct_object(node)  # scalar: typed by its tag (int, bool, null, ...)
    if isinstance(value, str) and "${" in value:
        # Stays a string: validation converts `"4000"` to a number where the field wants one.
        value = _interpolate(value, env, source, node.start_mark.line + 1, path)
    return value


def _interpolate(value: str, env: dict[str, str], source: str, line: int, path: tuple[str | int, ...]) -> str:
    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(
            f"environment variable {name} is not set (write ${{{name}:-default}} for a default)",
            source=source,
            line=line,
            key=format_path(path),
        )

    return _INTERPOLATION.sub(replace, value)


def _convert_models(raw: Any, marks: Marks, source: str, errors: list[ConfigError]) -> dict[str, ModelGroup] | None:
    """`models:` converted group by group, and within a group its constraints, options and each rule on
    their own: msgspec stops at a conversion's first error, so this is how one pass finds every typo.
    Errors go to `errors`; None when `models:` is not a mapping (the Config conversion reports that)."""
    if not isinstance(raw, dict):
        return None
    models: dict[str, ModelGroup] = {}
    for name, group in raw.items():
        if isinstance(group, dict):
            group = _convert_sections(group, ("models", name), marks, source, errors)
            if group is None:
                continue
        try:
            models.update(convert_with_marks({name: group}, dict[str, ModelGroup], marks, source, at=("models",)))
        except ConfigError as exc:
            errors.append(exc)
    return models


_SECTIONS: tuple[tuple[str, type[Any]], ...] = (("constraints", Constraints), ("options", ModelOptions))


def _convert_sections(
    group: dict[str, Any], at: tuple[str | int, ...], marks: Marks, source: str, errors: list[ConfigError]
) -> dict[str, Any] | None:
    """A group's mapping with its typed sections converted (None if any failed: its errors are in `errors`)."""
    group = dict(group)
    failed = False
    for key, type_ in _SECTIONS:
        if key in group:
            try:
                group[key] = convert_with_marks(group[key], type_, marks, source, at=(*at, key))
            except ConfigError as exc:
                errors.append(exc)
                failed = True
    rules = group.get("rules")
    if isinstance(rules, list):
        converted = []
        for i, rule in enumerate(rules):
            where = (*at, "rules", i)
            try:
                converted.append(convert_with_marks(_rule_data(rule, where, marks), RuleSpec, marks, source, at=where))
            except ConfigError as exc:
                errors.append(exc)
                failed = True
        group["rules"] = converted
    return None if failed else group


def _rule_data(rule: Any, at: tuple[str | int, ...], marks: Marks) -> Any:
    """The rule with its `metadata.<name>` conditions nested under `metadata`, their lines carried along."""
    when = rule.get("when") if isinstance(rule, dict) else None
    if not isinstance(when, dict):
        return rule
    nested = nest_metadata(when)
    if nested is when:
        return rule
    for key in when:
        if isinstance(key, str) and key.startswith("metadata.") and (*at, "when", key) in marks:
            line = marks[(*at, "when", key)]
            marks.setdefault((*at, "when", "metadata"), line)
            marks[(*at, "when", "metadata", key.removeprefix("metadata."))] = line
    return {**rule, "when": nested}


def convert_with_marks(data: Any, type_: Any, marks: Marks, source: str, *, at: tuple[str | int, ...] = ()) -> Any:
    """`msgspec.convert` whose errors point at the file and line of the offending key (`data` sits at `at`)."""
    try:
        return msgspec.convert(data, type_, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)
        path: tuple[str | int, ...] = at
        if " - at `$" in message:
            message, _, where = message.rpartition(" - at `")
            inner = parse_path(where.rstrip("`"))
            if _ANY_KEY in inner:
                inner = _named_keys(data, inner, type_, message)
            path = (*at, *inner)
        unknown = _UNKNOWN_FIELD.search(message)
        if unknown and (*path, unknown.group(1)) in marks:
            path = (*path, unknown.group(1))
        hint = _ENUM_HINTS.get(str(path[-1]) if path else "")
        if hint and message.startswith("Invalid enum value"):
            message = f"{message} (one of {hint})"
        line = line_for(path, marks)
        raise ConfigError(message, source=source, line=line, key=format_path(path)) from None


#: msgspec's path segment for a mapping key it does not name (`$[...].retries`).
_ANY_KEY = "..."


def _named_keys(data: Any, path: tuple[str | int, ...], type_: Any, message: str) -> tuple[str | int, ...]:
    """`path` with each `[...]` (a key msgspec does not name) replaced by the key whose value fails: the only key
    of its mapping, else the one whose value, converted alone, reproduces `message` (only on the error path)."""
    at = path.index(_ANY_KEY)
    node = _node_at(data, path[:at])
    if not isinstance(node, dict):
        return path
    found = next(iter(node)) if len(node) == 1 else _failing_key(data, path[:at], node, type_, message)
    if found is None or not isinstance(found, str | int):
        return path
    named = (*path[:at], found, *path[at + 1 :])
    return _named_keys(data, named, type_, message) if _ANY_KEY in named[at + 1 :] else named


def _node_at(data: Any, path: tuple[str | int, ...]) -> Any:
    """The value at `path` in `data`, or None when the path does not lead anywhere."""
    node = data
    for part in path:
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            return None
    return node


def _failing_key(data: Any, where: tuple[str | int, ...], node: dict[Any, Any], type_: Any, message: str) -> Any:
    for key, value in node.items():
        try:
            msgspec.convert(_with_only(data, where, {key: value}), type_, strict=False)
        except msgspec.ValidationError as exc:
            if str(exc).startswith(message):
                return key
    return None


def _with_only(data: Any, where: tuple[str | int, ...], replacement: Any) -> Any:
    """`data` with the node at `where` replaced (copies along the path only)."""
    if not where:
        return replacement
    head, rest = where[0], where[1:]
    if isinstance(data, dict):
        return {**data, head: _with_only(data[head], rest, replacement)}
    copy = list(data)
    copy[int(head)] = _with_only(data[int(head)], rest, replacement)
    return copy


def parse_path(text: str) -> tuple[str | int, ...]:
    """`$.deployments[0].price` → ("deployments", 0, "price")."""
    parts: list[str | int] = []
    for match in _PATH_TOKEN.finditer(text.removeprefix("$")):
        name, index, key = match.groups()
        parts.append(int(index) if index is not None else (name if name is not None else key))
    return tuple(parts)


def line_for(path: tuple[str | int, ...], marks: Marks) -> int | None:
    """The line of the deepest known ancestor of `path` (an unknown field points at its parent)."""
    for cut in range(len(path), -1, -1):
        if path[:cut] in marks:
            return marks[path[:cut]]
    return None


def format_path(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _check_guardrail_sets(config: Config, model_name: str, group: ModelGroup, marks: Marks) -> None:
    """Every guardrail set a model names exists in the top-level `guardrails:`."""
    for j, entry in enumerate(group.guardrails):
        if isinstance(entry, str) and entry not in config.guardrails:
            raise ConfigError(
                f"unknown guardrail set {entry!r} (not in the top-level `guardrails:`)",
                source=config.source,
                line=line_for(("models", model_name, "guardrails", j), marks),
                key=f"models.{model_name}.guardrails[{j}]",
            )


def check_references(config: Config, marks: Marks) -> None:
    """Cross-references msgspec cannot check: unique names, candidates and fallbacks that exist."""
    seen: dict[str, int] = {}
    for i, dep in enumerate(config.deployments):
        if dep.name in seen:
            raise ConfigError(
                f"duplicate deployment name {dep.name!r} (also deployments[{seen[dep.name]}])",
                source=config.source,
                line=line_for(("deployments", i, "name"), marks),
                key=f"deployments[{i}].name",
            )
        seen[dep.name] = i
    for model_name, group in config.models.items():
        if not group.candidates:
            raise ConfigError(
                "a model needs at least one candidate",
                source=config.source,
                line=line_for(("models", model_name), marks),
                key=f"models.{model_name}.candidates",
            )
        for j, candidate in enumerate(group.candidates):
            if candidate not in seen:
                raise ConfigError(
                    f"unknown deployment {candidate!r}",
                    source=config.source,
                    line=line_for(("models", model_name, "candidates", j), marks),
                    key=f"models.{model_name}.candidates[{j}]",
                )
        for j, fallback in enumerate([*group.error_fallbacks, *group.saturation_fallbacks]):
            if fallback not in config.models and fallback not in seen:
                raise ConfigError(
                    f"unknown fallback {fallback!r} (not a model or a deployment)",
                    source=config.source,
                    line=line_for(("models", model_name, "fallbacks", j), marks),
                    key=f"models.{model_name}.fallbacks[{j}]",
                )
        _check_guardrail_sets(config, model_name, group, marks)
        if group.recalibrate is not None and group.strategy != "learned":
            raise ConfigError(
                "`recalibrate` adjusts a learned router's beliefs: it needs `strategy: learned`",
                source=config.source,
                line=line_for(("models", model_name, "recalibrate"), marks),
                key=f"models.{model_name}.recalibrate",
            )
    for alias, target in config.aliases.items():
        problem = None
        if not alias.strip("*?"):
            problem = "an alias needs at least one literal character (`*` alone would catch every typo)"
        elif alias in config.models or alias in seen:
            problem = f"alias {alias!r} is already a configured name, which always wins"
        elif target not in config.models and target not in seen:
            problem = f"unknown alias target {target!r} (not a model or a deployment)"
        if problem is not None:
            raise ConfigError(
                problem, source=config.source, line=line_for(("aliases", alias), marks), key=f"aliases.{alias}"
            )
