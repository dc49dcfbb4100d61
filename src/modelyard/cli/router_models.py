"""`modelyard router add-model` and `modelyard router retrain`: change a trained router without starting over.

    modelyard router add-model NAME --router router.npz --from acceptance/results.json --out router.npz
    modelyard router add-model NAME --router router.npz --data few_rows.jsonl --out router.npz
    modelyard router retrain --router router.npz --data train.jsonl --from-feedback --store modelyard.db

Registered on the `router` group by `modelyard.cli.router` (imported at its end).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from modelyard.cli.router import _embed, _kinds, _load, app, out
from modelyard.cli.router_checks import check_folds_fit, check_out, check_training
from modelyard.cli.router_checks import fail as _fail

if TYPE_CHECKING:
    from modelyard.lab.cold_start import LikeChoice
    from modelyard.routing.learned import AddedModel, QualityModel
    from modelyard.state.feedback import FeedbackSample

__all__ = ["app"]

#: Feedback samples read from the store per call (the store pages by time).
PAGE = 10_000


def _load_router(path: Path) -> QualityModel:
    from modelyard.routing.learned import QualityModel, RouterFileError

    if not path.is_file() and not (path / "router.npz").is_file():
        raise _fail(f"{path}: no such router file")
    try:
        return QualityModel.load(path)
    except RouterFileError as exc:  # its message names the file
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"cannot load router {path}: {exc}") from None


def _router_models(config: Path | None) -> dict[str, str]:
    """Deployment name -> the model name the router knows it by (`router_model`, else `model`)."""
    if config is None:
        return {}
    from modelyard.config.loader import load_config
    from modelyard.routing.intelligence import router_model_of
    from modelyard.schema.errors import ModelyardError

    if not config.is_file():
        raise _fail(f"{config}: no such config file")
    try:
        cfg = load_config(config)
    except (ModelyardError, ValueError, OSError) as exc:
        raise _fail(f"{config}: {exc}") from None
    return {d.name: router_model_of(d) for d in cfg.deployments}


@app.command("add-model")
def add_model(
    name: str = typer.Argument(..., help="The new model's name, as its deployments' router_model will say."),
    router: Path = typer.Option(..., "--router", help="The trained router artifact (.npz)."),
    from_results: Path = typer.Option(None, "--from", help="Acceptance results (modelyard accept --write-quality)."),
    deployment: str = typer.Option(None, "--deployment", help="--from: the new model's deployment (default NAME)."),
    data: Path = typer.Option(None, "--data", help="Labelled rows (the router data schema); NAME's rows are used."),
    like: str = typer.Option(None, "--like", help="--from: read the new model off this router model."),
    config: Path = typer.Option(None, "--config", help="Gateway config: maps the results' deployments to models."),
    out_path: Path = typer.Option(..., "--out", help="Where to write the router with NAME added."),
) -> None:
    """Add a model to a trained router without retraining: from a few labelled rows or acceptance results."""
    import numpy as np

    from modelyard.lab import cold_start as cs
    from modelyard.routing.learned import sigmoid

    if (from_results is None) == (data is None):
        raise _fail("give one of --from (acceptance results) or --data (labelled rows)")
    check_out(out_path)
    r = _load_router(router)
    if name in r.models:
        raise _fail(f"{name!r} is already one of the router's models")
    if data is not None:
        prompts, scores = _rows_for(data, name)
        emb = _embed(prompts, r.max_tokens)
        added = cs.fit_from_rows(r, name, emb, prompts, np.array(scores))
        pred = r.with_added(added).predict_embedded(emb, prompts)[:, -1]
        coef0, b0 = cs.fit_stacked(np.zeros((0, len(r.trained_models))), np.zeros(0))
        prior = sigmoid(cs.trained_logits(r, emb, prompts) @ coef0 + b0)
        y = np.array(scores)
        top = sorted(zip(r.trained_models, added.coef, strict=True), key=lambda t: -abs(t[1]))[:3]
        out.print(
            f"{name}: fitted on {len(prompts)} rows (mean score {y.mean():.3f}) over the {len(r.trained_models)} "
            f"trained models' logits; in-sample Brier {np.mean((pred - y) ** 2):.4f} "
            f"(the mean model: {np.mean((prior - y) ** 2):.4f}); largest weights "
            + ", ".join(f"{m} {c:+.2f}" for m, c in top)
        )
    else:
        choice = _like_choice(from_results, deployment or name, like, r.trained_models, _router_models(config))
        added = cs.from_acceptance(r, name, choice)
        out.print(
            f"{name}: read off {choice.model} (deployment {choice.deployment}, pass-rate distance "
            f"{choice.distance:.3f} over {len(choice.tasks)} tasks), shifted by {choice.shift:+.3f} in logit space"
        )
    path = r.with_added(added).save(out_path)
    out.print(
        f"calibration: no stored operating point includes {name}; for a route with it the gateway takes the "
        f"point of the route's other models (the most overlapping set). Saved {path}"
    )


def _rows_for(data: Path, name: str) -> tuple[list[str], list[float]]:
    from modelyard.lab import datasets as ds

    if not data.is_file():
        raise _fail(f"{data}: no such file")
    try:
        rows = [r for r in ds.read_rows(data) if r["model"] == name]
    except (ValueError, KeyError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise _fail(f"{data}: {exc}") from None
    if not rows:
        raise _fail(f"{data}: no rows for {name!r}")
    by_prompt: dict[str, list[float]] = {}
    for row in rows:  # a prompt labelled twice is one row, the mean of its labels
        by_prompt.setdefault(row["prompt"], []).append(row["score"])
    return list(by_prompt), [sum(v) / len(v) for v in by_prompt.values()]


def _like_choice(
    path: Path, deployment: str, like: str | None, trained: list[str], mapping: dict[str, str]
) -> LikeChoice:
    from modelyard.config.quality_file import QualityFileError, read_results
    from modelyard.lab import cold_start as cs

    if not path.is_file():
        raise _fail(f"{path}: no such file")
    try:
        results = read_results(path)
    except QualityFileError as exc:
        raise _fail(str(exc)) from None
    profiles = cs.profiles(results.deployments)
    if deployment not in profiles:
        raise _fail(f"{path}: no results for deployment {deployment!r}")
    known = {}
    for dep, prof in profiles.items():
        model = mapping.get(dep, dep)
        if dep != deployment and model in trained and model not in known:
            known[model] = prof
    if like is not None and like not in trained:
        raise _fail(f"--like {like!r} is not a model of this router")
    try:
        return cs.choose_like(profiles[deployment], known, like)
    except ValueError as exc:
        raise _fail(f"{path}: {exc} (the router's models must be in the file: --config maps deployments)") from None


# --- retrain ------------------------------------------------------------------------------------------


async def _read_samples(dsn: str, since: float) -> list[FeedbackSample]:
    """Every feedback sample at or after `since`, paged by time (a page boundary's ties are de-duplicated)."""
    from modelyard.state.store import open_store

    store = open_store(dsn)
    await store.open()
    try:
        read = getattr(store, "feedback_samples", None)
        if read is None:
            raise _fail(f"store {_where(dsn)} keeps no feedback (upgrade modelyard)")
        found: dict[str, FeedbackSample] = {}
        while True:
            page = await read(since=since, limit=PAGE)
            fresh = [s for s in page if s.feedback_id not in found]
            found.update((s.feedback_id, s) for s in fresh)
            if len(page) < PAGE or not fresh:
                return list(found.values())
            since = page[-1].at
    finally:
        await store.close()


@app.command()
def retrain(
    router: Path = typer.Option(..., "--router", help="The router to retrain (its embedding length is kept)."),
    data: Path = typer.Option(..., "--data", help="The labelled training data (the router data schema)."),
    from_feedback: bool = typer.Option(False, "--from-feedback", help="Merge the store's feedback into the data."),
    store: str = typer.Option(None, "--store", help="The gateway's store: a SQLite path or postgresql:// DSN."),
    since: float = typer.Option(None, "--since", help="Only feedback of the last DAYS days."),
    config: Path = typer.Option(None, "--config", help="Gateway config: maps deployments to router models."),
    split: str = typer.Option("train", help="Rows of this split of --data ('all' for every row)."),
    kind: str = typer.Option("auto", help="auto (compare logistic and knn), logistic or knn."),
    folds: int = typer.Option(5, help="Cross-fitting folds for model choice and calibration."),
    target: float = typer.Option(0.95, help="Calibrate for this share of the strongest model's quality."),
    out_path: Path = typer.Option(..., "--out", help="Where to write the retrained router."),
) -> None:
    """Refit a router on its training data plus the verdicts clients sent on its answers (POST /v1/feedback)."""
    from modelyard.lab import feedback_data as fd
    from modelyard.lab.training import train_quality_model

    if not from_feedback:
        raise _fail("retrain needs --from-feedback (to retrain on data alone, use `modelyard router train`)")
    if not store:
        raise _fail("--from-feedback needs --store (the gateway's SQLite file or PostgreSQL DSN)")
    if since is not None and not (math.isfinite(since) and since > 0):
        raise _fail("--since must be a positive number of days")
    check_training(folds=folds, target=target)
    check_out(out_path)
    old = _load_router(router)
    labelled = _load(data, split, None, None)
    mapping = _router_models(config)
    start = time.time() - since * 86400 if since else 0.0
    try:
        samples = asyncio.run(_read_samples(store, start))
    except typer.Exit:
        raise
    except Exception as exc:  # any store failure is one line, not a traceback
        why = _scrub(f"{type(exc).__name__}: {exc}", store)
        raise _fail(f"cannot read feedback from {_where(store)}: {why}") from None
    rows = fd.feedback_rows(samples, space=_space(old.max_tokens), known_models=labelled.models, router_models=mapping)
    if not len(rows):
        _print_merge(len(samples), rows, None)
        raise _fail("no feedback row to merge (see the skipped counts above); nothing retrained")
    need_text = [p for p, v in zip(rows.prompts, rows.embeddings, strict=True) if v is None and p is not None]
    emb_all = _embed([*labelled.prompts, *need_text], old.max_tokens)
    n = len(labelled)
    merged = fd.merge_feedback(
        labelled.prompts, emb_all[:n], labelled.scores, labelled.costs, labelled.models, rows, emb_all[n:]
    )
    _print_merge(len(samples), rows, merged)
    check_folds_fit(folds, len(merged.prompts))
    with out.status("training"):
        result = train_quality_model(
            merged.prompts,
            merged.emb,
            merged.scores,
            merged.costs,
            merged.models,
            kinds=_kinds(kind),
            folds=folds,
            target=target,
            max_tokens=old.max_tokens,
        )
    model = result.model
    kept = [_carry(a, model.trained_models, old.trained_models) for a in old.added]
    for added in [a for a in kept if a is not None]:
        model = model.with_added(added)
    dropped = [a.name for a, k in zip(old.added, kept, strict=True) if k is None]
    model.card.update(
        {
            "data": data.name,
            "split": split,
            "feedback": {
                "samples": len(samples),
                "rows": merged.added_rows,
                "text_imputed_rows": merged.imputed_rows,
                "skipped": rows.skipped,
                "since_days": since,
            },
        }
    )
    path = model.save(out_path)
    if dropped:
        out.print(f"added models dropped (their trained models changed; add them again): {', '.join(dropped)}")
    out.print(f"kept {model.card['head']}; trained in {result.seconds:.1f}s; saved {path}")


def _where(dsn: str) -> str:
    """The store for messages: a PostgreSQL DSN without its password (the batch and workflow stores' rule)."""
    from modelyard.workflows.checkpoint_pg import is_postgres, redacted

    return redacted(dsn) if is_postgres(dsn) else dsn


def _scrub(text: str, dsn: str) -> str:
    """A driver's error text without the DSN's password, should the driver quote the DSN or its parts back."""
    from urllib.parse import unquote, urlsplit

    from modelyard.schema.errors import mask_secrets
    from modelyard.workflows.checkpoint_pg import is_postgres, redacted

    if not is_postgres(dsn):
        return text
    parts = urlsplit(dsn)
    raw = [v for k, _, v in (f.partition("=") for f in parts.query.split("&")) if unquote(k) == "password"]
    secrets = [s for v in raw for s in (v, unquote(v.replace("+", " "))) if s]  # as written and as decoded
    if parts.password:
        secrets += [parts.password, unquote(parts.password)]
    text = text.replace(dsn, redacted(dsn))
    for secret in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return mask_secrets(text)


def _space(max_tokens: int) -> str:
    """The embedding space a router of `max_tokens` reads (MiniLM.signature, without loading the model)."""
    return f"minilm-l6-v2/t{max_tokens}"


def _print_merge(n_samples: int, rows: Any, merged: Any | None) -> None:
    per_model: dict[str, int] = {}
    for m in rows.models:
        per_model[m] = per_model.get(m, 0) + 1
    out.print(
        f"feedback: {n_samples} samples -> {len(rows)} labelled rows (several verdicts on one prompt averaged)"
        + ("" if merged is None else f" appended to {len(merged.prompts) - merged.added_rows} training prompts")
    )
    if per_model:
        out.print("  rows per model: " + json.dumps(dict(sorted(per_model.items()))))
    if merged is not None and merged.imputed_rows:
        out.print(
            f"  {merged.imputed_rows} rows are known by their stored embedding only (no log_content): their text "
            "features are the nearest training prompt's"
        )
    for why, count in sorted(rows.skipped.items()):
        out.print(f"  skipped {count}: {why}")


def _carry(added: AddedModel, new_models: list[str], old_models: list[str]) -> AddedModel | None:
    """An added model kept across a retrain when the trained models are the same set (coefficients
    re-ordered by name); None otherwise: its coordinates meant something in the old set only."""
    if set(new_models) != set(old_models) or added.name in new_models:
        return None
    coef = dict(zip(old_models, added.coef, strict=True))
    return replace(added, coef=tuple(coef[m] for m in new_models))
