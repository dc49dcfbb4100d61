"""`modelyard router ...`: convert labelled data, train a quality router, evaluate it (and plot its curve).

    modelyard router convert llmrouter --out llmrouter.jsonl
    modelyard router train --data llmrouter.jsonl --split train --out router.npz
    modelyard router eval --router router.npz --data llmrouter.jsonl --split test --plot curve.png

The data schema is documented in `modelyard.lab.datasets` and docs/routing.md. Embeddings of the
prompts are cached under ~/.cache/modelyard/embeddings, so a second run over the same data is fast.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from modelyard.cli.router_checks import (
    check_folds_fit,
    check_out,
    check_report_out,
    check_target,
    check_training,
    fail,
)

if TYPE_CHECKING:  # numpy and the lab modules load inside the commands: `modelyard` runs without them
    import numpy as np

    from modelyard.lab import datasets as ds
    from modelyard.lab import evaluation as ev

app = typer.Typer(help="Train and evaluate the learned quality router.", no_args_is_help=True, add_completion=False)
out = Console(width=None if sys.stdout.isatty() else 160)  # tables stay readable when piped to a file
err = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    """One `error:` line, exit 2 (plain: a rich console would wrap a long path over lines)."""
    return fail(message)


def _load(
    data: Path, split: str | None, prices: Path | None, models: str | None, task: str | None = None
) -> ds.LabelledSet:
    from modelyard.lab import datasets as ds

    if not data.is_file():
        raise _fail(f"{data}: no such file")
    try:
        table = ds.load_prices(prices) if prices else None
        labelled = ds.load_labelled(data, split=None if split == "all" else split, prices=table)
    except (ValueError, KeyError) as exc:  # the loaders say file:line and what is wrong (JSON errors included)
        raise _fail(str(exc)) from None
    if models:
        named = [m.strip() for m in models.split(",")]
        unknown = [m for m in named if m not in labelled.models]
        if unknown:
            raise _fail(f"--models: {', '.join(unknown)} not in the data (it has {', '.join(labelled.models)})")
        labelled = labelled.with_models(named)
    if task:
        labelled = labelled.with_task(task)
    if not len(labelled):
        where = (f" in split {split!r}" if split else "") + (f" for task {task}" if task else "")
        raise _fail(f"{data}: no rows{where}")
    return labelled


#: `router train`'s default prompt tokens: see docs/routing.md "Training speed" for why not 256.
TRAIN_TOKENS = 32
SPLIT_HELP = "Rows of this split; 'all' for every row (all rows too when the data has no split)."
TASK_HELP = "Only rows of this task family (e.g. mmlu, gsm8k: the part of `task` before '/')."


def _progress() -> Any:
    """A progress bar on stderr (rows/s for the embedding, steps for the fitting); the tables go to stdout."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    rate = TextColumn("{task.fields[rate]}")
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), rate, TimeElapsedColumn(), console=err
    )


def _embed(prompts: list[str], max_tokens: int) -> np.ndarray[Any, Any]:
    import time

    from modelyard.lab.embedding_cache import EmbeddingStore
    from modelyard.routing.embeddings import EmbeddingUnavailable, MiniLM

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        embedder = MiniLM(max_tokens=max_tokens)
    except EmbeddingUnavailable as exc:
        raise _fail(str(exc)) from None
    with _progress() as bar:
        task = bar.add_task(f"embedding ({max_tokens} tokens, cached)", total=None, rate="")
        t0 = time.perf_counter()

        def step(done: int, total: int) -> None:
            speed = done / max(time.perf_counter() - t0, 1e-9)
            bar.update(task, completed=done, total=total, rate=f"{speed:.0f} prompts/s")

        return EmbeddingStore(embedder.signature).embed(embedder, prompts, progress=step)


