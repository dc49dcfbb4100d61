"""Answer keys: the simulator knows the right answer to an acceptance suite's cases, and how often to give it.

An acceptance suite (`schema: modelyard.acceptance/v1`) lists, per task, cases with a prompt and a `reference`
answer. Given that file, a simulated model answers a case's prompt with the reference with probability
`SimModel.accuracy(task)`, else with a plausible wrong answer, the draw seeded by (model, prompt, the
request's `seed`): the same case sent to the same model with the same seed passes or fails alike every time,
and `--repeat N` (seeds 0..N-1) observes the accuracy as a pass rate. This is how a suite run on the simulator
gives reproducible pass rates that differ by model and task, and how those rates can then steer routing.

Only the few keys a suite needs are read (`tasks.<task>.cases[*].{id, prompt | messages, reference, wrong}`):
the simulator does not import `acceptance/` (layering), so this is a small reader of the same YAML.
Memory is bounded by the files the operator names; adding a file again replaces its keys, and the total is
capped at `MAX_KEYS` prompts.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modelyard.sim.fleet import FleetError

#: The most prompts all answer keys of one simulator may hold (a bound on memory, far above any real suite).
MAX_KEYS = 100_000
#: What a wrong text answer says when its task has no other reference to borrow.
FALLBACK_WRONG = "I could not determine the answer."


@dataclass(frozen=True, slots=True)
class AnswerKey:
    """One case: its task, the right answer, and the wrong one to give (None: derived when needed)."""

    task: str
    case_id: str
    prompt: str
    reference: str
    wrong: str | None = None


class AnswerKeys:
    """Prompt → answer key, from any number of suite files (each file's keys replaced when it is added again)."""

    def __init__(self) -> None:
        self._by_source: dict[str, dict[str, AnswerKey]] = {}
        self._by_prompt: dict[str, AnswerKey] = {}
        #: Every reference of each task, in file order: where a derived wrong text answer is borrowed from.
        self._references: dict[str, list[str]] = {}

    def __len__(self) -> int:
        return len(self._by_prompt)

    def __bool__(self) -> bool:
        return bool(self._by_prompt)

    def add_file(self, path: str | os.PathLike[str]) -> int:
        """Read a suite file's cases as answer keys; the number read. FleetError names the file and key."""
        source = str(Path(path).resolve())
        return self.add(source, read_suite(path))

    def add(self, source: str, keys: dict[str, AnswerKey]) -> int:
        """Set the keys of `source` (replacing what it gave before); FleetError beyond `MAX_KEYS` in all."""
        others = sum(len(k) for s, k in self._by_source.items() if s != source)
        if others + len(keys) > MAX_KEYS:
            raise FleetError(f"{source}: more than {MAX_KEYS} answer keys in all")
        self._by_source[source] = keys
        self._rebuild()
        return len(keys)

    def _rebuild(self) -> None:
        by_prompt: dict[str, AnswerKey] = {}
        references: dict[str, list[str]] = {}
        for keys in self._by_source.values():
            for prompt, key in keys.items():
                by_prompt.setdefault(prompt, key)  # the first file to name a prompt wins
                references.setdefault(key.task, []).append(key.reference)
        self._by_prompt, self._references = by_prompt, references

    def get(self, prompt: str) -> AnswerKey | None:
        """The key whose prompt is this text (surrounding whitespace ignored), if any."""
        if not self._by_prompt:
            return None
        return self._by_prompt.get(prompt.strip())

    def answer(self, key: AnswerKey, model: str, accuracy: float, seed: int | None) -> tuple[str, bool]:
        """The answer `model` gives to `key`'s case and whether it is the reference: right with probability
        `accuracy`, drawn from an RNG seeded by (model, case prompt, `seed` or 0) alone."""
        rng = case_rng(model, key, seed)
        if rng.random() < accuracy:
            return key.reference, True
        if key.wrong is not None:
            return key.wrong, False
        return derived_wrong(key, self._references.get(key.task, ()), rng), False


def case_rng(model: str, key: AnswerKey, seed: int | None) -> random.Random:
    """The RNG of one (model, case, seed): independent of the request order and of the other models."""
    material = f"{model}\x00{key.prompt}\x00{seed or 0}".encode()
    return random.Random(hashlib.blake2b(material, digest_size=16).digest())


def derived_wrong(key: AnswerKey, references: Iterable[str], rng: random.Random) -> str:
    """A plausible wrong answer: a JSON object with one field dropped or altered, else another case's
    reference of the same task (a real model confuses similar cases), else a fixed non-answer."""
    document = _json_object(key.reference)
    if document:
        return _altered(document, rng)
    others = sorted({r for r in references if r != key.reference})
    if others:
        return others[rng.randrange(len(others))]
    return FALLBACK_WRONG if key.reference != FALLBACK_WRONG else FALLBACK_WRONG + "."


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _altered(document: dict[str, Any], rng: random.Random) -> str:
    """The object with one field dropped (when others remain) or its value changed to a wrong one."""
    names = list(document)
    name = names[rng.randrange(len(names))]
    changed = dict(document)
    if len(names) > 1 and rng.random() < 0.5:
        del changed[name]
    else:
        changed[name] = _wrong_value(document[name])
    return json.dumps(changed, ensure_ascii=False)


def _wrong_value(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value[::-1] if len(set(value)) > 1 else value + "?"
    if isinstance(value, list):
        return value[:-1] if value else ["?"]
    return None if value is not None else "unknown"


# ---------------------------------------------------------------------------------------------- the reader


def read_suite(path: str | os.PathLike[str]) -> dict[str, AnswerKey]:
    """Prompt → key for every case of a suite file that has a prompt and a reference."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise FleetError(f"{path}: cannot read answer key: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise FleetError(f"{path}: not valid YAML: {exc}") from None
    tasks = data.get("tasks") if isinstance(data, dict) else None
    if not isinstance(tasks, dict):
        raise FleetError(f"{path}: an answer key is an acceptance suite with a `tasks` mapping")
    keys: dict[str, AnswerKey] = {}
    for task, spec in tasks.items():
        cases = spec.get("cases") if isinstance(spec, dict) else None
        if not isinstance(cases, list):
            raise FleetError(f"{path}: tasks.{task}.cases: a list of cases")
        for i, case in enumerate(cases):
            key = _case_key(str(task), i, case, f"{path}: tasks.{task}.cases[{i}]")
            if key is not None:
                keys.setdefault(key[0], key[1])
    return keys


def _case_key(task: str, index: int, case: Any, where: str) -> tuple[str, AnswerKey] | None:
    if not isinstance(case, dict):
        raise FleetError(f"{where}: a case is a mapping")
    if "reference" not in case:
        return None  # a case without a reference has no right answer to give: the usual behaviour answers it
    prompt = _prompt_of(case, where)
    if prompt is None:
        return None
    wrong = case.get("wrong")
    prompt = prompt.strip()
    return prompt, AnswerKey(
        task=task,
        case_id=str(case.get("id", index)),
        prompt=prompt,
        reference=_as_text(case["reference"]),
        wrong=None if wrong is None else _as_text(wrong),
    )


def _prompt_of(case: dict[str, Any], where: str) -> str | None:
    """`prompt`, else the text of the last user message of `messages` (a string or text parts)."""
    prompt = case.get("prompt")
    if isinstance(prompt, str):
        return prompt
    messages = case.get("messages")
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
            raise FleetError(f"{where}.messages: a user message's content is a string or a list of parts")
    return None


def _as_text(value: Any) -> str:
    """A reference as the model would write it: text as is, a mapping or list as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)
