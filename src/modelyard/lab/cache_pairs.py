"""The semantic cache's labelled pair set: near misses that must not hit, paraphrases that should.

Why: a cache threshold (and the precision guard, routing/cache_guard.py) is only as good as its measured
false-hit rate, and the failures that matter are the near misses an embedding cannot tell apart: the same
prompt with another number, name, negation, polarity word, audience, quoted string, unit or date. Each pair
is an original prompt from the shared routing data (LLMRouter and RouteLLM prompts converted to JSONL) and a
perturbation of it, labelled `hit` (a true paraphrase: case, punctuation, whitespace, fillers, polite
prefixes, synonym swaps, reordered sentences) or not. Seeded: the same inputs give the same pairs, so the
full set (4,900 pairs, 3 MB of the datasets' prompts) is rebuilt from the shared data where it is measured
(`shared_pairs`, bench/semantic_cache_precision.py) and only a stratified sample is kept in the repository
for the tests:

    python -m modelyard.lab.cache_pairs llmrouter.jsonl routellm.jsonl --out pairs.jsonl   # the full set
    python -m modelyard.lab.cache_pairs llmrouter.jsonl routellm.jsonl --sample 6 \\
        --out tests/data/semantic_cache_pairs_sample.jsonl                                 # 6 per kind
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    kind: str
    hit: bool  # True: b asks what a asks (a hit is right); False: a hit would serve the wrong answer


Perturb = Callable[[str, random.Random], str | None]

_NUM = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.]*\d)")
_NAMES = str.split(
    "Alice Bob Carol David Emma Frank Grace Henry Paris London Tokyo Berlin Madrid Chicago Toronto Sydney "
    "Germany France Japan Brazil Canada India Microsoft Google Amazon Tesla Smith Johnson Garcia Nguyen"
)
_CAP = re.compile(r"(?<=[a-z,;] )[A-Z][a-z]{2,}\b")
_AUX = re.compile(r"\b(is|are|was|were|does|do|did|can|should|will|would|could|has|have|must)\b ")
_NEG = re.compile(r"\b(not|never) |n't\b")
_POLARITY = {
    "good": "bad",
    "best": "worst",
    "positive": "negative",
    "true": "false",
    "correct": "incorrect",
    "increase": "decrease",
    "maximum": "minimum",
    "largest": "smallest",
    "more": "less",
    "higher": "lower",
    "advantages": "disadvantages",
    "pros": "cons",
    "strengths": "weaknesses",
    "before": "after",
    "above": "below",
    "greater": "smaller",
    "terrible": "excellent",
    "happy": "sad",
    "love": "hate",
    "agree": "disagree",
    "easy": "difficult",
    "strong": "weak",
    "fastest": "slowest",
    "hot": "cold",
    "success": "failure",
    "win": "lose",
    "rich": "poor",
    "safe": "dangerous",
    "cheap": "expensive",
    "first": "last",
    "most": "least",
    "always": "never",
    "early": "late",
    "long": "short",
    "old": "new",
}
_POLARITY.update({v: k for k, v in list(_POLARITY.items())})
_AUDIENCES = [
    ("a beginner", "an expert"),
    ("a five year old child", "a university professor"),
    ("a novice programmer", "a senior engineer"),
    ("a layperson", "a specialist"),
    ("a high school student", "a PhD researcher"),
    ("a customer", "a developer"),
    ("my grandmother", "my boss"),
    ("a casual reader", "a technical audience"),
]
_UNITS = {
    "km": "miles",
    "kilometers": "miles",
    "miles": "kilometers",
    "kg": "pounds",
    "pounds": "kilograms",
    "meters": "feet",
    "feet": "meters",
    "celsius": "fahrenheit",
    "hours": "minutes",
    "minutes": "seconds",
    "dollars": "euros",
    "cm": "inches",
    "inches": "centimeters",
    "liters": "gallons",
    "grams": "ounces",
    "seconds": "milliseconds",
    "days": "weeks",
    "years": "months",
    "percent": "points",
}
_MONTHS = str.split("January February March April May June July August September October November December")
_DAYS = str.split("Monday Tuesday Wednesday Thursday Friday Saturday Sunday")
_SYNONYMS = {
    "explain": "describe",
    "write": "compose",
    "create": "make",
    "give": "provide",
    "show": "display",
    "choose": "select",
    "calculate": "compute",
    "help": "assist",
    "start": "begin",
    "buy": "purchase",
    "big": "large",
    "movie": "film",
    "shop": "store",
    "improve": "enhance",
    "suggest": "recommend",
    "summarize": "summarise",
    "passage": "text",
    "picture": "image",
    "car": "automobile",
    "answer": "reply",
    "quickly": "rapidly",
    "question": "query",
    "mistake": "error",
    "begin": "start",
    "purchase": "buy",
    "identify": "determine",
    "story": "tale",
    "problem": "issue",
    "correct": "right",
    "house": "home",
    "statement": "claim",
    "find": "determine",
    "select": "pick",
    "following": "below",
    "use": "utilize",
}
_FILLERS = ["just ", "basically ", "actually ", "really "]
_POLITE = ["Please ", "Please, ", "Could you please ", "Can you ", "Hi, ", "Hey there! ", "Hello, ", "Kindly "]
_POLITE_TAIL = [" Thanks!", " Thank you.", " Please.", " thanks", " Thank you so much!"]


def _sub_one(pattern: re.Pattern[str], text: str, rng: random.Random, repl: Callable[[str], str]) -> str | None:
    found = list(pattern.finditer(text))
    if not found:
        return None
    m = rng.choice(found)
    new = repl(m.group())
    return None if new == m.group() else text[: m.start()] + new + text[m.end() :]


def _number(text: str, rng: random.Random) -> str | None:
    def change(raw: str) -> str:
        if "." in raw:
            return f"{float(raw) + rng.choice([-1, 1]) * rng.uniform(0.1, 5):.{len(raw.split('.')[1])}f}"
        value = int(raw)
        return str(max(0, value + rng.choice([-1, 1]) * rng.randint(1, max(2, value // 3 + 1))) or value + 1)

    return _sub_one(_NUM, text, rng, change)


def _entity(text: str, rng: random.Random) -> str | None:
    return _sub_one(_CAP, text, rng, lambda w: rng.choice([n for n in _NAMES if n != w]))


def _negation_add(text: str, rng: random.Random) -> str | None:
    if _NEG.search(text):
        return None
    return _sub_one(_AUX, text, rng, lambda w: w + "not ")


def _negation_remove(text: str, rng: random.Random) -> str | None:
    return _sub_one(_NEG, text, rng, lambda w: "")


def _word_swap(table: dict[str, str], case: bool = False) -> Perturb:
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, table)) + r")\b", 0 if case else re.IGNORECASE)

    def swap(text: str, rng: random.Random) -> str | None:
        def repl(w: str) -> str:
            new = table.get(w) or table.get(w.lower(), w)
            return new.capitalize() if w[:1].isupper() else new

        return _sub_one(pattern, text, rng, repl)

    return swap


def _audience(text: str, rng: random.Random) -> tuple[str, str]:
    one, other = rng.choice(_AUDIENCES)
    form = rng.choice(["{p}\n\nExplain your answer for {a}.", "Answer as if talking to {a}: {p}", "{p} (for {a})"])
    return form.format(p=text, a=one), form.format(p=text, a=other)


def _quoted(text: str, rng: random.Random) -> tuple[str, str] | None:
    words = {w.lower() for w in re.findall(r"[A-Za-z]{4,}", text)} - set(_POLARITY)
    if len(words) < 4:
        return None
    picked = rng.sample(sorted(words), 2)
    form = rng.choice(['{p}\nStart your answer with the word "{w}".', 'Use the term "{w}" in the reply. {p}'])
    return form.format(p=text, w=picked[0]), form.format(p=text, w=picked[1])


def _date(text: str, rng: random.Random) -> str | None:
    for names in (_MONTHS, _DAYS):
        pattern = re.compile(r"\b(" + "|".join(names) + r")\b")
        got = _sub_one(pattern, text, rng, lambda _w, n=names: rng.choice(n))  # type: ignore[misc]
        if got is not None:
            return got
    return _sub_one(re.compile(r"\b(1[89]|20)\d\d\b"), text, rng, lambda y: str(int(y) + rng.randint(1, 9)))


def _first_swapped(text: str) -> str:
    return text[:1].swapcase() + text[1:]


_CASES: list[Callable[[str], str]] = [str.lower, str.upper, _first_swapped]


def _case(text: str, rng: random.Random) -> str:
    return rng.choice(_CASES)(text)


def _punctuation(text: str, rng: random.Random) -> str | None:
    choice = rng.randrange(3)
    if choice == 0 and text.rstrip()[-1:] in "?.!":
        return text.rstrip()[:-1]
    if choice == 1 and "," in text:
        return text.replace(",", "", 1)
    return text.rstrip() + rng.choice(["?", ".", "!", "??"])


def _whitespace(text: str, rng: random.Random) -> str:
    spaces = [m.start() for m in re.finditer(" ", text)]
    out = text
    for at in sorted(rng.sample(spaces, min(len(spaces), 3)), reverse=True):
        out = out[:at] + rng.choice(["  ", "\n", " \t"]) + out[at + 1 :]
    return rng.choice(["", " ", "\n"]) + out + rng.choice(["", " ", "\n\n"])


def _filler(text: str, rng: random.Random) -> str | None:
    return _sub_one(re.compile(r"(?<= )(?=[a-z]{3,} )"), text, rng, lambda _: rng.choice(_FILLERS))


def _polite(text: str, rng: random.Random) -> str:
    if rng.random() < 0.6:
        head = rng.choice(_POLITE)
        return head + (text[:1].lower() + text[1:] if head.strip()[-1:] not in "!," else text)
    return text.rstrip() + rng.choice(_POLITE_TAIL)


def _reorder(text: str, rng: random.Random) -> str | None:
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z])", text.strip())
    if len(parts) < 2 or len(parts) > 4:
        return None
    i = rng.randrange(len(parts) - 1)
    parts[i], parts[i + 1] = parts[i + 1], parts[i]
    return " ".join(parts)


def _issue_templates(rng: random.Random, n: int) -> Iterable[Pair]:
    """The issue's own near misses, varied: orders, reviews, audiences."""
    reviews = [("terrible", "excellent"), ("awful", "delicious"), ("slow", "fast"), ("rude", "friendly")]
    for _ in range(n):
        a, b = rng.sample(range(1000, 99999), 2)
        yield Pair(
            f"I want a refund for order {a}, it arrived damaged.",
            f"I want a refund for order {b}, it arrived damaged.",
            "number",
            False,
        )
        good, bad = rng.choice(reviews)
        yield Pair(
            f"Classify the sentiment of this review as positive or negative: the food was {good}",
            f"Classify the sentiment of this review as positive or negative: the food was {bad}",
            "polarity",
            False,
        )


