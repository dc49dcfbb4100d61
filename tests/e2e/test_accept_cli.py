"""`modelyard accept` as a real process on the shipped example (its own simulated fleet: no keys, no network):
the matrix, the JSON and HTML reports, the quality file, a cached rerun at $0, `--require`, the budget cap,
and a bad suite rejected at its file:line with exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "acceptance" / "suite.yaml"
CLI = [sys.executable, "-c", "from modelyard.cli.main import main; main()", "accept"]


def accept(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env={**env, "COLUMNS": "160"}
    )


def test_the_example_runs_in_one_command_and_writes_every_output(tmp_path: Path) -> None:
    done = accept(
        str(EXAMPLE), "--html", "report.html", "--json", "report.json", "--write-quality", "q.json", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "cheap@sim" in done.stdout and "strong@sim" in done.stdout and "extraction" in done.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    cheap, strong = report["models"]["cheap@sim"], report["models"]["strong@sim"]
    assert cheap["tasks"]["classification"]["accepted"] and not cheap["tasks"]["extraction"]["accepted"]
    assert strong["accepted"] and not cheap["accepted"]
    quality = json.loads((tmp_path / "q.json").read_text())
    assert quality["schema"] == "modelyard.acceptance-results/v1" and quality["suite"] == "support-desk"
    assert quality["deployments"]["cheap@sim"]["extraction"]["accepted"] is False
    assert quality["deployments"]["strong@sim"]["extraction"]["accepted"] is True
    page = (tmp_path / "report.html").read_text()
    assert page.startswith("<!doctype html>") and "support-desk" in page and "http" not in page.split("<body>")[1]
    assert (tmp_path / ".modelyard" / "accept-cache.sqlite").is_file()
    first_cost = report["totals"]["cost_usd"]
    assert first_cost > 0

    rerun = accept(str(EXAMPLE), "--json", "again.json", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    totals = json.loads((tmp_path / "again.json").read_text())["totals"]
    assert totals["cost_usd"] == 0.0 and totals["cache_hits"] == totals["case_runs"] > 0
    assert "cached" in rerun.stdout


def test_require_exits_1_for_a_rejected_model_and_0_for_an_accepted_one(tmp_path: Path) -> None:
    rejected = accept(str(EXAMPLE), "--require", "cheap@sim", cwd=tmp_path)
    assert rejected.returncode == 1
    assert "cheap@sim" in rejected.stderr and "not accepted" in rejected.stderr
    accepted = accept(str(EXAMPLE), "--models", "strong@sim", "--require", "strong@sim", cwd=tmp_path)
    assert accepted.returncode == 0, accepted.stderr


def test_the_budget_cap_stops_launching_and_says_so(tmp_path: Path) -> None:
    done = accept(
        str(EXAMPLE), "--no-cache", "--budget-usd", "0.001", "--concurrency", "1", "--json", "r.json", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    totals = json.loads((tmp_path / "r.json").read_text())["totals"]
    assert totals["cost_usd"] <= 0.001
    assert totals["budget_skipped"] > 0
    assert "budget" in done.stdout
    assert not (tmp_path / ".modelyard").exists()  # --no-cache wrote nothing


def test_a_bad_suite_fails_at_its_line_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "schema: modelyard.acceptance/v1\nname: bad\ntasks:\n  t:\n    cases:\n"
        "      - id: a\n        prompt: hi\n        assert: [{regex: '(?<=x)y'}]\n"
    )
    done = accept(str(bad), cwd=tmp_path)
    assert done.returncode == 2
    assert f"{bad}:8: tasks.t.cases[0].assert[0].regex: not an RE2 pattern" in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr
