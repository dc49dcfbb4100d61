"""`kill -9` of `modelyard batch` at ~50%, then `--resume`: the issue's crash test, as real processes.

The driver runs 400 rows of a two-step workflow against the simulator on loopback (each step on its own simulated
model, 15 and 45 ms to the first token, so ~8 rows are in flight at any time). The test watches the store's done count,
SIGKILLs the driver at half, resumes, and checks on the simulator's own request counts that no finished step was
called again (extra calls <= --concurrency), that rows finished before the kill were not re-run, and that the
output holds every row exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.batch.store import iter_results
from modelyard.batch.store_sqlite import SqliteBatchStore
from modelyard.sim.fleet import Fleet, SimModel
from modelyard.sim.server import SimServer
from tests.e2e.cli_env import cli_env

ROOT = Path(__file__).resolve().parents[3]
CLI = [sys.executable, "-m", "modelyard.cli.main"]
ROWS = 400
CONCURRENCY = 8
WORKFLOW = """
schema: modelyard.workflow/v1
name: two-steps
inputs: {ticket: string}
steps:
  classify: {model: classifier, prompt: "Classify: {{ inputs.ticket }}", max_tokens: 16}
  extract: {model: extractor, needs: [classify], prompt: "Extract from {{ inputs.ticket }} ({{ classify }})",
            max_tokens: 16}
outputs: {label: "{{ classify }}", fields: "{{ extract }}"}
"""


def sim_fleet() -> Fleet:
    """`extract` slower than `classify`: most rows in flight have `classify` checkpointed (rows do not move in
    lockstep through the same step)."""
    return Fleet(
        models=[
            SimModel(name="sim-classify", ttft_ms=15.0, output_tokens=6),
            SimModel(name="sim-extract", ttft_ms=45.0, output_tokens=6),
        ]
    )


def write_config(sim: SimServer, path: Path) -> Path:
    deployments = "".join(
        f"""  - name: {name}
    provider: openai
    model: sim-{name}
    api_base: {sim.openai_base}
    api_key: sim
    price: {{input: 1.0, output: 4.0}}
    timeouts: {{connect: 2, first_token: 20, total: 30}}
"""
        for name in ("classify", "extract")
    )
    models = "models:\n  classifier: {candidates: [classify]}\n  extractor: {candidates: [extract]}\n"
    text = f"deployments:\n{deployments}{models}"
    path.write_text(text + "routing: {retries: 0}\n", encoding="utf-8")
    return path


def write_rows(path: Path, n: int) -> Path:
    lines = [json.dumps({"id": i, "ticket": f"ticket {i}: the export button does nothing"}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def requests(sim: SimServer) -> dict[str, int]:
    models = sim.stats()["models"]
    return {name: models[f"sim-{name}"]["requests"] for name in ("classify", "extract")}


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(sim_fleet(), seed=3) as server:
        yield server


def test_kill_9_at_half_then_resume_finishes_without_paying_a_finished_step_twice(
    sim: SimServer, tmp_path: Path
) -> None:
    config = write_config(sim, tmp_path / "gateway.yaml")
    workflow = tmp_path / "two.yaml"
    workflow.write_text(textwrap.dedent(WORKFLOW), encoding="utf-8")
    rows, out, db = write_rows(tmp_path / "rows.jsonl", ROWS), tmp_path / "out.jsonl", tmp_path / "batch.db"
    common = ["--store", str(db), "--config", str(config), "--no-progress"]
    start = [*CLI, "batch", str(workflow), "--inputs", str(rows), "--out", str(out), "--batch-id", "b-kill"]
    process = subprocess.Popen(
        [*start, "--concurrency", str(CONCURRENCY), *common],
        cwd=ROOT,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    store = SqliteBatchStore(db) if _wait_for(db) else None
    try:
        assert store is not None, "the batch store never appeared"
        deadline = time.monotonic() + 60
        while store.totals("b-kill").done < ROWS // 2 or not store.steps("b-kill"):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the batch did not reach half in time"
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        time.sleep(0.3)  # calls in flight at the kill reach the simulator (it counts them on arrival)
        at_kill = requests(sim)
        finished = {r.row: r.finished_at for r in iter_results(store, "b-kill")}
        assert ROWS // 2 <= len(finished) < ROWS, "killed too late to test a resume"
        assert store.steps("b-kill"), "no row had a checkpointed step at the kill (nothing to reuse)"

        resumed = subprocess.run(
            [*CLI, "batch", "--resume", "b-kill", *common],
            cwd=ROOT,
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        after = requests(sim)
        assert min(after.values()) >= ROWS  # every row's two steps ran, in one session or the other
        extra = sum(after.values()) - 2 * ROWS
        assert 0 <= extra <= CONCURRENCY, (at_kill, after)  # only calls in flight at the kill were repeated
        results = {r.row: r for r in iter_results(store, "b-kill")}
        assert sorted(results) == list(range(ROWS)) and all(r.status == "succeeded" for r in results.values())
        assert all(results[row].finished_at == at for row, at in finished.items())  # no finished row re-ran
        assert sum(r.reused for r in results.values()) >= 1  # a checkpointed step was reused, not called
        lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line.strip()]
        assert sorted(line["row"] for line in lines) == list(range(ROWS))  # every row once, none torn
        assert "batch id: b-kill" in resumed.stdout
    finally:
        if process.poll() is None:
            process.kill()
        if store is not None:
            store.close()


def _wait_for(path: Path, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_ctrl_c_saves_what_finished_exits_130_and_resume_finishes(sim: SimServer, tmp_path: Path) -> None:
    config = write_config(sim, tmp_path / "gateway.yaml")
    workflow = tmp_path / "two.yaml"
    workflow.write_text(textwrap.dedent(WORKFLOW), encoding="utf-8")
    rows, out, db = write_rows(tmp_path / "rows.jsonl", ROWS), tmp_path / "out.jsonl", tmp_path / "batch.db"
    common = ["--store", str(db), "--config", str(config), "--no-progress"]
    start = [*CLI, "batch", str(workflow), "--inputs", str(rows), "--out", str(out), "--batch-id", "b-int"]
    process = subprocess.Popen(
        [*start, *common], cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert _wait_for(db)
    store = SqliteBatchStore(db)
    try:
        deadline = time.monotonic() + 60
        while store.totals("b-int").done < ROWS // 4:
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
        assert process.returncode == 130, stdout + stderr
        assert "Traceback" not in stderr and "Continue with: modelyard batch --resume b-int" in stdout
        state = store.state("b-int")
        assert state is not None and state[0] == "stopped" and state[1]["reason"] == "interrupted"
        saved = store.totals("b-int").done
        lines = out.read_text(encoding="utf-8").splitlines()
        assert len(lines) == saved and ROWS // 4 <= saved < ROWS  # every finished row is in the output
        resumed = subprocess.run(
            [*CLI, "batch", "--resume", "b-int", *common], cwd=ROOT, env=cli_env(), capture_output=True, text=True
        )
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert store.totals("b-int").by_status == {"succeeded": ROWS}
    finally:
        if process.poll() is None:
            process.kill()
        store.close()
