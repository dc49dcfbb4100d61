"""Fixtures for the workflow tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.workflows.engine import EngineOptions


@pytest.fixture
def fast_retries() -> EngineOptions:
    return EngineOptions(backoff_s=0.001, backoff_max_s=0.01)


@pytest.fixture
def examples_dir() -> Path:
    return Path(__file__).resolve().parents[3] / "examples" / "workflows"
