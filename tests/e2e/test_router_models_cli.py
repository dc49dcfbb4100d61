"""`modelyard router add-model` and `router retrain --from-feedback` end to end (real MiniLM, real SQLite store).

The data: easy prompts that both models answer and hard ones only `large` answers. The feedback then says
`small` has become good at the hard prompts; the retrained router must believe it.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from modelyard.cli.router import app
from modelyard.routing.learned import QualityModel
from modelyard.state.feedback import FeedbackRecord, FeedbackSample, encode_embedding
from tests.unit.lab.prompts import EASY, HARD
from tests.unit.routing_intel.conftest import minilm

pytest.importorskip("scipy")
__all__ = ["minilm"]
runner = CliRunner()

TOKENS = 32
SPACE = f"minilm-l6-v2/t{TOKENS}"


def prompt(i: int) -> str:
    return random.Random(i).choice(HARD if i % 2 else EASY).format(i, i)


def write_data(path: Path, n: int = 80) -> None:
    rows = []
    for i in range(n):
        p = prompt(i)
        rows.append({"prompt": p, "model": "small", "score": 0.0 if i % 2 else 1.0, "cost": 0.0001})
        rows.append({"prompt": p, "model": "large", "score": 1.0, "cost": 0.01})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, minilm: Any) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("router")
    data, model = root / "d.jsonl", root / "r.npz"
    write_data(data)
    mp = pytest.MonkeyPatch()
    mp.setenv("MODELYARD_CACHE_DIR", str(root / "cache"))
    res = runner.invoke(
        app, ["train", "--data", str(data), "--out", str(model), "--max-tokens", str(TOKENS), "--folds", "3"]
    )
    mp.undo()
    assert res.exit_code == 0, res.output
    return data, model


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_CACHE_DIR", str(tmp_path / "cache"))


def predict(path: Path, minilm: Any, prompts: list[str]) -> tuple[list[str], np.ndarray]:
    from modelyard.routing.embeddings import MiniLM

    r = QualityModel.load(path, MiniLM(max_tokens=TOKENS, backend="numpy"))
    return r.models, r.predict_batch(prompts)


def test_add_model_from_rows_predicts_the_new_model(trained: tuple[Path, Path], tmp_path: Path, minilm: Any) -> None:
    _, model = trained
    rows = tmp_path / "medium.jsonl"
    rows.write_text(
        "".join(
            json.dumps({"prompt": prompt(i), "model": "medium", "score": i % 2 == 0}) + "\n" for i in range(200, 230)
        )
        + json.dumps({"prompt": "ignored", "model": "other", "score": 1.0})
        + "\n"
    )
    out = tmp_path / "r2.npz"
    res = runner.invoke(app, ["add-model", "medium", "--router", str(model), "--data", str(rows), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "fitted on 30 rows" in res.output and "calibration" in res.output
    models, p = predict(out, minilm, [prompt(301), prompt(300)])  # hard, easy (unseen)
    assert models == ["small", "large", "medium"]
    assert p[1, 2] > p[0, 2] + 0.2  # easy is likelier good than hard for the new model too
    _, before = predict(model, minilm, [prompt(301), prompt(300)])
    np.testing.assert_allclose(p[:, :2], before, rtol=1e-5)  # the trained models' predictions unchanged


def results_file(path: Path, deployments: dict[str, dict[str, float]]) -> Path:
    cells = {
        d: {t: {"pass_rate": r, "accepted": r > 0.8, "cases": 20} for t, r in ts.items()}
        for d, ts in deployments.items()
    }
    path.write_text(json.dumps({"schema": "modelyard.acceptance-results/v1", "deployments": cells}))
    return path


def test_add_model_from_acceptance_results_reads_off_the_nearest_model(
    trained: tuple[Path, Path], tmp_path: Path, minilm: Any
) -> None:
    _, model = trained
    results = results_file(
        tmp_path / "acc.json",
        {
            "mini@sim": {"chat": 0.9, "maths": 0.2},
            "small": {"chat": 0.95, "maths": 0.3},
            "large": {"chat": 1.0, "maths": 0.95},
        },
    )
    out = tmp_path / "r3.npz"
    from_results = ["add-model", "mini", "--router", str(model), "--from", str(results), "--deployment", "mini@sim"]
    res = runner.invoke(app, [*from_results, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "read off small" in res.output
    r = QualityModel.load(out)
    assert r.added[0].source["like"] == "small" and r.added[0].bias < 0  # it passes less than small
    _, p = predict(out, minilm, [prompt(301), prompt(300)])
    assert (p[:, 2] < p[:, 0]).all()
    # --like overrides the nearest; a name the file lacks for the router's models is refused
    res = runner.invoke(app, [*from_results, "--like", "large", "--out", str(out)])
    assert res.exit_code == 0 and "read off large" in res.output, res.output


def assert_one_line_error(res: Any, text: str) -> None:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], res.stderr


def test_add_model_errors_are_one_line_exit_2(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, model = trained
    out = str(tmp_path / "o.npz")
    base = ["add-model", "medium", "--router", str(model), "--out", out]
    assert_one_line_error(runner.invoke(app, [*base, "--data", str(tmp_path / "missing.jsonl")]), "no such file")
    res = runner.invoke(
        app, ["add-model", "m", "--router", str(tmp_path / "nope.npz"), "--data", str(data), "--out", out]
    )
    assert_one_line_error(res, "no such router file")
    res = runner.invoke(app, ["add-model", "large", "--router", str(model), "--data", str(data), "--out", out])
    assert_one_line_error(res, "already one of the router's models")
    assert_one_line_error(runner.invoke(app, [*base, "--data", str(data)]), "no rows for 'medium'")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "model": "medium", "score": 1}\n{not json\n')
    assert_one_line_error(runner.invoke(app, [*base, "--data", str(bad)]), "bad.jsonl")
    badj = tmp_path / "bad.json"
    badj.write_text("{not json")
    assert_one_line_error(runner.invoke(app, [*base, "--from", str(badj)]), "bad.json")
    assert_one_line_error(runner.invoke(app, [*base, "--from", str(tmp_path / "gone.json")]), "no such file")
    results = results_file(tmp_path / "acc.json", {"x@sim": {"chat": 0.5}})
    assert_one_line_error(runner.invoke(app, [*base, "--from", str(results)]), "no results for deployment 'medium'")
    res = runner.invoke(app, [*base, "--from", str(results), "--deployment", "x@sim"])
    assert_one_line_error(res, "shares no task")
    assert_one_line_error(runner.invoke(app, base), "give one of --from")
    assert not Path(out).exists()


# --- retrain -------------------------------------------------------------------------------------------


def feedback_samples(minilm: Any) -> list[FeedbackSample]:
    """`small` now answers hard prompts: 40 verdicts on new hard prompts, half with text, half embedding only."""
    from modelyard.routing.embeddings import MiniLM

    embedder = MiniLM(max_tokens=TOKENS, backend="numpy")
    hard = [prompt(i) for i in range(401, 481, 2)]
    vecs = embedder.embed(hard).astype(np.float32)
    out = []
    for i, (p, v) in enumerate(zip(hard, vecs, strict=True)):
        logged = i % 2 == 0
        out.append(
            FeedbackSample(
                feedback_id=f"fb_{i}",
                request_id=f"req_{i}",
                at=1000.0 + i,
                score=1.0,
                source="key",
                model="route",
                deployment="small@sim",
                embedding=encode_embedding(SPACE, v.tobytes()),
                content=p if logged else None,
            )
        )
    out.append(
        FeedbackSample(
            feedback_id="fb_other",
            request_id="req_other",
            at=2000.0,
            score=0.0,
            source="key",
            deployment="small@sim",
            embedding=encode_embedding("minilm-l6-v2/t256", vecs[0].tobytes()),
        )
    )
    return out


def write_config(path: Path) -> Path:
    path.write_text(
        "deployments:\n"
        "  - {name: small@sim, provider: openai, model: small-v1, router_model: small,\n"
        "     api_base: 'http://127.0.0.1:9/v1', api_key: x}\n"
        "  - {name: large@sim, provider: openai, model: large-v1, router_model: large,\n"
        "     api_base: 'http://127.0.0.1:9/v1', api_key: x}\n"
        "models:\n"
        "  route: {candidates: [small@sim, large@sim]}\n"
    )
    return path


class FakeStore:
    def __init__(self, samples: list[FeedbackSample]) -> None:
        self.samples = samples
        self.closed = False

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        self.closed = True

    async def feedback_samples(
        self, since: float = 0.0, limit: int = 10_000, *, model: str | None = None
    ) -> list[FeedbackSample]:
        return [s for s in self.samples if s.at >= since][:limit]


def check_retrained(res: Any, old: Path, new: Path, minilm: Any) -> None:
    assert res.exit_code == 0, res.output
    assert "41 samples -> 40 labelled rows" in res.output, res.output
    assert "20 rows are known by their stored embedding only" in res.output
    assert "skipped 1: embedding of another space" in res.output
    probe = [prompt(i) for i in range(601, 641, 2)]  # unseen hard prompts
    _, before = predict(old, minilm, probe)
    _, after = predict(new, minilm, probe)
    assert after[:, 0].mean() > before[:, 0].mean() + 0.2, (before[:, 0].mean(), after[:, 0].mean())
    card = QualityModel.load(new).card["feedback"]
    assert card["rows"] == 40 and card["text_imputed_rows"] == 20


def test_retrain_from_feedback_of_a_fake_store(
    trained: tuple[Path, Path], tmp_path: Path, minilm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, model = trained
    fake = FakeStore(feedback_samples(minilm))
    monkeypatch.setattr("modelyard.state.store.open_store", lambda dsn: fake)
    out = tmp_path / "r4.npz"
    cfg = write_config(tmp_path / "gw.yaml")
    args = ["retrain", "--router", str(model), "--data", str(data), "--split", "all", "--from-feedback"]
    res = runner.invoke(
        app, [*args, "--store", "fake", "--config", str(cfg), "--kind", "logistic", "--folds", "3", "--out", str(out)]
    )
    check_retrained(res, model, out, minilm)
    assert fake.closed
    # without the config the deployment names are not the router's models: every sample is skipped
    other = tmp_path / "r4b.npz"
    res = runner.invoke(app, [*args, "--store", "fake", "--kind", "logistic", "--folds", "3", "--out", str(other)])
    assert "skipped 41: model unknown to the training data" in res.output, res.output
    assert_one_line_error(res, "no feedback row to merge")
    assert not other.exists()


def test_retrain_from_feedback_in_a_sqlite_store(trained: tuple[Path, Path], tmp_path: Path, minilm: Any) -> None:
    from modelyard.accounting.spend import SpendRecord
    from modelyard.state.store import open_store

    data, model = trained
    samples = feedback_samples(minilm)
    db = tmp_path / "gw.db"

    async def fill() -> None:
        store = open_store(str(db))
        await store.open()
        try:
            spend = [
                SpendRecord(
                    id=s.request_id,
                    at=s.at - 1,
                    model=s.model,
                    deployment=s.deployment,
                    content=s.content,
                    embedding=s.embedding,
                )
                for s in samples
            ]
            await store.write_spend(spend)
            await store.write_feedback(
                [
                    FeedbackRecord(id=s.feedback_id, request_id=s.request_id, at=s.at, score=s.score, source="key")
                    for s in samples
                ]
            )
        finally:
            await store.close()

    asyncio.run(fill())
    out = tmp_path / "r5.npz"
    res = runner.invoke(
        app,
        ["retrain", "--router", str(model), "--data", str(data), "--split", "all", "--from-feedback",
         "--store", str(db), "--config", str(write_config(tmp_path / "gw.yaml")), "--kind", "logistic",
         "--folds", "3", "--out", str(out)],
    )  # fmt: skip
    check_retrained(res, model, out, minilm)


def test_retrain_errors(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, model = trained
    out = str(tmp_path / "o.npz")
    base = ["retrain", "--router", str(model), "--data", str(data), "--out", out]
    assert_one_line_error(runner.invoke(app, [*base, "--store", "x.db"]), "needs --from-feedback")
    assert_one_line_error(runner.invoke(app, [*base, "--from-feedback"]), "needs --store")
    res = runner.invoke(app, [*base, "--from-feedback", "--store", "x.db", "--since", "-1"])
    assert_one_line_error(res, "--since")
    res = runner.invoke(app, [*base, "--from-feedback", "--store", str(tmp_path)])  # a folder, not a database
    assert_one_line_error(res, "cannot read feedback")
    res = runner.invoke(app, [*base, "--from-feedback", "--store", str(tmp_path / "empty.db")])
    assert_one_line_error(res, "no feedback row to merge")
    assert not Path(out).exists()


def test_an_added_model_survives_a_retrain_only_over_the_same_trained_models() -> None:
    from modelyard.cli.router_models import _carry
    from modelyard.routing.learned import AddedModel

    added = AddedModel("mini", (0.25, 0.75), -1.0, {"method": "rows"})
    kept = _carry(added, ["large", "small"], ["small", "large"])
    assert kept == AddedModel("mini", (0.75, 0.25), -1.0, {"method": "rows"})  # re-ordered by name
    assert _carry(added, ["small", "large", "huge"], ["small", "large"]) is None
    assert _carry(added, ["small", "mini"], ["small", "mini"]) is None  # now trained: the added copy goes
