"""Helpers for the workflow tests: workflows from inline YAML."""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import AsyncIterator

from aiohttp import web

from modelyard.workflows.spec import WorkflowSpec, parse_workflow

HEADER = "schema: modelyard.workflow/v1\nname: test\n"


def workflow(body: str, name: str = "wf.yaml", header: bool = True) -> WorkflowSpec:
    """A validated spec from YAML (dedented); the header lines come first unless header=False."""
    text = (HEADER if header else "") + textwrap.dedent(body).lstrip("\n")
    return parse_workflow(text, name)


@contextlib.asynccontextmanager
async def served(app: web.Application) -> AsyncIterator[str]:
    """`app` on a free loopback port for the block: its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
