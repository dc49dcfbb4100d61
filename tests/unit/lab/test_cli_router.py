"""`modelyard router convert|train|eval` end to end on a small labelled file (real MiniLM, no network)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelyard.cli.router import app
from tests.unit.lab.prompts import EASY, HARD

runner = CliRunner()


def write_data(path: Path, n: int = 80) -> None:
    rng = random.Random(3)
    rows = []
    for i in range(n):
        hard = i % 2 == 1
        prompt = rng.choice(HARD if hard else EASY).format(i, i)
        split = "test" if i % 5 == 0 else "train"
        rows.append({"prompt": prompt, "model": "small", "score": 0.0 if hard else 1.0, "cost": 0.0001, "split": split})
        rows.append({"prompt": prompt, "model": "large", "score": 1.0, "cost": 0.01, "split": split})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MODELYARD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def test_train_then_eval_with_plot(cache: Path, minilm) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("matplotlib")
    data, model = cache / "d.jsonl", cache / "r.npz"
    write_data(data)
    res = runner.invoke(app, ["train", "--data", str(data), "--out", str(model), "--max-tokens", "32", "--folds", "3"])
    assert res.exit_code == 0, res.output
    assert model.is_file() and "kept" in res.output and "calibrated" in res.output
    plot, report = cache / "curve.png", cache / "report.json"
    res = runner.invoke(
        app, ["eval", "--router", str(model), "--data", str(data), "--plot", str(plot), "--json", str(report)]
    )
    assert res.exit_code == 0, res.output
    assert "APGR" in res.output and "CPT(50%)" in res.output and "hull area" in res.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figures = json.loads(report.read_text())
    pair = figures["pair"]["all"]
    assert figures["prompts"] == 16
    # A perfect ranking scores APGR 0.75 here (half the prompts gain) and CPT(50%) 25%; random: 0.5 and 50%.
    assert pair["apgr_exact"] > 0.7 and pair["cpt50"] < 0.3
    assert pair["q_strong"] == 1.0 and pair["q_weak"] == 0.5
    # The artifact's calibrated knobs judged on this split: target, achieved ratio and band, cost, verdict.
    points = figures["artifact_points"]
    assert {p["mode"] for p in points} <= {"lambda", "threshold"} and points
    for p in points:
        lo, hi = p["band"]
        assert lo <= p["quality_ratio"] <= hi and p["target"] == 0.95 and p["prompts"] == 16
        assert p["target_in_band"] == (lo <= 0.95 <= hi)
        assert p["passes"] == (p["target_in_band"] and p["cost_ok"])
        assert p["cost_ratio"] < 1.0  # the cheap model answers the easy half
    assert "achieved (90% band)" in res.output


def test_eval_refuses_unknown_models(cache: Path, minilm) -> None:  # type: ignore[no-untyped-def]
    data, model = cache / "d.jsonl", cache / "r.npz"
    write_data(data, 30)
    assert (
        runner.invoke(
            app,
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(model),
                "--max-tokens",
                "16",
                "--folds",
                "2",
                "--kind",
                "logistic",
            ],
        ).exit_code
        == 0
    )
    other = cache / "other.jsonl"
    other.write_text(json.dumps({"prompt": "x", "model": "zzz", "score": 1, "cost": 1}) + "\n")
    res = runner.invoke(app, ["eval", "--router", str(model), "--data", str(other), "--split", "test"])
    assert res.exit_code == 2


def test_missing_files_fail_cleanly(cache: Path) -> None:
    res = runner.invoke(app, ["train", "--data", str(cache / "nope.jsonl")])
    # rich wraps the message at the terminal width, where a long temporary path may put the break anywhere
    assert res.exit_code == 2 and "no such file" in " ".join(res.output.split())
    res = runner.invoke(app, ["eval", "--router", str(cache / "nope.npz"), "--data", str(cache / "x.jsonl")])
    assert res.exit_code == 2


def test_convert_routerarena_copy(cache: Path) -> None:
    src = cache / "arena"
    src.mkdir()
    row = {
        "global_index": "MMLU_1",
        "question": "q",
        "token_usage": {"input_tokens": 3, "output_tokens": 1},
        "evaluation_result": {"score": 1.0, "inference_cost": 0.001},
    }
    (src / "m.jsonl").write_text(json.dumps(row) + "\n")
    out = cache / "arena.jsonl"
    res = runner.invoke(app, ["convert", "routerarena", "--src", str(src), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["model"] == "m"
    assert runner.invoke(app, ["convert", "nope", "--out", str(out)]).exit_code == 2