@app.command()
def convert(
    name: str = typer.Argument(..., help="llmrouter, routellm or routerarena."),
    out_file: Path = typer.Option(..., "--out", help="JSONL file to write."),
    src: Path = typer.Option(None, "--src", help="The dataset's own folder (default: inside the shared data)."),
    data_dir: Path = typer.Option(
        None,
        "--data-dir",
        help="The shared data folder (default: $MODELYARD_ROUTING_DATA, else ../shared/data/routing)",
    ),
    benchmarks: str = typer.Option("mmlu,gsm8k,mt_bench", help="routellm only: which benchmarks."),
) -> None:
    """Convert one of the shared routing datasets to the documented JSONL schema."""
    from modelyard.lab import converters as cv
    from modelyard.lab import datasets as ds

    if name not in cv.CONVERTERS:
        raise _fail(f"unknown dataset {name!r}; one of {', '.join(cv.CONVERTERS)}")
    if src is None:
        root = ds.shared_data_dir(data_dir)
        if root is None:
            where = f"{data_dir} is not a folder" if data_dir else "shared data folder not found"
            raise _fail(f"{where}; pass --src or --data-dir, or set {ds.DATA_ENV}")
        src = root / cv.SOURCE_DIRS[name]
    chosen = tuple(benchmarks.split(","))
    rows = cv.convert_routellm(src, chosen) if name == "routellm" else cv.CONVERTERS[name](src)
    n = ds.write_rows(out_file, rows)
    out.print(f"wrote {n} rows to {out_file}")


def _kinds(kind: str) -> tuple[Any, ...]:
    kinds: tuple[Any, ...] = ("logistic", "knn") if kind == "auto" else (kind,)
    if not set(kinds) <= {"logistic", "knn"}:
        raise _fail(f"unknown --kind {kind!r}")
    return kinds


@app.command()
def train(
    data: Path = typer.Option(..., "--data", help="Labelled JSONL/CSV (prompt, model, score, cost...)."),
    out_path: Path = typer.Option(Path("router.npz"), "--out", help="Artifact: a .npz file or a directory."),
    split: str = typer.Option("train", help=SPLIT_HELP),
    task: str = typer.Option(None, help=TASK_HELP),
    kind: str = typer.Option("auto", help="auto (compare logistic and knn), logistic or knn."),
    max_tokens: int = typer.Option(TRAIN_TOKENS, help="Prompt tokens the embedding reads (latency vs accuracy)."),
    folds: int = typer.Option(5, help="Cross-fitting folds for model choice and calibration."),
    target: float = typer.Option(0.95, help="Calibrate for this share of the strongest model's quality."),
    prices: Path = typer.Option(None, help="JSON {model: {input, output}} USD/1M for rows without cost."),
    models: str = typer.Option(None, help="Comma-separated model subset."),
) -> None:
    """Train a quality model: cross-fit logistic and kNN heads, keep the better, calibrate, save."""
    from modelyard.lab.training import train_quality_model

    check_training(folds=folds, target=target, max_tokens=max_tokens)
    check_out(out_path)
    labelled = _load(data, split, prices, models, task)
    check_folds_fit(folds, len(labelled))
    kinds = _kinds(kind)
    emb = _embed(labelled.prompts, max_tokens)
    with _progress() as bar:
        job = bar.add_task("fitting", total=None, rate="")

        def step(what: str, done: int, total: int) -> None:
            bar.update(job, description=what, completed=done, total=total)

        result = train_quality_model(
            labelled.prompts,
            emb,
            labelled.scores,
            labelled.costs,
            labelled.models,
            kinds=kinds,
            folds=folds,
            target=target,
            max_tokens=max_tokens,
            progress=step,
        )
        bar.update(job, description="fitted", completed=1, total=1)
    result.model.card.update({"data": data.name, "split": split, "task": task})
    path = result.model.save(out_path)
    table = Table("head", "param", f"cross-fitted score ({folds} folds)")
    for c in result.trials:
        table.add_row(c.kind, f"{c.param:g}", f"{c.score:.4f}")
    out.print(table)
    for cal in result.model.calibration:
        band = cal.get("band", [float("nan")] * 2)
        out.print(
            f"calibrated {cal['mode']} = {cal['knob']:.4g} for {len(cal['models'])} models: expected "
            f"{cal.get('expected_ratio', cal['quality'] / cal['best_quality']):.1%} of the best model's quality "
            f"(90% band {band[0]:.1%}-{band[1]:.1%} on its cross-fitted data) at "
            f"{cal['cost'] / cal['best_cost']:.1%} of its cost"
        )
    params = ", ".join(f"{v:g}" for v in result.model.card["params"])
    out.print(
        f"kept {result.model.card['head']} ({params}); "
        f"trained in {result.seconds:.1f}s; saved {path} ({path.stat().st_size / 1e6:.2f} MB)"
    )


