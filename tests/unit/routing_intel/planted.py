"""Planted training data shared by the quality-model tests: a rule a trained model must recover.

Easy prompts (everyday words) are answered by both models, hard ones (maths words) by the strong one only.
"""

from __future__ import annotations

import numpy as np

from modelyard.lab.training import train_quality_model
from modelyard.routing.learned import QualityModel

from .conftest import HashEmbedder

EASY = ["hello", "thanks", "weather", "movie", "recipe", "holiday", "garden", "music", "friend", "coffee"]
HARD = [
    "integral",
    "eigenvalue",
    "theorem",
    "topology",
    "lemma",
    "manifold",
    "derivative",
    "tensor",
    "proof",
    "homology",
]
MODELS = ["cheap", "strong"]


def planted(n: int, seed: int, noise: float = 0.1) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Half easy prompts (both models right), half hard (only the strong one right), labels 10% flipped."""
    rng = np.random.default_rng(seed)
    prompts, scores = [], []
    for i in range(n):
        hard = i % 2 == 1
        words = rng.choice(HARD if hard else EASY, size=5)
        prompts.append(" ".join(words))
        truth = [0.0 if hard else 1.0, 1.0]
        scores.append([1.0 - t if rng.random() < noise else t for t in truth])
    costs = np.tile([0.1, 1.0], (n, 1))
    return prompts, np.array(scores), costs


def train_planted() -> QualityModel:
    """A small model trained on planted data (3 folds, one logistic and one kNN setting), bag-of-words embedded."""
    emb = HashEmbedder()
    prompts, scores, costs = planted(240, seed=0)
    result = train_quality_model(
        prompts, emb.embed(prompts), scores, costs, MODELS, folds=3, l2_grid=(1.0,), k_grid=(15,)
    )
    result.model.embedder = emb
    return result.model
