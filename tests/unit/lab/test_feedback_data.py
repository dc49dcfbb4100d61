"""Feedback samples as labelled rows: mapping, skipping (and counting), averaging, merging with training data."""

from __future__ import annotations

import numpy as np
import pytest

from modelyard.lab.feedback_data import feedback_rows, merge_feedback
from modelyard.state.feedback import FeedbackSample, encode_embedding

SPACE = "minilm-l6-v2/t32"


def unit(seed: int, dim: int = 384) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def sample(
    i: int, score: float, deployment: str | None = "cheap@sim", content: str | None = None, embedding: str | None = None
) -> FeedbackSample:
    return FeedbackSample(
        feedback_id=f"fb_{i}",
        request_id=f"req_{i}",
        at=float(i),
        score=score,
        source="key",
        model="support",
        deployment=deployment,
        content=content,
        embedding=embedding,
    )


def test_rows_map_deployments_average_verdicts_and_count_what_they_skip() -> None:
    v1, v2 = unit(1), unit(2)
    samples = [
        sample(1, 1.0, content="hello there"),
        sample(2, 0.0, content="hello there"),  # same prompt and model: averaged with the first
        sample(3, 1.0, embedding=encode_embedding(SPACE, v1.tobytes())),
        sample(4, 0.5, embedding=encode_embedding(SPACE, v1.tobytes())),  # same vector: averaged
        sample(5, 1.0, embedding=encode_embedding(SPACE, v2.tobytes()), deployment="big@sim"),
        sample(6, 1.0, embedding=encode_embedding("minilm-l6-v2/t256", v1.tobytes())),  # other space
        sample(7, 1.0),  # nothing kept of the prompt
        sample(8, 1.0, content="x", deployment="mystery@sim"),  # no model the data knows
        sample(9, 1.0, embedding="garbage"),
    ]
    rows = feedback_rows(
        samples, space=SPACE, known_models=["cheap", "big"], router_models={"cheap@sim": "cheap", "big@sim": "big"}
    )
    got = sorted(zip(rows.prompts, rows.models, rows.scores, rows.verdicts, strict=True), key=lambda t: t[1:])
    assert [(p is None, m, s, n) for p, m, s, n in got] == [
        (True, "big", 1.0, 1),
        (False, "cheap", 0.5, 2),
        (True, "cheap", 0.75, 2),
    ]
    assert rows.skipped == {
        "embedding of another space (or unreadable)": 2,
        "neither prompt text nor embedding kept": 1,
        "model unknown to the training data": 1,
    }
    vec = next(e for p, e, m in zip(rows.prompts, rows.embeddings, rows.models, strict=True) if m == "big")
    assert vec is not None
    np.testing.assert_array_equal(vec, v2)


def test_without_a_config_the_deployment_name_is_the_model() -> None:
    rows = feedback_rows([sample(1, 1.0, content="q", deployment="cheap")], space=SPACE, known_models=["cheap"])
    assert rows.models == ["cheap"] and not rows.skipped


def test_scores_outside_the_unit_interval_are_skipped() -> None:
    rows = feedback_rows(
        [sample(1, float("nan"), content="q"), sample(2, 2.0, content="q")],
        space=SPACE,
        known_models=["cheap@sim"],
    )
    assert len(rows) == 0 and rows.skipped == {"score outside [0, 1]": 2}


def test_merge_appends_rows_with_nan_elsewhere_and_imputes_text_from_the_nearest_prompt() -> None:
    base_emb = np.stack([unit(10), unit(11), unit(12)])
    prompts = ["first training prompt", "second 12345", "third ```code```"]
    scores = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    costs = np.ones((3, 2))
    near = base_emb[1] + 0.05 * unit(99)
    near = (near / np.linalg.norm(near)).astype(np.float32)
    samples = [
        sample(1, 0.0, embedding=encode_embedding(SPACE, near.tobytes()), deployment="a"),
        sample(2, 1.0, content="a logged prompt", deployment="b"),
    ]
    rows = feedback_rows(samples, space=SPACE, known_models=["a", "b"])
    text_vec = unit(50)[None, :]
    merged = merge_feedback(prompts, base_emb, scores, costs, ["a", "b"], rows, text_vec)
    assert merged.added_rows == 2 and merged.imputed_rows == 1
    assert merged.prompts[3:] == ["second 12345", "a logged prompt"]  # the imputed row borrows the nearest text
    np.testing.assert_array_equal(merged.emb[3], near)
    np.testing.assert_array_equal(merged.emb[4], text_vec[0])
    np.testing.assert_array_equal(merged.scores[3:], [[0.0, np.nan], [np.nan, 1.0]])
    assert np.isnan(merged.costs[3:]).all() and (merged.costs[:3] == 1).all()


def test_merge_needs_a_vector_for_every_text_only_row() -> None:
    rows = feedback_rows([sample(1, 1.0, content="q", deployment="a")], space=SPACE, known_models=["a"])
    with pytest.raises(ValueError, match="no embedding"):
        merge_feedback(["p"], np.stack([unit(1)]), np.ones((1, 1)), np.ones((1, 1)), ["a"], rows, None)