NEGATIVE: dict[str, Perturb] = {
    "number": _number,
    "entity": _entity,
    "negation_add": _negation_add,
    "negation_remove": _negation_remove,
    "polarity": _word_swap(_POLARITY),
    "unit": _word_swap(_UNITS),
    "date": _date,
}
POSITIVE: dict[str, Perturb] = {
    "case": _case,
    "punctuation": _punctuation,
    "whitespace": _whitespace,
    "filler": _filler,
    "polite": _polite,
    "synonym": _word_swap(_SYNONYMS),
    "reorder": _reorder,
}


def build(prompts: Sequence[str], *, per_kind: int = 300, seed: int = 19) -> list[Pair]:
    """`per_kind` pairs of each perturbation (fewer where too few prompts allow it), in a seeded order."""
    rng = random.Random(seed)
    pool = list(prompts)
    rng.shuffle(pool)
    pairs: list[Pair] = list(_issue_templates(rng, 50))
    for kinds, hit in ((NEGATIVE, False), (POSITIVE, True)):
        for kind, perturb in kinds.items():
            made = 0
            for prompt in pool:
                if made >= per_kind:
                    break
                other = perturb(prompt, rng)
                if other is not None and other != prompt:
                    pairs.append(Pair(prompt, other, kind, hit))
                    made += 1
    for kind, pair_of in (("audience", _audience), ("quoted", _quoted)):
        made = 0
        for prompt in pool[::-1]:
            if made >= per_kind:
                break
            got = pair_of(prompt, rng)
            if got is not None and got[0] != got[1]:
                pairs.append(Pair(got[0], got[1], kind, False))
                made += 1
    return pairs