def _pair_table(rep: ev.PairReport, title: str) -> Table:
    t = Table("metric", "value", title=title)
    t.add_row("weak / strong quality", f"{rep.q_weak:.4f} / {rep.q_strong:.4f}")
    t.add_row("APGR (RouteLLM, 10 quantiles)", f"{rep.apgr:.3f}")
    t.add_row("APGR (exact curve)", f"{rep.apgr_exact:.3f}")
    t.add_row("CPT(50%)", f"{rep.cpt50:.1%}")
    t.add_row("CPT(80%)", f"{rep.cpt80:.1%}")
    return t


def _many_tables(rep: ev.ManyReport, target: float) -> list[Table]:
    import numpy as np

    best = next(p for p in rep.single if rep.models[int(p.knob)] == rep.best_model)
    singles = Table("model", "quality", "accuracy", "USD / 1k prompts", title="single models")
    for p in sorted(rep.single, key=lambda p: p.cost):
        name = rep.models[int(p.knob)]
        singles.add_row(name, f"{p.quality:.4f}", f"{p.accuracy:.1%}", f"{p.cost * 1000:.4f}")
    o = rep.oracle
    singles.add_row("oracle (best per prompt)", f"{o.quality:.4f}", f"{o.accuracy:.1%}", f"{o.cost * 1000:.4f}")
    curve = Table(
        "policy",
        "hull area (AIQ)",
        "quality at best model's cost",
        f"cost for {target:.0%} of best",
        f"knob for {target:.0%}",
        "quality / cost vs best / accuracy / decision acc.",
        title="learned router",
    )
    curve.add_row("random mixing", f"{rep.random_hull_area:.4f}", f"{best.quality:.4f}", "", "", "")
    for mode, area in rep.hull_area.items():
        cal, c95 = rep.calibrated[mode], rep.cost_for_95[mode]
        at = (
            ""
            if cal is None
            else (f"{cal.quality:.4f} / {cal.cost / best.cost:.1%} / {cal.accuracy:.1%} / {cal.decision_accuracy:.1%}")
        )
        curve.add_row(
            mode,
            f"{area:.4f}",
            f"{rep.quality_at_best_cost[mode]:.4f}",
            "never" if np.isnan(c95) else f"{c95 / best.cost:.1%} of {rep.best_model}",
            "none" if cal is None else f"{cal.knob:.4g}",
            at,
        )
    return [singles, curve]


