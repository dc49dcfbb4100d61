"""`--provider-batch` end to end on the simulator's Batch APIs: 500 rows through the OpenAI-format and 500 through
the Anthropic-format API at half the live price, and a driver killed with SIGKILL while its job is in flight,
resumed: the job is collected, not submitted again (the simulator answers every row exactly once)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from modelyard.batch.model import BatchHeader, RowResult, RowTask
from modelyard.batch.provider_batch import open_provider_engine
from modelyard.batch.ray_engine import BatchEngineError
from modelyard.batch.store import open_batch_store
from modelyard.sim.batch_api import batch_state
from modelyard.sim.server import SimServer
from modelyard.workflows.api import Workflow

ROWS = 500
PRICE = {"input": 2.0, "output": 8.0, "cached_input": 2.0, "cache_write": 2.0}
WORKFLOW = """
schema: modelyard.workflow/v1
name: label
inputs: {ticket: string, id: integer}
steps:
  classify:
    model: MODEL
    prompt: "Classify this support ticket: {{ inputs.ticket }}"
    max_tokens: 40
outputs: {label: "{{ classify }}", id: "{{ inputs.id }}"}
"""
SCHEMA_WORKFLOW = """
schema: modelyard.workflow/v1
name: extract
inputs: {ticket: string, id: integer}
steps:
  extract:
    model: MODEL
    prompt: "Extract the fields of: {{ inputs.ticket }}"
    output: {schema: {type: object}}
outputs: {fields: "{{ extract }}"}
"""


def config_text(url: str, delay_s: float) -> str:
    headers = f'headers: {{x-sim-batch-delay-s: "{delay_s}"}}'
    return textwrap.dedent(f"""
        deployments:
          - {{name: small@openai, provider: openai, model: sim-small, api_base: {url}/v1, api_key: k,
             price: {PRICE}, {headers}}}
          - {{name: small@anthropic, provider: anthropic, model: sim-small, api_base: {url}, api_key: k,
             price: {PRICE}, {headers}}}
          - {{name: small@gemini, provider: gemini, model: sim-small, api_base: {url}, api_key: k}}
        models:
          via-openai: {{strategy: priority, candidates: [small@openai]}}
          via-anthropic: {{strategy: priority, candidates: [small@anthropic]}}
          via-gemini: {{strategy: priority, candidates: [small@gemini]}}
        """)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(instant=True, seed=0) as server:
        yield server


def setup(tmp_path: Path, sim: SimServer, model: str, text: str = WORKFLOW, delay_s: float = 0.3) -> tuple[Any, ...]:
    sim.reset()
    sim._on_loop(lambda: sim.app.cloud_state.pop("batch_api", None))  # reset keeps the Batch APIs' jobs
    config = tmp_path / "config.yaml"
    config.write_text(config_text(sim.url, delay_s))
    workflow = Workflow.from_string(text.replace("MODEL", model))
    store = open_batch_store(tmp_path / "runs.db")
    header = BatchHeader(f"b-test-{model}", workflow.name, "wf.yaml", text, "in.jsonl", "jsonl", "x", ROWS, {}, {})
    store.create_batch(header)
    return workflow, store, header, str(config)


async def tasks(rows: range | list[int]) -> AsyncIterator[RowTask]:
    for row in rows:
        yield RowTask(row, {"ticket": f"ticket number {row}: my invoice is wrong", "id": row})


async def run_all(
    workflow: Workflow, header: BatchHeader, store: Any, config: str, rows: Any, **kw: Any
) -> list[RowResult]:
    async with open_provider_engine(workflow, header, store, config=config, poll_s=0.05, **kw) as engine:
        return [result async for result in engine.run(tasks(rows), 16)]


def live_cost(result: RowResult) -> float:
    totals = next(iter(result.steps.values()))
    return (totals.prompt_tokens * PRICE["input"] + totals.completion_tokens * PRICE["output"]) / 1e6


@pytest.mark.parametrize(("model", "wire"), [("via-openai", "openai"), ("via-anthropic", "anthropic")])
def test_500_rows_at_half_the_live_price(tmp_path: Path, sim: SimServer, model: str, wire: str) -> None:
    workflow, store, header, config = setup(tmp_path, sim, model)
    results = asyncio.run(run_all(workflow, header, store, config, range(ROWS), job_rows=200))
    assert sorted(r.row for r in results) == list(range(ROWS))
    assert {r.status for r in results} == {"succeeded"}
    stats = sim.stats()["models"]["sim-small"]
    assert stats["requests"] == ROWS and stats["by_wire"][wire] == ROWS
    for result in results:
        assert result.cost_usd == pytest.approx(0.5 * live_cost(result), rel=1e-9)
        assert result.cost_usd > 0 and result.outputs["id"] == result.row and result.outputs["label"]
    subs = store.submissions(header.batch_id)
    assert len(subs) == 3 and {s.state for s in subs} == {"collected"}  # 200 + 200 + 100 rows
    assert sorted(row for s in subs for row in s.rows) == list(range(ROWS))
    assert len(store.done_rows(header.batch_id)) == ROWS
    store.close()


def test_schema_checked_without_repair(tmp_path: Path, sim: SimServer) -> None:
    workflow, store, header, config = setup(tmp_path, sim, "via-openai", SCHEMA_WORKFLOW)
    results = asyncio.run(run_all(workflow, header, store, config, range(20)))
    assert len(results) == 20
    for result in results:  # the simulator answers JSON for a json_schema response_format
        assert result.status == "succeeded", result.error
        assert isinstance(result.outputs["fields"], dict)
    assert sim.stats()["models"]["sim-small"]["requests"] == 20  # no repair calls
    store.close()


def test_typed_outputs_are_checked_without_repair(tmp_path: Path, sim: SimServer) -> None:
    typed = SCHEMA_WORKFLOW.replace(
        'outputs: {fields: "{{ extract }}"}',
        'outputs: {fields: {value: "{{ extract }}", schema: {type: object}}, id: {value: "{{ inputs.id }}", '
        "schema: {type: string}}}",
    )
    workflow, store, header, config = setup(tmp_path, sim, "via-openai", typed)
    assert set(workflow.spec.output_schemas) == {"fields", "id"}
    results = asyncio.run(run_all(workflow, header, store, config, range(5)))
    assert sorted(r.row for r in results) == list(range(5))
    for result in results:  # `fields` is an object: valid; `id` is a number, not the declared string
        assert result.status == "failed"
        assert (
            result.error
            == "output 'id' does not match its schema: at the top level: " + f"{result.row} is not of type 'string'"
        )
    assert sim.stats()["models"]["sim-small"]["requests"] == 5  # no repair calls
    store.close()


def test_expired_rows_fail_with_the_reason(tmp_path: Path, sim: SimServer) -> None:
    workflow, store, header, config = setup(tmp_path, sim, "via-anthropic")
    text = Path(config).read_text().replace("x-sim-batch-delay-s:", 'x-sim-batch-expire: "3", x-sim-batch-delay-s:')
    Path(config).write_text(text)
    results = asyncio.run(run_all(workflow, header, store, config, range(10)))
    failed = sorted(r.row for r in results if r.status == "failed")
    assert failed == [7, 8, 9]
    assert all("expired" in (r.error or "") for r in results if r.status == "failed")
    assert sum(r.cost_usd for r in results if r.status == "failed") == 0
    store.close()


def test_refuses_what_a_batch_api_cannot_run(tmp_path: Path, sim: SimServer) -> None:
    workflow, store, header, config = setup(tmp_path, sim, "via-gemini")

    async def gemini() -> None:
        async with open_provider_engine(workflow, header, store, config=config):
            pass

    with pytest.raises(BatchEngineError, match="no OpenAI- or Anthropic-format deployment"):
        asyncio.run(gemini())
    two = Workflow.from_string(
        WORKFLOW.replace("MODEL", "via-openai").replace(
            "outputs:", "  second: {model: via-openai, needs: [classify], prompt: x}\noutputs:"
        )
    )

    async def open_two() -> None:
        async with open_provider_engine(two, header, store, config=config):
            pass

    with pytest.raises(BatchEngineError, match="exactly one model step"):
        asyncio.run(open_two())
    store.close()


DRIVER = """
import asyncio, sys
from modelyard.batch.model import BatchHeader, RowTask
from modelyard.batch.provider_batch import open_provider_engine
from modelyard.batch.store import open_batch_store
from modelyard.workflows.api import Workflow

db, config, text, batch_id, rows = sys.argv[1:6]
async def feed():
    for row in range(int(rows)):
        yield RowTask(row, {"ticket": f"ticket number {row}: my invoice is wrong", "id": row})
async def main():
    store = open_batch_store(db)
    header = store.header(batch_id)
    async with open_provider_engine(Workflow.from_string(text), header, store, config=config, poll_s=0.05) as engine:
        async for result in engine.run(feed(), 16):
            print("ROW", result.row, flush=True)
asyncio.run(main())
"""


@pytest.mark.parametrize(
    ("model", "forget"),
    [("via-openai", False), ("via-anthropic", False), ("via-openai", True), ("via-anthropic", True)],
)
def test_kill_while_in_flight_then_resume_collects_the_same_job(
    tmp_path: Path, sim: SimServer, model: str, forget: bool
) -> None:
    """`forget`: the kill came between the job's creation and the saving of its id (found again by the nonce
    in OpenAI's metadata, by creation time and request count at Anthropic)."""
    workflow, store, header, config = setup(tmp_path, sim, model, delay_s=2.0)
    text = WORKFLOW.replace("MODEL", model)
    store.close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    args = [sys.executable, "-c", DRIVER, str(tmp_path / "runs.db"), config, text, header.batch_id, str(ROWS)]
    driver = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 30
        while not sim._on_loop(lambda: len(batch_state(sim.app).jobs)) and time.monotonic() < deadline:
            assert driver.poll() is None, driver.stderr.read() if driver.stderr else ""
            time.sleep(0.05)
        os.kill(driver.pid, signal.SIGKILL)
    finally:
        driver.wait(10)
    assert sim._on_loop(lambda: len(batch_state(sim.app).jobs)) == 1
    assert sim.stats()["models"]["sim-small"]["requests"] == 0  # killed while the job was in flight
    store = open_batch_store(tmp_path / "runs.db")
    [sub] = store.submissions(header.batch_id)
    assert sub.state in ("pending", "submitted") and len(sub.rows) == ROWS
    [job_id] = sim._on_loop(lambda: list(batch_state(sim.app).jobs))
    if forget:
        sub.job_id, sub.state = None, "pending"
        store.save_submission(sub)
        store.flush()
    assert store.done_rows(header.batch_id) == {}
    results = asyncio.run(run_all(workflow, header, store, config, range(ROWS)))
    assert sorted(r.row for r in results) == list(range(ROWS))
    assert {r.status for r in results} == {"succeeded"}
    assert all(r.outputs["id"] == r.row for r in results)  # the resumed rows' inputs reached their outputs
    assert sim._on_loop(lambda: len(batch_state(sim.app).jobs)) == 1  # no second job
    assert sim.stats()["models"]["sim-small"]["requests"] == ROWS  # every row answered exactly once
    [collected] = store.submissions(header.batch_id)
    assert collected.job_id == job_id and collected.state == "collected"
    store.close()
