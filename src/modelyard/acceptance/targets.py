"""What a suite runs against: each `--models` entry as a deployment (pinned) or a model group (routed).

By default the targets are the candidates of the suite's `route`, each pinned to its one deployment, so
each deployment's pass rate is measured on its own. A model group named in `--models` is routed as the
gateway would route it, and each answer counts for the deployment that served it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelyard.config.model import Config, Deployment
from modelyard.schema.errors import ModelyardError


class TargetError(ModelyardError, ValueError):
    """A `--models` entry (or the suite's route) that the config does not know."""


@dataclass(frozen=True, slots=True)
class Target:
    """One row of the report."""

    name: str
    #: "deployment": requests name it directly (one deployment, no routing); "model": a routed group.
    kind: str
    deployments: tuple[Deployment, ...]

    @property
    def pinned(self) -> Deployment | None:
        return self.deployments[0] if self.kind == "deployment" else None

    def fingerprint(self, sim_url: str | None = None) -> list[Any]:
        """What the name stands for: a deployment moved to another model or server misses the cache. The
        simulator a run started listens on a new port each time, so its URL is written as `${SIM_URL}`."""

        def base(url: str | None) -> str | None:
            return url.replace(sim_url, "${SIM_URL}") if url and sim_url else url

        return [[d.name, d.provider, d.model, base(d.api_base)] for d in self.deployments]


def resolve_targets(config: Config, route: str | None, models: list[str] | None) -> list[Target]:
    """The targets of a run: `models` when given, else the route's candidates (each pinned)."""
    deployments = {dep.name: dep for dep in config.deployments}
    if not models:
        if route is None:
            raise TargetError("the suite names no `route:`; pass the models to test with --models a,b")
        group = config.models.get(route)
        if group is None:
            raise TargetError(f"the suite's route {route!r} is not a model of the config ({_known(config)})")
        models = list(group.candidates)
    targets: list[Target] = []
    for name in dict.fromkeys(models):
        if name in deployments:
            targets.append(Target(name, "deployment", (deployments[name],)))
        elif name in config.models:
            candidates = tuple(deployments[c] for c in config.models[name].candidates if c in deployments)
            targets.append(Target(name, "model", candidates))
        else:
            raise TargetError(f"unknown model or deployment {name!r} ({_known(config)})")
    return targets


def _known(config: Config) -> str:
    names = sorted(config.models) + sorted(dep.name for dep in config.deployments)
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return f"known: {shown}"
