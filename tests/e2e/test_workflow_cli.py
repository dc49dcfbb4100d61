"""The workflow CLI end to end, as real processes: run the shipped examples, plan, inspect runs, and
resume a run after `kill -9` of the process while a model call is in flight.

The shipped examples run twice: on the default backend (the in-process gateway over the embedded
provider simulator, exactly what a user gets from `modelyard run` with no config) and on the scripted
backend (`--backend scripted`, configured by MODELYARD_SCRIPTED_*), which the timing-sensitive tests
(plan figures, kill -9 while a call is in flight) use for determinism. No key and no network is needed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from modelyard.workflows.checkpoint import SqliteStore, load_run
from modelyard.workflows.records import RunStatus, StepState

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "workflows"
CLI = [sys.executable, "-m", "modelyard.cli.workflows"]


def env(*, simulator: bool = False, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    backend = {} if simulator else {"MODELYARD_WORKFLOW_BACKEND": "scripted"}
    return {**base, **backend, "COLUMNS": "160", **extra}


def cli(*args: str, timeout: float = 120, simulator: bool = False, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(simulator=simulator, **extra),
        cwd=ROOT,
    )


@pytest.mark.parametrize("simulator", [True, False], ids=["simulator", "scripted"])
@pytest.mark.parametrize(
    ("example", "expect"),
    [
        ("research.yaml", "context scoping:"),
        ("code_review.yaml", "`until`"),
        ("classify.yaml", "cost per 1,000 tasks (100 measured): all-premium (smart)"),
    ],
)
def test_the_examples_run_and_print_their_reports(example: str, expect: str, simulator: bool, tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    done = cli(
        "run", str(EXAMPLES / example), "--store", str(tmp_path / "runs.db"), "--json", str(out), simulator=simulator
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert expect in done.stdout
    assert "status: succeeded" in done.stdout and "critical path" in done.stdout
    data = json.loads(out.read_text())
    assert data["status"] == "succeeded" and data["totals"]["cost_usd"] > 0
    assert data["totals"]["pass_everything_prompt_tokens"] >= data["totals"]["prompt_tokens"]
    if example == "classify.yaml":
        comparison = data["comparison"]
        assert comparison["tasks"] == 100
        assert comparison["premium_per_tasks_usd"] > comparison["routed_per_tasks_usd"] > 0


def test_inputs_on_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    goal = "vector databases for code search"
    store = str(tmp_path / "r.db")
    research = str(EXAMPLES / "research.yaml")
    done = cli("run", research, "-i", f"goal={goal}", "--store", store, "--json", str(out))
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert data["inputs"] == {"goal": goal}
    plan_step = next(s for s in data["steps"] if s["key"] == "plan")
    assert plan_step["state"] == "succeeded"
    bad = cli("run", str(EXAMPLES / "research.yaml"), "-i", "goall=x", "--store", store)
    assert bad.returncode == 2 and "unknown input 'goall'" in bad.stderr


def test_plan_estimates_without_running(tmp_path: Path) -> None:
    done = cli("plan", str(EXAMPLES / "research.yaml"), "--json", "-", MODELYARD_SCRIPTED_DELAY_S="1.5")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert [s["step"] for s in plan["steps"]] == ["plan", "search", "analyze", "synthesize"]
    assert plan["critical_path"] == ["plan", "search", "analyze", "synthesize"]
    assert plan["critical_path_ms"] == pytest.approx(4 * 1500)
    assert plan["cost_usd"] > 0
    assert "estimated time: critical path 6.00s" in done.stderr  # the table goes to stderr with --json -
    shown = cli("plan", str(EXAMPLES / "classify.yaml"))
    assert shown.returncode == 0 and "classify" in shown.stdout and "fan-out x100" in shown.stdout


def test_an_invalid_workflow_exits_2_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "schema: modelyard.workflow/v1\nname: bad\nsteps:\n"
        "  a: {model: m, prompt: hi}\n  b: {model: m, prompt: '{{ a }}'}\n"
    )
    done = cli("run", str(bad), "--store", str(tmp_path / "r.db"))
    assert done.returncode == 2
    problem = "the template reads step 'a' but the step does not list it in `needs`"
    assert f"{bad}:5: step 'b': {problem}" in done.stderr
    assert cli("plan", str(bad)).returncode == 2


def test_runs_list_and_show_with_a_timeline(tmp_path: Path) -> None:
    store = str(tmp_path / "runs.db")
    done = cli(
        "run",
        str(EXAMPLES / "research.yaml"),
        "--store",
        store,
        "--run-id",
        "r-show",
        MODELYARD_SCRIPTED_DELAY_S="0.05",
    )
    assert done.returncode == 0, done.stderr
    listed = cli("runs", "list", "--store", store, "--json", "-")
    assert listed.returncode == 0
    rows = json.loads(listed.stdout)["runs"]
    assert [r["run_id"] for r in rows] == ["r-show"] and rows[0]["status"] == "succeeded"
    assert rows[0]["steps_done"] == 6
    shown = cli("runs", "show", "r-show", "--store", store)
    assert shown.returncode == 0, shown.stderr
    assert "timeline:" in shown.stdout and "synthesize" in shown.stdout
    bars = [line for line in shown.stdout.splitlines() if line.startswith(("plan ", "search ", "analyze "))]
    assert len(bars) >= 3 and all("|" in b and "#" in b for b in bars)
    assert cli("runs", "show", "nope", "--store", store).returncode == 2


SLOW_WORKFLOW = """
schema: modelyard.workflow/v1
name: crash-me
steps:
  first: {model: quick, prompt: "step one"}
  side: {model: quick, prompt: "independent"}
  second: {model: slow, needs: [first], prompt: "step two after {{ first }}"}
  third: {model: quick, needs: [second, side], prompt: "step three after {{ second }} {{ side }}"}
