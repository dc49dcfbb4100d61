"""Labelled routing data: one documented row schema, its loader, and where the shared data lives.

Schema (JSONL, one object per line, or CSV with the same column names), one row per (prompt, model):

==============  ========  ==============================================================================
field           required  meaning
==============  ========  ==============================================================================
prompt          yes       the user prompt as the router will see it
model           yes       the model that answered (the name the router predicts for)
score           yes       answer quality in [0, 1] (1 = correct; graded scores allowed)
cost            no        USD this model spent on this prompt; else priced from tokens with ``--prices``
input_tokens    no        prompt tokens (estimated as ceil(chars / 4) when absent)
output_tokens   no        completion tokens (0 when absent)
id              no        groups the rows of one prompt (default: the prompt text itself)
task            no        task type or benchmark, for per-task reports
split           no        ``train`` or ``test``; converters assign one so train and test never overlap
==============  ========  ==============================================================================

`load_labelled` turns rows into a `LabelledSet`: prompts x models matrices of score and cost, NaN where a
model has no label. This is also what offline policy replay reads: each model's recorded score and cost
stand in for calling it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

Row = dict[str, Any]
Matrix = NDArray[np.float64]

TEST_PERCENT = 20


@dataclass
class LabelledSet:
    """Prompts x models: `scores[i, j]` is model j's quality on prompt i, `costs[i, j]` its USD cost."""

    ids: list[str]
    prompts: list[str]
    models: list[str]
    scores: Matrix
    costs: Matrix
    tasks: list[str] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)

    def take(self, rows: Sequence[int] | NDArray[np.integer[Any]] | NDArray[np.bool_]) -> LabelledSet:
        """The same set restricted to some prompts (indices or a boolean mask)."""
        idx = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows, dtype=np.int64)
        pick = [int(i) for i in idx]
        return LabelledSet(
            ids=[self.ids[i] for i in pick],
            prompts=[self.prompts[i] for i in pick],
            models=list(self.models),
            scores=self.scores[idx],
            costs=self.costs[idx],
            tasks=[self.tasks[i] for i in pick] if self.tasks else [],
            splits=[self.splits[i] for i in pick] if self.splits else [],
        )

    def split(self, name: str) -> LabelledSet:
        """Rows whose `split` field is `name` (all rows when the data carries no split)."""
        if not self.splits or all(s == "" for s in self.splits):
            return self
        return self.take(np.array([s == name for s in self.splits]))

    def with_task(self, family: str) -> LabelledSet:
        """Rows whose task is `family` or starts with `family/` (e.g. "mmlu" keeps "mmlu/anatomy")."""
        keep = [t == family or t.startswith(family + "/") for t in self.tasks]
        return self.take(np.array(keep, dtype=bool))

    def with_models(self, models: Sequence[str]) -> LabelledSet:
        """Only these model columns (in this order), and only prompts labelled for all of them."""
        cols = [self.models.index(m) for m in models]
        sub = LabelledSet(
            self.ids, self.prompts, list(models), self.scores[:, cols], self.costs[:, cols], self.tasks, self.splits
        )
        return sub.take(np.asarray(~np.isnan(sub.scores).any(axis=1), dtype=bool))

    def complete(self) -> LabelledSet:
        """Only prompts with a score for every model (what the cost-quality metrics need)."""
        return self.take(np.asarray(~np.isnan(self.scores).any(axis=1), dtype=bool))


def drop_train_duplicates(data: LabelledSet) -> LabelledSet:
    """Test rows whose prompt text also appears among the train rows, removed."""
    seen = {p for p, s in zip(data.prompts, data.splits, strict=True) if s == "train"}
    keep = [s != "test" or p not in seen for p, s in zip(data.prompts, data.splits, strict=True)]
    return data.take(np.array(keep))


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate (about four characters per token for English), never below one."""
    return max(1, math.ceil(len(text) / 4))


def read_rows(path: str | os.PathLike[str]) -> Iterator[Row]:
    """Rows from a JSONL or CSV file (by suffix), with types as the schema says."""
    p = Path(path)
    if p.suffix.lower() == ".csv":
        csv.field_size_limit(1 << 30)
        with p.open(newline="", encoding="utf-8") as fh:
            for n, raw in enumerate(csv.DictReader(fh), start=2):
                yield _typed(dict(raw), f"{p}:{n}")
        return
    with p.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{p}:{n}: not JSON ({exc.msg} at column {exc.colno})") from None
                yield _typed(raw, f"{p}:{n}")


def _typed(row: object, where: str) -> Row:
    """One row checked and typed; every defect is a ValueError that starts with `file:line`."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a row must be a JSON object, not {type(row).__name__} {_short(row)}")
    for key in ("prompt", "model", "score"):
        if row.get(key) in (None, ""):
            raise ValueError(f"{where}: missing required field {key!r}")
    out: Row = {"prompt": str(row["prompt"]), "model": str(row["model"]), "score": _number(row, "score", where)}
    if not 0.0 <= out["score"] <= 1.0:
        raise ValueError(f"{where}: score {out['score']} is outside [0, 1]")
    for key in ("cost",):
        if row.get(key) not in (None, ""):
            out[key] = _number(row, key, where)
    for key in ("input_tokens", "output_tokens"):
        if row.get(key) not in (None, ""):
            value = _number(row, key, where)
            if not math.isfinite(value):
                raise ValueError(f"{where}: {key} {value} is not a finite number")
            out[key] = int(value)
    for key in ("id", "task", "split"):
        if row.get(key) not in (None, ""):
            out[key] = str(row[key])
    return out


