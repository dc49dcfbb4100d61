"""A config ready to serve: loaded, its routing table compiled, its price table read. One copy of the checks
that `modelyard check`, `modelyard serve` and a live reload apply, so what `check` accepts is exactly what a
reload swaps in, and what it refuses is refused the same way (every problem at its `file:line`)."""

from __future__ import annotations

import os
from pathlib import Path

from modelyard.accounting.price_table import PriceTable
from modelyard.config.loader import ConfigError, load_config, problems_at_lines
from modelyard.config.model import Config
from modelyard.config.quality_file import results_path
from modelyard.routing.table import compile_groups


def prices_path(config: Config) -> Path | None:
    """The file `prices_from:` names, relative to the config's folder (like `quality_from:`)."""
    return results_path(config.prices_from, config.source) if config.prices_from else None


def price_table(config: Config) -> PriceTable:
    """The config's price table: its `prices_from:` file, else the shipped one. A missing or malformed file
    is a ConfigError at the `prices_from:` line."""
    path = prices_path(config)
    if path is None:
        return PriceTable.load()
    try:
        return PriceTable.load(path)
    except (OSError, ValueError, TypeError) as exc:
        message = f"prices_from: cannot read {path}: {exc}"
        if config.source.startswith("<"):
            raise ConfigError(message, source=config.source, key="prices_from") from None
        raise problems_at_lines(config.source, [("prices_from", message)]) from None


def load_servable(path: str | os.PathLike[str]) -> tuple[Config, PriceTable]:
    """The config at `path` and its price table, or a ConfigError (ConfigErrors for several problems)."""
    config = load_config(path)
    _, problems = compile_groups(config)
    if problems:
        raise problems_at_lines(path, [(problem.key, problem.message) for problem in problems])
    return config, price_table(config)
