"""The labelled-data schema, its loader, and the converters of the three shared datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modelyard.routing import datasets as ds

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


def test_llmrouter_converter_on_a_tiny_copy(tmp_path: Path) -> None:
    (tmp_path / "default_llm.json").write_text(
        json.dumps({"a": {"input_price": 0.2, "output_price": 0.2}, "b": {"input_price": 0.9, "output_price": 0.9}})
    )
    for split in ("train", "test"):
        (tmp_path / f"dcrouter_{split}.json").write_text(
            json.dumps([{"question": "What is 1+1?", "scores": {"a": 1.0, "b": 0.0}}])
        )
        (tmp_path / f"default_query_{split}.jsonl").write_text(
            json.dumps({"task_name": "gsm8k", "query": "What is 1+1?"}) + "\n"
        )
    rows = list(ds.convert_llmrouter(tmp_path))
    assert len(rows) == 4
    first = rows[0]
    assert first["model"] == "a" and first["task"] == "gsm8k" and first["split"] == "train"
    assert first["cost"] == pytest.approx((3 + 256) * 0.2 / 1e6)  # 12 chars -> 3 tokens, + 256 completion
    data = ds.build_set(rows)
    assert len(data) == 2  # the test copy of the same question stays a separate row
    assert len(ds.drop_train_duplicates(data).split("test")) == 0


def test_routellm_converter_on_a_tiny_copy(tmp_path: Path) -> None:
    (tmp_path / "gsm8k").mkdir()
    header = f"prompt,{ds.MIXTRAL},{ds.GPT4},{ds.MIXTRAL}_response,{ds.GPT4}_response\n"
    (tmp_path / "gsm8k" / "gsm8k_responses.csv").write_text(header + "q1,True,False,abcd,abcdefgh\nq2,False,True,x,y\n")
    (tmp_path / "gsm8k" / "contaminated_prompts.jsonl").write_text(json.dumps({"eval_prompt": "q2"}) + "\n")
    rows = list(ds.convert_routellm(tmp_path, ("gsm8k",)))
    assert [(r["model"], r["score"]) for r in rows] == [(ds.GPT4, 0.0), (ds.MIXTRAL, 1.0)]
    assert rows[0]["cost"] == pytest.approx((1 + 2) * 24.7 / 1e6)  # prompt 1 token + response 2 tokens


def test_routerarena_converter_on_a_tiny_copy(tmp_path: Path) -> None:
    row = {
        "global_index": "AIME_1",
        "question": "q",
        "token_usage": {"input_tokens": 10, "output_tokens": 5},
        "evaluation_result": {"score": -0.01, "inference_cost": 0.0003},
    }
    (tmp_path / "model-x.jsonl").write_text(json.dumps(row) + "\n")
    (rows,) = list(ds.convert_routerarena(tmp_path))
    assert rows["model"] == "model-x" and rows["score"] == 0.0 and rows["cost"] == 0.0003
    assert rows["task"] == "AIME" and rows["id"] == "AIME_1"


SHARED = ds.shared_data_dir()
needs_shared = pytest.mark.skipif(SHARED is None, reason="shared routing data folder (../shared/data/routing) absent")


@needs_shared
def test_shared_llmrouter_shape() -> None:
    assert SHARED is not None
    data = ds.build_set(ds.convert_llmrouter(SHARED / "llmrouter_dcrouter"))
    assert len(data.split("train")) == 5608 and len(data.split("test")) == 500
    assert len(data.models) == 9 and not np.isnan(data.scores).any()


@needs_shared
def test_shared_routellm_and_routerarena_shape() -> None:
    assert SHARED is not None
    gsm = ds.build_set(ds.convert_routellm(SHARED / "routellm_evals", ("gsm8k",)))
    assert len(gsm) == 1319 - 12  # the 12 contaminated prompts are dropped, as RouteLLM does
    assert gsm.models == [ds.GPT4, ds.MIXTRAL]
    assert gsm.scores[:, 0].mean() > gsm.scores[:, 1].mean()  # GPT-4 is the strong one
    arena = ds.build_set(ds.convert_routerarena(SHARED / "routerarena_sub10"))
    assert len(arena) == 809 and len(arena.models) == 2
    assert ((arena.scores >= 0) & (arena.scores <= 1)).all()