def _number(row: Row, key: str, where: str) -> float:
    """`row[key]` as a float: a number, true/false (a correctness label) or a numeric string (CSV); never a
    list or an object, which float() would answer with a TypeError instead of a line the operator can fix."""
    value = row[key]
    if not isinstance(value, (int, float, str)):
        raise ValueError(f"{where}: {key} must be a number, not {type(value).__name__} {_short(value)}")
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{where}: {key} {_short(value)} is not a number") from None


def _short(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def write_rows(path: str | os.PathLike[str], rows: Iterable[Row]) -> int:
    """Write rows as JSONL; returns how many."""
    n = 0
    with Path(path).open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def row_cost(row: Row, prices: Mapping[str, Mapping[str, float]] | None) -> float:
    """The row's USD cost: recorded, else tokens x the model's price (USD per 1M tokens), else NaN."""
    if "cost" in row:
        return float(row["cost"])
    price = (prices or {}).get(row["model"])
    if price is None:
        return math.nan
    tin = row.get("input_tokens") or estimate_tokens(row["prompt"])
    tout = row.get("output_tokens") or 0
    return (tin * float(price.get("input", 0.0)) + tout * float(price.get("output", 0.0))) / 1e6


def build_set(rows: Iterable[Row], prices: Mapping[str, Mapping[str, float]] | None = None) -> LabelledSet:
    """Pivot long rows into a `LabelledSet` (the last row wins when a (prompt, model) pair repeats)."""
    index: dict[str, int] = {}
    model_index: dict[str, int] = {}
    prompts: list[str] = []
    tasks: list[str] = []
    splits: list[str] = []
    cells: list[tuple[int, int, float, float]] = []
    for row in rows:
        key = row.get("id") or row["prompt"]
        i = index.setdefault(key, len(index))
        if i == len(prompts):
            prompts.append(row["prompt"])
            tasks.append(row.get("task", ""))
            splits.append(row.get("split", ""))
        j = model_index.setdefault(row["model"], len(model_index))
        cells.append((i, j, row["score"], row_cost(row, prices)))
    scores = np.full((len(prompts), len(model_index)), np.nan)
    costs = np.full_like(scores, np.nan)
    for i, j, s, c in cells:
        scores[i, j] = s
        costs[i, j] = c
    return LabelledSet(list(index), prompts, list(model_index), scores, costs, tasks, splits)


def load_labelled(
    path: str | os.PathLike[str],
    *,
    split: str | None = None,
    prices: Mapping[str, Mapping[str, float]] | None = None,
) -> LabelledSet:
    """Load labelled traffic (prompt, per-model score, per-model cost) from the documented schema."""
    data = build_set(read_rows(path), prices)
    return data.split(split) if split else data


def load_prices(path: str | os.PathLike[str]) -> dict[str, dict[str, float]]:
    """A JSON price table `{model: {"input": usd_per_M, "output": usd_per_M}}`; any other shape is one
    ValueError naming the file (a list, a price that is not a number, a negative or infinite one)."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(raw, dict) or not all(isinstance(p, dict) for p in raw.values()):
        raise ValueError(f'{path}: prices must be {{model: {{"input": usd, "output": usd}}}} per 1M tokens')
    table: dict[str, dict[str, float]] = {}
    for model, price in raw.items():
        table[str(model)] = {k: _number(price, k, f"{path}: {model}") for k in price}
        if not all(math.isfinite(v) and v >= 0 for v in table[str(model)].values()):
            raise ValueError(f"{path}: {model}: prices must be finite and not negative")
    return table


def hash_split(key: str, test_percent: int = TEST_PERCENT) -> str:
    """A deterministic train/test assignment from the prompt text, stable across runs and machines."""
    bucket = int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=4).digest(), "big") % 100
    return "test" if bucket < test_percent else "train"


#: Names the shared routing data folder when it is not beside the checkout.
DATA_ENV = "MODELYARD_ROUTING_DATA"
#: Where the shared data sits relative to the folder that holds the checkout.
SHARED_RELATIVE = Path("shared") / "data" / "routing"


def checkout_root() -> Path | None:
    """The source checkout this package runs from (src layout), None when installed elsewhere."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "pyproject.toml").is_file() else None


def data_dir_candidates() -> list[Path]:
    """Where the shared routing data may be, in order: `$MODELYARD_ROUTING_DATA`, then `../shared/data/routing`
    beside the source checkout and beside the working directory. No machine's absolute path is assumed."""
    env = os.environ.get(DATA_ENV)
    found = [Path(env)] if env else []
    roots = [checkout_root(), Path.cwd()]
    found += [root.parent / SHARED_RELATIVE for root in roots if root is not None]
    return list(dict.fromkeys(found))


def shared_data_dir(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The shared routing data folder: `explicit` (a `--data-dir` option) if given, else the first of
    `data_dir_candidates()` that exists; None when there is none (an explicit folder must exist)."""
    if explicit is not None:
        return Path(explicit) if Path(explicit).is_dir() else None
    return next((c for c in data_dir_candidates() if c.is_dir()), None)
