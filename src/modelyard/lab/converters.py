"""Converters from the three public routing datasets of the shared data folder to the labelled-row schema.

Each yields rows of `lab.datasets`' schema (prompt, model, score, cost, tokens, task, split) from the
dataset's own files, read in place; `SOURCE_DIRS` says where each sits inside the shared data folder
(`lab.datasets.shared_data_dir`).
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from modelyard.lab.datasets import Row, estimate_tokens, hash_split

GPT4 = "gpt-4-1106-preview"
MIXTRAL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
#: RouteLLM paper prices, USD per 1M tokens (input and output blended).
ROUTELLM_PRICES = {GPT4: 24.7, MIXTRAL: 0.24}
#: LLMRouter records no token counts; every model is charged this many completion tokens per prompt.
LLMROUTER_OUTPUT_TOKENS = 256


def convert_llmrouter(src: str | os.PathLike[str]) -> Iterator[Row]:
    """LLMRouter (DCRouter preprocessed): 9 open models, 14 task types, its own train/test split.

    Cost: the model's $/M price (`default_llm.json`) x (estimated prompt tokens + 256 completion tokens):
    the data has no token counts, and every model's input and output prices are equal. Ids keep the
    split's own numbering: 119 test prompts repeat a train prompt word for word, and stay test rows
    (`drop_train_duplicates` removes them for a stricter test).
    """
    root = Path(src)
    prices = json.loads((root / "default_llm.json").read_text(encoding="utf-8"))
    for split in ("train", "test"):
        tasks = {}
        for q in _jsonl(root / f"default_query_{split}.jsonl"):
            tasks[q["query"]] = q["task_name"]
        items = json.loads((root / f"dcrouter_{split}.json").read_text(encoding="utf-8"))
        for n, item in enumerate(items):
            prompt = item["question"]
            tin = estimate_tokens(prompt)
            for model, score in sorted(item["scores"].items()):
                p = prices[model]
                cost = (tin * p["input_price"] + LLMROUTER_OUTPUT_TOKENS * p["output_price"]) / 1e6
                yield {
                    "prompt": prompt,
                    "model": model,
                    "score": float(score),
                    "cost": cost,
                    "id": f"{split}/{n}",
                    "input_tokens": tin,
                    "output_tokens": LLMROUTER_OUTPUT_TOKENS,
                    "task": tasks.get(prompt, ""),
                    "split": split,
                }


def _jsonl(path: Path) -> Iterator[Any]:
    """JSON lines split on newlines only (prompts may hold U+2028, which `str.splitlines` would cut)."""
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def _contaminated(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    return {r["eval_prompt"] for r in _jsonl(path)}


def _routellm_row(prompt: str, model: str, score: float, task: str, response: str | None) -> Row:
    tin = estimate_tokens(prompt)
    tout = estimate_tokens(response) if response else 0
    cost = (tin + tout) * ROUTELLM_PRICES[model] / 1e6
    return {
        "prompt": prompt,
        "model": model,
        "score": score,
        "cost": cost,
        "input_tokens": tin,
        "output_tokens": tout,
        "task": task,
        "split": hash_split(prompt),
    }


def _truthy(value: str) -> float:
    return 1.0 if value.strip().lower() in ("true", "1", "1.0") else 0.0


def convert_routellm(
    src: str | os.PathLike[str], benchmarks: Sequence[str] = ("mmlu", "gsm8k", "mt_bench")
) -> Iterator[Row]:
    """RouteLLM's eval responses (GPT-4-1106 vs Mixtral-8x7B): MMLU, GSM8K and MT-Bench.

    Contaminated prompts are dropped as RouteLLM does. The split is ours (a hash of the prompt, 20% test):
    RouteLLM trained on Chatbot Arena preferences and tested on the whole benchmark, so its figures and
    ours are not on the same split. MT-Bench scores are the judge's 1-10 mean over both turns / 10.
    """
    root = Path(src)
    csv.field_size_limit(1 << 30)
    if "mmlu" in benchmarks:
        bad = _contaminated(root / "mmlu" / "contaminated_prompts.jsonl")
        for f in sorted(glob.glob(str(root / "mmlu" / "responses" / "mmlu_*.csv"))):
            subject = Path(f).stem.removeprefix("mmlu_")
            with open(f, newline="", encoding="utf-8") as fh:
                for r in csv.DictReader(fh):
                    if r["prompt"] in bad:
                        continue
                    for model in (GPT4, MIXTRAL):
                        yield _routellm_row(r["prompt"], model, _truthy(r[model]), "mmlu/" + subject, None)
    if "gsm8k" in benchmarks:
        bad = _contaminated(root / "gsm8k" / "contaminated_prompts.jsonl")
        with open(root / "gsm8k" / "gsm8k_responses.csv", newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                if r["prompt"] not in bad:
                    for model in (GPT4, MIXTRAL):
                        answer = r.get(f"{model}_response")
                        yield _routellm_row(r["prompt"], model, _truthy(r[model]), "gsm8k", answer)
    if "mt_bench" in benchmarks:
        yield from _convert_mt_bench(root / "mt_bench")


def _convert_mt_bench(root: Path) -> Iterator[Row]:
    bad = _contaminated(root / "contaminated_prompts.jsonl")
    questions = list(_jsonl(root / "question.jsonl"))
    judged: dict[tuple[int, str], list[float]] = {}
    for j in _jsonl(root / "judgements.jsonl"):
        judged.setdefault((j["question_id"], j["model"]), []).append(float(j["score"]))
    for q in questions:
        if q["turns"][0] in bad or q["turns"][1] in bad:
            continue
        for model in (GPT4, MIXTRAL):
            marks = judged.get((q["question_id"], model))
            if marks:
                yield _routellm_row(q["turns"][0], model, sum(marks) / len(marks) / 10.0, "mt_bench", None)


def convert_routerarena(src: str | os.PathLike[str]) -> Iterator[Row]:
    """RouterArena's cached results: 809 prompts, real token usage and USD cost per query."""
    root = Path(src)
    for f in sorted(root.glob("*.jsonl")):
        for r in _jsonl(f):
            ev = r.get("evaluation_result") or {}
            if ev.get("score") is None:
                continue
            usage = r.get("token_usage") or {}
            score = min(1.0, max(0.0, float(ev["score"])))  # METEOR can dip just below zero
            yield {
                "prompt": r["question"],
                "model": f.stem,
                "score": score,
                "cost": float(ev.get("inference_cost") or 0.0),
                "input_tokens": int(usage.get("input_tokens", 0)),
                "output_tokens": int(usage.get("output_tokens", 0)),
                "id": r["global_index"],
                "task": r["global_index"].rsplit("_", 1)[0],
                "split": hash_split(r["global_index"]),
            }


CONVERTERS: dict[str, Callable[[str | os.PathLike[str]], Iterator[Row]]] = {
    "llmrouter": convert_llmrouter,
    "routellm": convert_routellm,
    "routerarena": convert_routerarena,
}
#: Where each converter's source lives inside the shared data folder.
SOURCE_DIRS = {
    "llmrouter": "llmrouter_dcrouter",
    "routellm": "routellm_evals",
    "routerarena": "routerarena_sub10",
}
