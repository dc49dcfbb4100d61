"""The environment a test gives a `modelyard` subprocess: the caller's, without any MODELYARD_* setting that
would change what the command under test does, and a terminal wide enough that tables do not wrap."""

from __future__ import annotations

import os


def cli_env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}, "COLUMNS": "160"}
