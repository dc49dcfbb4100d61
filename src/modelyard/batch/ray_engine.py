"""`--engine ray`: rows as work of Ray actors across a cluster, each with its own backend and store connection.

Owned by the Ray helper; the contract the CLI uses is below. Ray is imported only inside this module's
functions (`modelyard[ray]`); without it, `open_ray_engine` raises `BatchEngineError` with the install hint.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from modelyard.batch.engine import RowEngine
from modelyard.batch.model import BackendRef, BatchHeader
from modelyard.schema.errors import ModelyardError


class BatchEngineError(ModelyardError, RuntimeError):
    """An engine that cannot start (Ray missing, no cluster at the address, a store the workers cannot share)."""


@asynccontextmanager
async def open_ray_engine(
    header: BatchHeader,
    store_location: str,
    backend: BackendRef,
    *,
    address: str | None = None,
    priority: str = "batch",
) -> AsyncIterator[RowEngine]:
    """A RowEngine on the Ray cluster at `address` (None: $RAY_ADDRESS, else a local Ray started here).

    Workers parse the workflow from `header.text`, open the store at `store_location` and build their backend
    from `backend`; a store the cluster's nodes cannot share (a SQLite file on a multi-node cluster) is refused.
    """
    raise BatchEngineError("the Ray engine is not built yet")
    yield  # pragma: no cover