def distinct_prompts(prompts: Iterable[object], *, max_chars: int = 800, min_chars: int = 20) -> list[str]:
    """The distinct prompts of usable length, sorted (so the pair set does not depend on reading order)."""
    return sorted({p for p in prompts if isinstance(p, str) and min_chars <= len(p) <= max_chars})


def load_prompts(paths: Sequence[Path], *, max_chars: int = 800, min_chars: int = 20) -> list[str]:
    """Distinct prompts of the converted routing datasets (one JSON object with `prompt` per line)."""

    def read() -> Iterable[object]:
        for path in paths:
            with path.open(encoding="utf-8") as f:
                for line in f:
                    yield json.loads(line).get("prompt")

    return distinct_prompts(read(), max_chars=max_chars, min_chars=min_chars)


def shared_pairs(data_dir: Path | None = None, *, per_kind: int = 300, seed: int = 19) -> list[Pair]:
    """The full pair set, built from the shared routing data in place (LLMRouter and RouteLLM prompts, as
    `modelyard router convert` reads them): the same seed gives the same pairs on every machine, so the set
    is rebuilt where it is measured instead of being kept in the repository (3 MB of third-party prompts)."""
    from modelyard.lab import converters as cv
    from modelyard.lab import datasets as ds

    root = ds.shared_data_dir(data_dir)
    if root is None:
        raise FileNotFoundError(f"the shared routing data was not found; pass its folder or set {ds.DATA_ENV}")
    rows = [
        *cv.convert_llmrouter(root / cv.SOURCE_DIRS["llmrouter"]),
        *cv.convert_routellm(root / cv.SOURCE_DIRS["routellm"]),
    ]
    return build(distinct_prompts(row.get("prompt") for row in rows), per_kind=per_kind, seed=seed)