@app.command("eval")
def evaluate(
    data: Path = typer.Option(..., "--data", help="Labelled JSONL/CSV, held out from training."),
    router: str = typer.Option("default", "--router", help="Artifact path, or 'default' (the shipped one)."),
    split: str = typer.Option("test", help=SPLIT_HELP),
    task: str = typer.Option(None, help=TASK_HELP),
    target: float = typer.Option(0.95, help="Report the cheapest setting reaching this share of the best."),
    plot: Path = typer.Option(None, "--plot", help="Draw the cost-quality curve to this PNG."),
    json_out: Path = typer.Option(None, "--json", help="Also write every figure as JSON."),
    prices: Path = typer.Option(None, help="JSON {model: {input, output}} USD/1M for rows without cost."),
    models: str = typer.Option(None, help="Comma-separated model subset (default: those the router knows)."),
) -> None:
    """Evaluate a router: APGR and CPT for two models, cost-quality curve and hull area for any number."""
    import numpy as np

    from modelyard.lab.embedding_cache import predict_cached
    from modelyard.routing.embeddings import EmbeddingUnavailable, MiniLM
    from modelyard.routing.learned import RouterFileError, load_quality_model

    check_target(target)
    check_report_out(json_out, "--json")
    check_report_out(plot, "--plot")

    try:
        r = load_quality_model(None if router == "default" else router)
        r.embedder = MiniLM(max_tokens=r.max_tokens)
    except EmbeddingUnavailable as exc:
        raise _fail(str(exc)) from None
    except RouterFileError as exc:  # empty, truncated, foreign: its message names the file and what is wrong
        raise _fail(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise _fail(f"cannot load router {router}: {exc}") from None
    labelled = _load(data, split, prices, None, task)
    named = [m.strip() for m in models.split(",")] if models else None
    known = named or [m for m in labelled.models if m in r.models]
    if len(known) < 2 or not set(known) <= set(r.models):
        raise _fail(f"need two or more of the router's models in the data (it knows {', '.join(r.models)})")
    if not set(known) <= set(labelled.models):
        missing = ", ".join(m for m in known if m not in labelled.models)
        raise _fail(f"--models: {missing} not in the data (it has {', '.join(labelled.models)})")
    labelled = labelled.with_models(known)
    if np.isnan(labelled.costs).any():
        raise _fail("some rows have no cost: add `cost` or tokens to the data, or pass --prices")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with out.status(f"predicting {len(labelled)} prompts (embeddings cached after the first run)"):
        full = predict_cached(r, labelled.prompts)
    pred = full[:, [r.models.index(m) for m in known]]
    report = _report(pred, labelled, target)
    for table in report["tables"]:
        out.print(table)
    points = [_own_point(r.operating_point(known, mode), pred, labelled) for mode in ("lambda", "threshold")]
    points = [p for p in points if p]
    if points:
        out.print(_point_table(points))
        report["json"]["artifact_point"] = points[0]
        report["json"]["artifact_points"] = points
    if plot:
        plot_curve(report["many"], plot, title=f"{data.name} ({split}, {len(labelled)} prompts)")
        out.print(f"plot written to {plot}")
    if json_out:
        json_out.write_text(json.dumps(report["json"], indent=2, default=float))


@app.command()
def crossval(
    data: Path = typer.Option(..., "--data", help="Labelled JSONL/CSV."),
    split: str = typer.Option("all", help=SPLIT_HELP),
    task: str = typer.Option(None, help=TASK_HELP),
    kind: str = typer.Option("auto", help="auto (compare logistic and knn), logistic or knn."),
    max_tokens: int = typer.Option(TRAIN_TOKENS, help="Prompt tokens the embedding reads."),
    folds: int = typer.Option(5, help="Outer folds: each is predicted by a router trained on the others."),
    target: float = typer.Option(0.95, help="Report the cheapest setting reaching this share of the best."),
    seed: int = typer.Option(1, help="Fold assignment seed."),
    prices: Path = typer.Option(None, help="JSON {model: {input, output}} USD/1M for rows without cost."),
    json_out: Path = typer.Option(None, "--json", help="Also write every figure as JSON."),
) -> None:
    """Held-out estimate for small data: train on k-1 folds, score the unseen fold, k times.

    Each router makes its own inner model choice; two-model figures are averaged over folds (mean, sd).
    """
    import numpy as np

    from modelyard.lab.training import train_quality_model

    check_training(folds=folds, target=target, max_tokens=max_tokens)
    check_report_out(json_out, "--json")
    kinds = _kinds(kind)
    labelled = _load(data, split, prices, None, task)
    check_folds_fit(folds, len(labelled))
    emb = _embed(labelled.prompts, max_tokens)
    fold = np.random.default_rng(seed).permutation(len(labelled)) % folds
    pred = np.zeros_like(labelled.scores)
    with out.status(f"training {folds} routers"):
        for f in range(folds):
            train_rows = np.flatnonzero(fold != f)
            part = labelled.take(train_rows)
            model = train_quality_model(
                part.prompts,
                emb[train_rows],
                part.scores,
                part.costs,
                part.models,
                kinds=kinds,
                max_tokens=max_tokens,
            ).model
            test_rows = np.flatnonzero(fold == f)
            prompts = [labelled.prompts[i] for i in test_rows]
            pred[test_rows] = model.predict_embedded(emb[test_rows], prompts)
    report = _report(pred, labelled, target)
    if len(labelled.models) == 2:
        per_fold = [
            _report(pred[fold == f], labelled.take(fold == f), target)["json"]["pair"]["all"] for f in range(folds)
        ]
        t = Table("metric", "mean", "sd", title=f"{folds}-fold held-out, per fold ({len(labelled)} prompts)")
        for key in ("apgr", "apgr_exact", "cpt50", "cpt80"):
            vals = [p[key] for p in per_fold]
            t.add_row(key, f"{np.mean(vals):.3f}", f"{np.std(vals):.3f}")
        report["tables"].insert(0, t)
        report["json"]["per_fold"] = per_fold
    for table in report["tables"]:
        out.print(table)
    if json_out:
        json_out.write_text(json.dumps(report["json"], indent=2, default=float))


def _own_point(point: dict[str, Any] | None, pred: np.ndarray[Any, Any], labelled: ds.LabelledSet) -> dict[str, Any]:
    """What the knob calibrated at training time (stored in the artifact) does on this data, with its band."""
    from modelyard.lab import calibration as cal

    if point is None or set(point["models"]) != set(labelled.models):
        return {}
    rep = cal.knob_report(pred, labelled.scores, labelled.costs, point["mode"], point["knob"], point["target"])
    return rep.as_dict()


def _point_table(reps: list[dict[str, Any]]) -> Table:
    """The artifact's calibrated knobs on this data against issue 19's criteria."""
    t = Table(
        "policy",
        "knob",
        "target",
        "achieved (90% band)",
        "cost vs best",
        "cheapest reaching target",
        "cost / cheapest",
        "passes",
        title="the artifact's calibrated knobs on this data",
    )
    for r in reps:
        lo, hi = r["band"]
        cheap = r["cheapest_cost_ratio"]
        vs = r["cost_vs_cheapest"]
        verdict = "yes" if r["passes"] else "NO"
        if r["best_is_cheapest"]:
            verdict += " (best model is cheapest: cost only)"
        elif not r["band_ok"]:
            verdict += f" (band +-{r['half_width']:.1%} > 2 points on {r['prompts']} prompts)"
        t.add_row(
            r["mode"],
            f"{r['knob']:.4g}",
            f"{r['target']:.1%}",
            f"{r['quality_ratio']:.1%} ({lo:.1%}-{hi:.1%})",
            f"{r['cost_ratio']:.1%}",
            "never" if cheap is None else f"{cheap:.1%}",
            "-" if vs is None else f"{vs:.2f}x",
            verdict,
        )
    return t


def _report(pred: np.ndarray[Any, Any], labelled: ds.LabelledSet, target: float) -> dict[str, Any]:
    import numpy as np

    from modelyard.lab import evaluation as ev

    many = ev.many_report(pred, labelled.scores, labelled.costs, labelled.models, target)
    tables: list[Table] = _many_tables(many, target)
    result: dict[str, Any] = {"prompts": len(labelled), "many": asdict(many)}
    if len(labelled.models) == 2:
        s, w = (0, 1) if labelled.scores[:, 0].mean() >= labelled.scores[:, 1].mean() else (1, 0)
        groups = {"all": np.ones(len(labelled), bool)}
        family = np.array([t.split("/")[0] for t in labelled.tasks])
        names, counts = np.unique(family[family != ""], return_counts=True)
        if len(names) > 1:  # a breakdown per task family, where a family has enough prompts to mean much
            groups.update({str(f): family == f for f, n in zip(names, counts, strict=True) if n >= 30})
        result["pair"] = {}
        for name, rows in groups.items():
            sc = labelled.scores[rows]
            rep = ev.pair_report(pred[rows, s] - pred[rows, w], sc[:, s], sc[:, w])
            title = f"{name}: {labelled.models[s]} (strong) vs {labelled.models[w]} ({rows.sum()} prompts)"
            tables.insert(0, _pair_table(rep, title))
            result["pair"][name] = asdict(rep)
    return {"tables": tables, "many": many, "json": result}


def plot_curve(rep: ev.ManyReport, path: Path, title: str) -> None:
    """Router curves (both policies), each single model as a point, random mixing as a line."""
    import matplotlib

    from modelyard.lab import evaluation as ev

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=110)
    for mode, style in zip(ev.MODES, ("-", "--"), strict=True):
        pts = rep.curves[mode]
        hc, hq = ev.upper_hull([p.cost for p in pts], [p.quality for p in pts])
        label = f"learned router, {mode} sweep (hull area {rep.hull_area[mode]:.3f})"
        ax.plot(hc * 1000, hq, style, lw=2, label=label)
    sc, sq = ev.upper_hull([p.cost for p in rep.single], [p.quality for p in rep.single])
    label = f"random routing between models (hull area {rep.random_hull_area:.3f})"
    ax.plot(sc * 1000, sq, ":", color="grey", lw=1.5, label=label)
    for p in rep.single:
        ax.scatter(p.cost * 1000, p.quality, color="black", s=18, zorder=3)
        ax.annotate(
            rep.models[int(p.knob)].split("/")[-1],
            (p.cost * 1000, p.quality),
            fontsize=7,
            xytext=(4, -3),
            textcoords="offset points",
        )
    o = rep.oracle
    ax.scatter(o.cost * 1000, o.quality, marker="*", s=80, color="tab:green", label="oracle", zorder=3)
    best = max(p.quality for p in rep.single)
    ax.axhline(0.95 * best, color="tab:red", lw=0.8, ls="-.", label="95% of the best single model")
    ax.set_xlabel("cost, USD per 1,000 prompts")
    ax.set_ylabel("mean quality (score)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# The commands that change a trained router (add-model, retrain) live in their own module, on this group.
from modelyard.cli import router_models as _router_models  # noqa: E402, F401
