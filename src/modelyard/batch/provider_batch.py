"""`--provider-batch`: a single-model-step workflow's rows through the providers' own Batch APIs (OpenAI's
files + batches, Anthropic's message batches): half the price, a 24-hour window, the same resume and accounting.

Owned by the provider-batch helper; the contract the CLI uses is below.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from modelyard.batch.engine import RowEngine
from modelyard.batch.model import BatchHeader
from modelyard.batch.ray_engine import BatchEngineError
from modelyard.batch.store import BatchStore
from modelyard.workflows.api import Workflow


@asynccontextmanager
async def open_provider_engine(
    workflow: Workflow,
    header: BatchHeader,
    store: BatchStore,
    *,
    config: str | None = None,
    poll_s: float = 10.0,
    job_rows: int = 10_000,
) -> AsyncIterator[RowEngine]:
    """A RowEngine that submits pulled rows as provider batch jobs of up to `job_rows` rows, polls every
    `poll_s` seconds and yields each row's result when its job ends. Raises BatchEngineError when the workflow
    is not one model step or its model routes to no OpenAI- or Anthropic-format deployment."""
    raise BatchEngineError("provider batches are not built yet")
    yield  # pragma: no cover