def sample_pairs(pairs: Sequence[Pair], per_kind: int, *, seed: int = 19) -> list[Pair]:
    """`per_kind` pairs of each (kind, label), seeded: the tests' small, stratified slice of the full set."""
    groups: dict[tuple[str, bool], list[Pair]] = {}
    for pair in pairs:
        groups.setdefault((pair.kind, pair.hit), []).append(pair)
    rng = random.Random(seed)
    return [p for key in sorted(groups) for p in rng.sample(groups[key], min(per_kind, len(groups[key])))]


def read_pairs(path: Path) -> list[Pair]:
    with path.open(encoding="utf-8") as f:
        return [Pair(**json.loads(line)) for line in f if line.strip()]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("inputs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-kind", type=int, default=300)
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--sample", type=int, default=None, help="keep this many pairs of each kind and label")
    args = parser.parse_args(argv)
    pairs = build(load_prompts(args.inputs), per_kind=args.per_kind, seed=args.seed)
    if args.sample is not None:
        pairs = sample_pairs(pairs, args.sample, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as f:
        for pair in pairs:
            f.write(json.dumps(asdict(pair), ensure_ascii=False) + "\n")
    hits = sum(p.hit for p in pairs)
    print(f"{len(pairs)} pairs ({hits} paraphrases, {len(pairs) - hits} near misses) -> {args.out}")


if __name__ == "__main__":
    main()
