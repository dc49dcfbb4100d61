"""A workflow using a sub-workflow, as real processes against the simulator on loopback: planned, run,
`kill -9`ed while inside the sub-workflow (its first step finished, its second in flight), resumed with
`--resume`; the simulator's own request counts show that no finished step was called (paid) twice.

The shipped pair examples/workflows/write_and_review.yaml (draft -> review -> revise) and review.yaml
(critique -> verdict) runs on two simulated models: `fast` answers at once; `smart` takes a minute to
its first token in the first session, so the run is certainly inside `review/verdict` when it is killed,
and answers at once after the kill.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.sim.fleet import Fleet, SimModel
from modelyard.sim.server import SimServer
from modelyard.workflows.checkpoint import SqliteStore, StoredRun, load_run
from modelyard.workflows.records import RunStatus, StepState
from tests.e2e.cli_env import cli_env

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "examples" / "workflows" / "write_and_review.yaml"
CLI = [sys.executable, "-m", "modelyard.cli.workflows"]
LEAVES = ("draft", "review/critique", "review/verdict", "revise")


def write_config(sim: SimServer, path: Path) -> Path:
    deployments = "".join(
        f"""  - name: {name}
    provider: openai
    model: sim-{name}
    api_base: {sim.openai_base}
    api_key: sim
    price: {{input: 1.0, output: 4.0}}
    timeouts: {{connect: 2, first_token: 120, total: 180}}
"""
        for name in ("fast", "smart")
    )
    models = "models:\n  fast: {candidates: [fast]}\n  smart: {candidates: [smart]}\n"
    path.write_text(f"deployments:\n{deployments}{models}routing: {{retries: 0}}\n", encoding="utf-8")
    return path


def requests(sim: SimServer) -> dict[str, int]:
    models = sim.stats()["models"]
    return {name: models[f"sim-{name}"]["requests"] for name in ("fast", "smart")}


@pytest.fixture
def sim() -> Iterator[SimServer]:
    fleet = Fleet(
        models=[
            SimModel(name="sim-fast", output_tokens=20),
            SimModel(name="sim-smart", ttft_ms=60_000.0, output_tokens=20),
        ]
    )
    with SimServer(fleet, seed=5) as server:
        yield server


def _stored(db: Path, run_id: str) -> StoredRun | None:
    if not db.exists():
        return None
    store = SqliteStore(db)
    try:
        return load_run(store, run_id)
    finally:
        store.close()


def _inside_the_sub_workflow(run: StoredRun | None) -> bool:
    if run is None:
        return False
    critique, verdict = run.records.get("review/critique"), run.records.get("review/verdict")
    return (
        critique is not None
        and critique.state is StepState.SUCCEEDED
        and verdict is not None
        and verdict.state is StepState.RUNNING
    )


def test_plan_then_kill_9_inside_the_sub_workflow_then_resume_pays_nothing_twice(
    sim: SimServer, tmp_path: Path
) -> None:
    config = write_config(sim, tmp_path / "gateway.yaml")
    db = tmp_path / "runs.db"
    common = ["--store", str(db), "--config", str(config)]

    planned = subprocess.run(
        [*CLI, "plan", str(WORKFLOW), "--config", str(config), "--json", "-"],
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert planned.returncode == 0, planned.stdout + planned.stderr
    plan = json.loads(planned.stdout)
    rows = {row["step"]: row for row in plan["steps"]}
    assert [row["step"] for row in plan["steps"]] == ["draft", "review", *LEAVES[1:3], "revise"]
    assert rows["review/verdict"]["depth"] == 1 and rows["review"]["calls"] == 2
    assert plan["cost_usd"] == pytest.approx(sum(rows[k]["cost_usd"] for k in LEAVES))
    assert requests(sim) == {"fast": 0, "smart": 0}  # planning called no model

    process = subprocess.Popen(
        [*CLI, "run", str(WORKFLOW), *common, "--run-id", "sub-1", "--no-progress"],
        cwd=ROOT,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (_inside_the_sub_workflow(_stored(db, "sub-1")) and requests(sim)["smart"] == 1):
            assert process.poll() is None, "the run ended before it was inside the sub-workflow"
            assert time.monotonic() < deadline, "the run never reached review/verdict"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=10) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()

    crashed = _stored(db, "sub-1")
    assert crashed is not None and crashed.status is RunStatus.INTERRUPTED
    assert crashed.records["review"].state is StepState.INTERRUPTED
    assert crashed.records["review/verdict"].state is StepState.INTERRUPTED
    paid_before = crashed.cost_usd
    assert paid_before == pytest.approx(crashed.records["draft"].cost_usd + crashed.records["review/critique"].cost_usd)
    at_kill = requests(sim)
    assert at_kill == {"fast": 2, "smart": 1}

    sim.set_model("sim-smart", ttft_ms=0.0)
    out = tmp_path / "resumed.json"
    resumed = subprocess.run(
        [*CLI, "run", "--resume", "sub-1", *common, "--json", str(out), "--no-progress"],
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "2 reused from the store, not paid again" in resumed.stdout
    # The finished steps (draft, review/critique) were not called again; review/verdict, in flight and
    # unpaid at the kill, ran once more, then revise: the simulator saw exactly those two calls.
    assert requests(sim) == {"fast": 2, "smart": 3}

    final = _stored(db, "sub-1")
    assert final is not None and final.status is RunStatus.SUCCEEDED and final.sessions == 2
    assert all(final.records[k].state is StepState.SUCCEEDED for k in (*LEAVES, "review"))
    each_once = sum(final.records[k].cost_usd for k in LEAVES)
    assert final.cost_usd == pytest.approx(each_once)
    data = json.loads(out.read_text())
    assert data["status"] == "succeeded" and data["totals"]["cost_usd"] == pytest.approx(each_once)
    review = final.records["review"].output
    assert review["critique"] == final.records["review/critique"].output
    assert isinstance(review["ready"], bool) and review["ready"] == final.records["review/verdict"].output["ready"]
    assert data["outputs"]["text"] == final.records["revise"].output and data["outputs"]["text"]
    assert data["outputs"]["ready_before_revision"] == review["ready"]


def test_a_workflow_that_includes_itself_is_refused_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text(
        "schema: modelyard.workflow/v1\nname: loop\nsteps:\n  a: {model: fast, prompt: hi}\n"
        "  again: {workflow: loop.yaml}\n",
        encoding="utf-8",
    )
    for args in (["plan", str(path)], ["run", str(path), "--store", str(tmp_path / "runs.db")]):
        done = subprocess.run(
            [*CLI, *args],
            cwd=ROOT,
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"{path}:5: step 'again': sub-workflow cycle: loop.yaml -> loop.yaml" in done.stdout + done.stderr
        assert "Traceback" not in done.stderr
    store = SqliteStore(tmp_path / "runs.db")
    try:
        assert store.run_ids() == []  # refused before anything ran
    finally:
        store.close()
