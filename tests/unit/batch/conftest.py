"""Fixtures of the batch tests: a batch store location on each backend (SQLite, and PostgreSQL when it runs)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.batch.store_pg import PostgresBatchStore

ROOT = Path(__file__).resolve().parents[3]
PG = os.environ.get("MODELYARD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=0.5):
            return True
    except OSError:
        return False


def location(kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        return str(tmp_path / "runs.db")
    if not _pg_up():
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    return f"{PG}?schema=bt_{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    chosen = location(request.param, tmp_path)
    yield chosen
    if request.param == "postgres":
        dropper = PostgresBatchStore(chosen)
        dropper.drop()
        dropper.close()
