"""Offline policy replay: labelled traffic through the configured routing policies, no provider called.

Each model name of a config is a policy. Every prompt of a labelled set (prompts x models with recorded
score and cost, `lab/datasets.py`) is planned by the real planner exactly as the gateway would plan it
(same strategies, rules, learned predictions and semantic task types; no live health, since nothing has
been called); the chosen deployment's model (`router_model`, else its `model`) picks the recorded answer
whose score and cost stand in for the call. The result says, before a cent is spent, what each policy
would cost, how good its answers would be, and where its traffic would go.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelyard.config.model import Config, Deployment
from modelyard.lab.datasets import LabelledSet
from modelyard.lab.evaluation import CORRECT_AT
from modelyard.routing.features import chat_features
from modelyard.routing.intelligence import Insight, Intelligence, router_model_of
from modelyard.routing.router import Router
from modelyard.schema.chat import ChatRequest, UserMessage
from modelyard.schema.errors import GatewayError


@dataclass
class PolicyResult:
    """What one policy (or one single model, as a baseline) would have done with the traffic."""

    name: str
    strategy: str
    requests: int = 0
    routed: int = 0
    total_cost: float = 0.0
    total_score: float = 0.0
    correct: int = 0
    refused: int = 0  # the policy found no deployment for the prompt (a 503 in the gateway)
    unlabelled: int = 0  # it chose a deployment whose model has no recorded answer for the prompt
    shares: dict[str, int] = field(default_factory=dict)

    @property
    def mean_quality(self) -> float:
        return self.total_score / self.routed if self.routed else float("nan")

    @property
    def accuracy(self) -> float:
        return self.correct / self.routed if self.routed else float("nan")

    def cost_per(self, tasks: int = 1000) -> float:
        return self.total_cost / self.routed * tasks if self.routed else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.name,
            "strategy": self.strategy,
            "requests": self.requests,
            "routed": self.routed,
            "refused": self.refused,
            "unlabelled": self.unlabelled,
            "total_cost_usd": self.total_cost,
            "mean_quality": self.mean_quality,
            "accuracy": self.accuracy,
            "cost_per_1000_usd": self.cost_per(),
            "share": {m: n / max(1, self.routed) for m, n in self.shares.items()},
        }


def baselines(data: LabelledSet) -> list[PolicyResult]:
    """Every labelled model on its own (the rows where it has a label)."""
    out = []
    for j, model in enumerate(data.models):
        labelled = ~np.isnan(data.scores[:, j])
        scores, costs = data.scores[labelled, j], data.costs[labelled, j]
        result = PolicyResult(
            model,
            "single model",
            requests=len(data),
            routed=int(labelled.sum()),
            total_cost=float(np.nansum(costs)),
            total_score=float(scores.sum()),
            correct=int((scores >= CORRECT_AT).sum()),
            shares={model: int(labelled.sum())},
        )
        out.append(result)
    return out


def premium(single: list[PolicyResult]) -> PolicyResult:
    """The all-premium baseline: the best mean quality (the dearer on a tie)."""
    return max(single, key=lambda r: (r.mean_quality, r.cost_per()))


def replay(
    config: Config, data: LabelledSet, policies: list[str] | None = None, intelligence: Intelligence | None = None
) -> list[PolicyResult]:
    """Plan every prompt with every policy; `intelligence` (started) supplies learned and semantic input."""
    router = Router(config, seed=0)
    column = {m: j for j, m in enumerate(data.models)}
    names = policies or list(config.models)
    insights = _insights(intelligence, names, data.prompts)
    results = []
    for name in names:
        if name not in config.models:
            raise GatewayError(404, f"the config has no model `{name}` to replay")
        result = PolicyResult(name, config.models[name].strategy, requests=len(data))
        for i, prompt in enumerate(data.prompts):
            insight = insights[i] if insights is not None else None
            dep = _first_choice(router, name, prompt, insight, intelligence)
            if dep is None:
                result.refused += 1
                continue
            j = column.get(router_model_of(dep))
            if j is None or np.isnan(data.scores[i, j]):
                result.unlabelled += 1
                continue
            score, cost = float(data.scores[i, j]), float(data.costs[i, j])
            result.routed += 1
            result.total_score += score
            result.total_cost += 0.0 if np.isnan(cost) else cost
            result.correct += score >= CORRECT_AT
            result.shares[data.models[j]] = result.shares.get(data.models[j], 0) + 1
        results.append(result)
    return results


def _first_choice(
    router: Router, model: str, prompt: str, insight: Insight | None, intelligence: Intelligence | None
) -> Deployment | None:
    req = ChatRequest(model=model, messages=[UserMessage(content=prompt)])
    features = chat_features(req)
    if insight is not None and insight.task is not None and features.task is None:
        features.task = insight.task
    quality, threshold, lam = None, None, None
    if intelligence is not None and model in intelligence.learned_models:  # predictions steer learned ones only
        quality = intelligence.quality_fn(insight) if insight is not None else None
        threshold, lam = intelligence.thresholds.get(model), intelligence.lambdas.get(model)
    try:
        plan = router.plan(model, features, quality=quality, default_min_quality=threshold, default_lambda=lam)
    except GatewayError:
        return None
    return plan.order[0] if plan.order else None


def _insights(intelligence: Intelligence | None, policies: list[str], prompts: list[str]) -> list[Insight] | None:
    """One batch of embeddings for the whole file (replay would be slow prompt by prompt)."""
    if intelligence is None or not intelligence.needed:
        return None
    insights = [Insight() for _ in prompts]
    learned = [p for p in policies if p in intelligence.learned_models]
    if learned and intelligence.learned is not None:
        predicted = intelligence.learned.predict_batch(prompts)
        for insight, row in zip(insights, predicted, strict=True):
            insight.predicted = {m: float(v) for m, v in zip(intelligence.learned.models, row, strict=True)}
    if intelligence.semantic is not None:
        vectors = intelligence.semantic.embedder.embed(prompts)
        for insight, vector in zip(insights, vectors, strict=True):
            match = intelligence.semantic.match_vector(vector)
            insight.task, insight.task_similarity = match.route, match.similarity
    return insights
