"""`modelyard batch` as a real process: the budget at 30% of the projected cost (and the printed command that
continues it), bad options and inputs (exit 2, no traceback), and the README's command on the embedded default."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.sim.fleet import Fleet, SimModel
from modelyard.sim.server import SimServer
from tests.e2e.cli_env import cli_env

ROOT = Path(__file__).resolve().parents[3]
CLI = [sys.executable, "-m", "modelyard.cli.main"]
ROWS = 200
WORKFLOW = """
schema: modelyard.workflow/v1
name: label
inputs: {ticket: string}
steps:
  classify: {model: labeller, prompt: "Classify this ticket: {{ inputs.ticket }}", max_tokens: 8}
outputs: {label: "{{ classify }}"}
"""


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(Fleet(models=[SimModel(name="sim-label", ttft_ms=5.0, output_tokens=8)]), seed=4) as server:
        yield server


@pytest.fixture(scope="module")
def files(sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("batch-cli")
    config = base / "gateway.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            deployments:
              - {{name: label, provider: openai, model: sim-label, api_base: "{sim.openai_base}", api_key: sim,
                 price: {{input: 2.0, output: 8.0}}, timeouts: {{connect: 2, first_token: 20, total: 30}}}}
            models:
              labeller: {{candidates: [label]}}
            routing: {{retries: 0}}
            """
        ),
        encoding="utf-8",
    )
    workflow = base / "label.yaml"
    workflow.write_text(textwrap.dedent(WORKFLOW), encoding="utf-8")
    rows = base / "rows.jsonl"
    # tickets of a few lengths: rows do not all cost the same
    lines = [json.dumps({"ticket": f"ticket {i} " + "the app crashes " * (1 + i % 5)}) for i in range(ROWS)]
    rows.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"config": config, "workflow": workflow, "rows": rows, "base": base}


def run_batch(files: dict[str, Path], name: str, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    report = files["base"] / f"{name}.json"
    done = cli(
        "batch",
        str(files["workflow"]),
        "--inputs",
        str(files["rows"]),
        "--out",
        str(files["base"] / f"{name}.jsonl"),
        "--store",
        str(files["base"] / f"{name}.db"),
        "--config",
        str(files["config"]),
        "--batch-id",
        name,
        "--no-progress",
        "--json",
        str(report),
        *extra,
    )
    data = json.loads(report.read_text()) if report.exists() else {}
    return done, data


def test_the_budget_at_30_percent_of_the_projected_cost_stops_the_batch_and_says_how_to_continue(
    files: dict[str, Path],
) -> None:
    full, whole = run_batch(files, "full", "--concurrency", "16")
    assert full.returncode == 0, full.stdout + full.stderr
    projected = whole["cost_usd"]
    per_row_max = max(1e-12, projected / ROWS) * 3  # rows differ in length: a generous bound on one row
    limit = round(projected * 0.3, 8)

    stopped, report = run_batch(files, "b-budget", "--concurrency", "16", "--max-cost-usd", str(limit))
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    assert report["stopped_by_budget"] is True
    assert report["spent_usd"] <= limit + per_row_max
    done = ROWS - report["left"]
    assert 0.2 * ROWS <= done <= 0.4 * ROWS, done  # stopped near 30%, not at the first row nor at the end
    assert f"{report['left']:,} rows left" in stopped.stdout
    command = re.search(r"Continue with: (modelyard batch --resume b-budget --max-cost-usd (\S+))", stopped.stdout)
    assert command is not None, stopped.stdout
    assert float(command.group(2)) > report["spent_usd"]

    store = str(files["base"] / "b-budget.db")
    resumed = cli(
        "batch", "--resume", "b-budget", "--max-cost-usd", command.group(2), "--store", store,
        "--config", str(files["config"]), "--no-progress", "--json", str(files["base"] / "resumed.json"),
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    again = json.loads((files["base"] / "resumed.json").read_text())
    assert again["left"] == 0 and again["done_before"] == done
    assert again["cost_usd"] == pytest.approx(projected, rel=0.05)  # nothing paid twice


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--concurrency", "0"], "--concurrency must be between 1 and 10000"),
        (["--concurrency", "20000"], "--concurrency must be between 1 and 10000"),
        (["--max-cost-usd", "nan"], "--max-cost-usd must be a finite number above 0"),
        (["--max-cost-usd", "-1"], "--max-cost-usd must be a finite number above 0"),
        (["--engine", "spark"], "--engine must be local or ray"),
    ],
)
def test_bad_options_exit_2_without_a_traceback(files: dict[str, Path], args: list[str], message: str) -> None:
    done, _ = run_batch(files, "bad", *args)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_inputs_file_and_an_unknown_batch_exit_2(files: dict[str, Path]) -> None:
    missing = cli("batch", str(files["workflow"]), "--inputs", "/nonexistent/rows.jsonl", "--out", "/tmp/x.jsonl")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr and "rows.jsonl" in missing.stderr
    unknown = cli("batch", "--resume", "b-nope", "--store", str(files["base"] / "none.db"))
    assert unknown.returncode == 2 and "no batch 'b-nope'" in unknown.stderr


def test_resume_refuses_a_changed_inputs_file_but_accepts_the_same_bytes_elsewhere(files: dict[str, Path]) -> None:
    base = files["base"]
    rows = base / "small.jsonl"
    rows.write_text("".join(json.dumps({"ticket": f"t{i}"}) + "\n" for i in range(5)), encoding="utf-8")
    first = cli(
        "batch", str(files["workflow"]), "--inputs", str(rows), "--out", str(base / "small-out.jsonl"),
        "--store", str(base / "small.db"), "--config", str(files["config"]), "--batch-id", "b-small", "--no-progress",
    )  # fmt: skip
    assert first.returncode == 0, first.stdout + first.stderr
    moved = base / "moved.jsonl"
    moved.write_bytes(rows.read_bytes())
    rows.write_text(rows.read_text() + json.dumps({"ticket": "late"}) + "\n", encoding="utf-8")
    common = ["--store", str(base / "small.db"), "--config", str(files["config"]), "--no-progress"]
    changed = cli("batch", "--resume", "b-small", *common)
    assert changed.returncode == 2 and "changed since batch b-small started" in changed.stderr
    same = cli("batch", "--resume", "b-small", "--inputs", str(moved), *common)
    assert same.returncode == 0, same.stdout + same.stderr
    shown = cli("batches", "show", "b-small", "--store", str(base / "small.db"))
    assert shown.returncode == 0 and "state: finished" in shown.stdout and "succeeded 5" in shown.stdout


def test_the_readme_command_finishes_every_row_on_the_embedded_simulator(tmp_path: Path) -> None:
    """`modelyard batch examples/batch/triage.yaml --inputs examples/batch/tickets.jsonl --out ...` with no config."""
    out = tmp_path / "out.jsonl"
    done = cli(
        "batch", "examples/batch/triage.yaml", "--inputs", "examples/batch/tickets.jsonl", "--out", str(out),
        "--store", str(tmp_path / "runs.db"), timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [line["row"] for line in lines] == list(range(1000))
    assert all(line["status"] == "succeeded" for line in lines)
    labels = {line["outputs"]["label"] for line in lines}
    assert labels <= {"billing", "bug", "feature_request", "account", "other"} and len(labels) > 1
    assert "rows: succeeded 1,000" in done.stdout and "classify" in done.stdout and "extract" in done.stdout
