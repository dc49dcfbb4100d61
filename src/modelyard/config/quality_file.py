"""`quality_from:`: acceptance-suite results (`modelyard accept --write-quality`) as per-task deployment quality.

The file says, per deployment and task, the suite's pass rate and whether the deployment was accepted::

    {"schema": "modelyard.acceptance-results/v1", "suite": "support-desk", "generated_at": "2026-12-04T16:00:00Z",
     "deployments": {"small@sim": {"classification": {"pass_rate": 0.97, "accepted": true, "cases": 30}}}}

At load each named task's pass rate becomes that deployment's quality for the task (the file wins over the
YAML's `quality` for the tasks it names; the YAML's value stays the default for the others), and the whole
entry is kept as `Deployment.acceptance`, which `accepted: true` routes and `learned` floors read. A deployment
the file names but the config lacks is a warning, not an error: results outlive deployments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec
from msgspec import Struct

from modelyard.config.model import Config, TaskAcceptance
from modelyard.schema.errors import ModelyardError

RESULTS_SCHEMA = "modelyard.acceptance-results/v1"


class AcceptanceResults(Struct, kw_only=True):
    """The results file. Unknown fields are allowed: a newer `modelyard accept` may write more (intervals,
    costs) and an older gateway must still read the pass rates."""

    schema: Literal["modelyard.acceptance-results/v1"]
    deployments: dict[str, dict[str, TaskAcceptance]]
    suite: str = ""
    generated_at: str = ""


class QualityFileError(ModelyardError, ValueError):
    """The results file cannot be used; the loader places the message at `quality_from`'s line."""


def results_path(quality_from: str, config_source: str) -> Path:
    """`quality_from` relative to the config file's folder (to the working directory for an in-memory config)."""
    path = Path(quality_from)
    if path.is_absolute():
        return path
    source = Path(config_source)
    base = source.parent if config_source and not config_source.startswith("<") else Path()
    return base / path


def read_results(path: Path) -> AcceptanceResults:
    """The validated results file; QualityFileError says what is wrong with it."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise QualityFileError(f"cannot read acceptance results {str(path)!r}: {exc.strerror or exc}") from None
    try:
        return msgspec.json.decode(raw, type=AcceptanceResults)
    except msgspec.ValidationError as exc:
        raise QualityFileError(f"{path}: not {RESULTS_SCHEMA} results: {_readable(str(exc))}") from None
    except msgspec.DecodeError as exc:
        raise QualityFileError(f"{path}: not valid JSON: {exc}") from None


def apply_results(config: Config, results: AcceptanceResults) -> list[str]:
    """Set each named deployment's per-task quality and acceptance from `results`; the warnings (deployments the
    file names that the config does not have)."""
    warnings: list[str] = []
    for name, tasks in results.deployments.items():
        dep = config.deployment(name)
        if dep is None:
            warnings.append(f"acceptance results name deployment {name!r}, which this config does not have")
            continue
        if not tasks:
            continue
        dep.acceptance = {**(dep.acceptance or {}), **tasks}
        rates = {task: result.pass_rate for task, result in tasks.items()}
        quality = dep.quality
        if quality is None:
            dep.quality = rates
        elif isinstance(quality, dict):
            dep.quality = {**quality, **rates}
        else:
            dep.quality = {"default": float(quality), **rates}
    return warnings


def _readable(message: str) -> str:
    return message.replace("`$.", "`").replace("`$`", "the document")