outputs: {final: "{{ third }}"}
"""


def _calls(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def test_resume_after_kill_9_reruns_nothing_finished_and_pays_once(tmp_path: Path) -> None:
    spec = tmp_path / "crash.yaml"
    spec.write_text(textwrap.dedent(SLOW_WORKFLOW))
    db = tmp_path / "runs.db"
    first_log, second_log = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    process = subprocess.Popen(
        [*CLI, "run", str(spec), "--store", str(db), "--run-id", "crash-1", "--no-progress"],
        env=env(MODELYARD_SCRIPTED_DELAYS='{"slow": 60}', MODELYARD_SCRIPTED_LOG=str(first_log)),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(c["step"] == "second" and c["event"] == "started" for c in _calls(first_log)):
            assert process.poll() is None, "the run ended before the slow step started"
            assert time.monotonic() < deadline, "the slow step never started"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=10) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()

    store = SqliteStore(db)
    crashed = load_run(store, "crash-1")
    assert crashed is not None and crashed.status is RunStatus.INTERRUPTED
    assert crashed.records["first"].state is StepState.SUCCEEDED
    assert crashed.records["side"].state is StepState.SUCCEEDED
    assert crashed.records["second"].state is StepState.INTERRUPTED
    paid_before = crashed.cost_usd
    assert paid_before == pytest.approx(crashed.records["first"].cost_usd + crashed.records["side"].cost_usd)
    store.close()

    out = tmp_path / "resumed.json"
    resumed = cli(
        "run", "--resume", "crash-1", "--store", str(db), "--json", str(out), MODELYARD_SCRIPTED_LOG=str(second_log)
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "2 reused from the store, not paid again" in resumed.stdout

    started_again = [c["step"] for c in _calls(second_log) if c["event"] == "started"]
    assert sorted(started_again) == ["second", "third"]  # nothing that had finished ran again
    first_run = [c["step"] for c in _calls(first_log) if c["event"] == "finished"]
    assert sorted(first_run) == ["first", "side"]

    store = SqliteStore(db)
    final = load_run(store, "crash-1")
    events = store.events("crash-1")
    store.close()
    assert final is not None and final.status is RunStatus.SUCCEEDED and final.sessions == 2
    finished = [e.key or "" for e in events if e.kind == "step_finished"]
    assert sorted(finished) == ["first", "second", "side", "third"]  # each stored once
    each_once = sum(final.records[k].cost_usd for k in ("first", "side", "second", "third"))
    assert final.cost_usd == pytest.approx(each_once)
    data = json.loads(out.read_text())
    assert data["totals"]["cost_usd"] == pytest.approx(each_once)
    assert data["status"] == "succeeded" and data["sessions"] == 2
    assert data["outputs"]["final"].startswith("[quick]")
