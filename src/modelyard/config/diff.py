"""What a reload changes: a summary of two configs' differences, for the log line, the admin API's answer
and `modelyard reload`. Pure: two Configs in, names out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from modelyard.config.model import Config

#: Settings bound at start (the listening socket, the stores, the Redis connection): a reload cannot change
#: them, so it reports them as needing a restart and keeps serving with the old values.
RESTART_ONLY = (
    ("server", "host"),
    ("server", "port"),
    ("server", "http_client"),
    ("server", "max_answer_bytes"),
    ("state", "redis_url"),
    ("state", "prefix"),
    ("state", "on_unavailable"),
    ("state", "shared_health"),
    ("state", "shared_semantic_cache"),
    ("spend", "store"),
    ("ui", "session_ttl_s"),
    ("ui", "trusted_proxies"),
    ("ui", "max_failed_logins"),
    ("spend", "enabled"),
    ("spend", "spool"),
    ("spend", "spool_dir"),
    ("access", "keys_store"),
    ("access", "master_key"),
    ("server", "master_key"),
    ("cache", "backend"),
    ("tracing", "enabled"),
)

_SECTIONS = (
    "server",
    "routing",
    "access",
    "spend",
    "state",
    "tracing",
    "queue",
    "cache",
    "drain",
    "semantic",
    "aliases",
    "guardrails",
    "quality_from",
    "prices_from",
)


@dataclass(slots=True)
class ConfigChanges:
    """Names added, removed or changed, by kind; `restart_needed` lists settings a reload cannot apply."""

    deployments_added: list[str] = field(default_factory=list)
    deployments_removed: list[str] = field(default_factory=list)
    deployments_changed: list[str] = field(default_factory=list)
    models_added: list[str] = field(default_factory=list)
    models_removed: list[str] = field(default_factory=list)
    models_changed: list[str] = field(default_factory=list)
    prices_changed: list[str] = field(default_factory=list)
    sections_changed: list[str] = field(default_factory=list)
    restart_needed: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not any(self.as_dict().values())

    def as_dict(self) -> dict[str, list[str]]:
        return {name: list(getattr(self, name)) for name in self.__slots__}

    def summary(self) -> str:
        """One line for the log: `deployments +1 -0 ~2, models +0 -0 ~1, prices ~3, sections: queue`."""
        if self.empty:
            return "no changes"
        parts = [
            f"deployments +{len(self.deployments_added)} -{len(self.deployments_removed)} "
            f"~{len(self.deployments_changed)}",
            f"models +{len(self.models_added)} -{len(self.models_removed)} ~{len(self.models_changed)}",
            f"prices ~{len(self.prices_changed)}",
        ]
        if self.sections_changed:
            parts.append("sections: " + ", ".join(self.sections_changed))
        if self.restart_needed:
            parts.append("NOT applied until a restart: " + ", ".join(self.restart_needed))
        return "; ".join(parts)


def _plain(value: Any) -> bytes:
    return msgspec.json.encode(value, order="sorted")


def config_changes(old: Config, new: Config, old_prices: dict[str, Any], new_prices: dict[str, Any]) -> ConfigChanges:
    """The differences between `old` and `new` (and between their resolved prices per deployment)."""
    changes = ConfigChanges()
    before = {dep.name: _plain(dep) for dep in old.deployments}
    after = {dep.name: _plain(dep) for dep in new.deployments}
    changes.deployments_added = sorted(after.keys() - before.keys())
    changes.deployments_removed = sorted(before.keys() - after.keys())
    changes.deployments_changed = sorted(n for n in before.keys() & after.keys() if before[n] != after[n])
    old_models = {name: _plain(group) for name, group in old.models.items()}
    new_models = {name: _plain(group) for name, group in new.models.items()}
    changes.models_added = sorted(new_models.keys() - old_models.keys())
    changes.models_removed = sorted(old_models.keys() - new_models.keys())
    changes.models_changed = sorted(n for n in old_models.keys() & new_models.keys() if old_models[n] != new_models[n])
    changes.prices_changed = sorted(
        name for name in after.keys() & before.keys() if _plain(old_prices.get(name)) != _plain(new_prices.get(name))
    )
    changes.sections_changed = [s for s in _SECTIONS if _plain(getattr(old, s)) != _plain(getattr(new, s))]
    changes.restart_needed = [
        f"{section}.{name}"
        for section, name in RESTART_ONLY
        if _plain(getattr(getattr(old, section), name)) != _plain(getattr(getattr(new, section), name))
    ]
    return changes
