"""The converters of the three shared datasets: tiny copies by hand, and the real folders when present."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modelyard.lab import converters as cv
from modelyard.lab import datasets as ds


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
    rows = list(cv.convert_llmrouter(tmp_path))
    assert len(rows) == 4
    first = rows[0]
    assert first["model"] == "a" and first["task"] == "gsm8k" and first["split"] == "train"
    assert first["cost"] == pytest.approx((3 + 256) * 0.2 / 1e6)  # 12 chars -> 3 tokens, + 256 completion
    data = ds.build_set(rows)
    assert len(data) == 2  # the test copy of the same question stays a separate row
    assert len(ds.drop_train_duplicates(data).split("test")) == 0


def test_routellm_converter_on_a_tiny_copy(tmp_path: Path) -> None:
    (tmp_path / "gsm8k").mkdir()
    header = f"prompt,{cv.MIXTRAL},{cv.GPT4},{cv.MIXTRAL}_response,{cv.GPT4}_response\n"
    (tmp_path / "gsm8k" / "gsm8k_responses.csv").write_text(header + "q1,True,False,abcd,abcdefgh\nq2,False,True,x,y\n")
    (tmp_path / "gsm8k" / "contaminated_prompts.jsonl").write_text(json.dumps({"eval_prompt": "q2"}) + "\n")
    rows = list(cv.convert_routellm(tmp_path, ("gsm8k",)))
    assert [(r["model"], r["score"]) for r in rows] == [(cv.GPT4, 0.0), (cv.MIXTRAL, 1.0)]
    assert rows[0]["cost"] == pytest.approx((1 + 2) * 24.7 / 1e6)  # prompt 1 token + response 2 tokens


def test_routerarena_converter_on_a_tiny_copy(tmp_path: Path) -> None:
    row = {
        "global_index": "AIME_1",
        "question": "q",
        "token_usage": {"input_tokens": 10, "output_tokens": 5},
        "evaluation_result": {"score": -0.01, "inference_cost": 0.0003},
    }
    (tmp_path / "model-x.jsonl").write_text(json.dumps(row) + "\n")
    (rows,) = list(cv.convert_routerarena(tmp_path))
    assert rows["model"] == "model-x" and rows["score"] == 0.0 and rows["cost"] == 0.0003
    assert rows["task"] == "AIME" and rows["id"] == "AIME_1"


SHARED = ds.shared_data_dir()
needs_shared = pytest.mark.skipif(
    SHARED is None, reason="shared routing data folder absent (../shared/data/routing or $MODELYARD_ROUTING_DATA)"
)


@needs_shared
def test_shared_llmrouter_shape() -> None:
    assert SHARED is not None
    data = ds.build_set(cv.convert_llmrouter(SHARED / cv.SOURCE_DIRS["llmrouter"]))
    assert len(data.split("train")) == 5608 and len(data.split("test")) == 500
    assert len(data.models) == 9 and not np.isnan(data.scores).any()


@needs_shared
def test_shared_routellm_and_routerarena_shape() -> None:
    assert SHARED is not None
    gsm = ds.build_set(cv.convert_routellm(SHARED / cv.SOURCE_DIRS["routellm"], ("gsm8k",)))
    assert len(gsm) == 1319 - 12  # the 12 contaminated prompts are dropped, as RouteLLM does
    assert gsm.models == [cv.GPT4, cv.MIXTRAL]
    assert gsm.scores[:, 0].mean() > gsm.scores[:, 1].mean()  # GPT-4 is the strong one
    arena = ds.build_set(cv.convert_routerarena(SHARED / cv.SOURCE_DIRS["routerarena"]))
    assert len(arena) == 809 and len(arena.models) == 2
    assert ((arena.scores >= 0) & (arena.scores <= 1)).all()
