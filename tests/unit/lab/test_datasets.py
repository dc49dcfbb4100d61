"""The labelled-data schema, its loader, and where the shared data is looked for."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modelyard.lab import datasets as ds

ROWS = [
    {"prompt": "2+2?", "model": "cheap", "score": 1, "cost": 0.001, "split": "train", "task": "math"},
    {"prompt": "2+2?", "model": "strong", "score": 1, "cost": 0.01, "split": "train", "task": "math"},
    {"prompt": "prove it", "model": "cheap", "score": 0, "cost": 0.002, "split": "test"},
    {"prompt": "prove it", "model": "strong", "score": 0.5, "cost": 0.02, "split": "test"},
    {"prompt": "hello", "model": "strong", "score": 1, "input_tokens": 1000, "output_tokens": 500},
]


def test_pivot_rows_into_matrices(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    ds.write_rows(path, ROWS)
    data = ds.load_labelled(path, prices={"strong": {"input": 2.0, "output": 10.0}})
    assert data.prompts == ["2+2?", "prove it", "hello"]
    assert data.models == ["cheap", "strong"]
    np.testing.assert_array_equal(data.scores, [[1, 1], [0, 0.5], [np.nan, 1]])
    # the last row is priced from tokens: (1000 * 2 + 500 * 10) / 1e6
    np.testing.assert_allclose(data.costs, [[0.001, 0.01], [0.002, 0.02], [np.nan, 0.007]])
    assert data.tasks == ["math", "", ""]
    assert len(data.split("train")) == 1 and len(data.split("test")) == 1
    assert len(data.complete()) == 2
    assert data.with_models(["strong"]).prompts == ["2+2?", "prove it", "hello"]


def test_replay_totals_are_sums_of_recorded_costs(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    ds.write_rows(path, ROWS[:4])
    data = ds.load_labelled(path)
    assert np.nansum(data.costs[:, 0]) == pytest.approx(0.003)
    assert np.nansum(data.costs[:, 1]) == pytest.approx(0.03)


def test_csv_schema(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('prompt,model,score,cost\n"a, b",m1,1,0.5\n"a, b",m2,0,\n', encoding="utf-8")
    data = ds.load_labelled(path)
    assert data.prompts == ["a, b"]
    np.testing.assert_array_equal(data.scores, [[1.0, 0.0]])
    assert data.costs[0, 0] == 0.5 and np.isnan(data.costs[0, 1])


@pytest.mark.parametrize(
    ("row", "message"),
    [({"model": "m", "score": 1}, "prompt"), ({"prompt": "p", "model": "m", "score": 1.5}, "outside")],
)
def test_bad_rows_name_the_line(tmp_path: Path, row: dict[str, object], message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "ok", "model": "m", "score": 1}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=rf"bad.jsonl:2: .*{message}"):
        ds.load_labelled(path)


def test_hash_split_is_stable_and_about_twenty_percent() -> None:
    keys = [f"prompt {i}" for i in range(5000)]
    splits = [ds.hash_split(k) for k in keys]
    assert splits == [ds.hash_split(k) for k in keys]
    assert 0.17 < splits.count("test") / len(keys) < 0.23


def test_estimate_tokens() -> None:
    assert ds.estimate_tokens("") == 1
    assert ds.estimate_tokens("abcdefgh") == 2


def test_data_dir_env_wins_and_explicit_beats_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env, explicit = tmp_path / "env", tmp_path / "explicit"
    env.mkdir()
    explicit.mkdir()
    monkeypatch.setenv(ds.DATA_ENV, str(env))
    assert ds.data_dir_candidates()[0] == env
    assert ds.shared_data_dir() == env
    assert ds.shared_data_dir(explicit) == explicit
    assert ds.shared_data_dir(tmp_path / "absent") is None  # an explicit folder must exist


def test_data_dir_is_found_beside_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkout, data = tmp_path / "checkout", tmp_path / "shared" / "data" / "routing"
    checkout.mkdir()
    data.mkdir(parents=True)
    monkeypatch.delenv(ds.DATA_ENV, raising=False)
    monkeypatch.setattr(ds, "checkout_root", lambda: None)
    monkeypatch.chdir(checkout)
    assert ds.shared_data_dir() == data
    data.rmdir()
    assert ds.shared_data_dir() is None  # no machine path to fall back on


def test_data_dir_candidates_are_relative_to_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ds.DATA_ENV, raising=False)
    root = ds.checkout_root()
    assert root is not None and (root / "src" / "modelyard" / "lab" / "datasets.py").is_file()
    candidates = ds.data_dir_candidates()
    assert candidates[0] == root.parent / "shared" / "data" / "routing"
    assert all(c.parts[-3:] == ("shared", "data", "routing") for c in candidates)
