"""Ground truth for feedback loops on the simulator: was this answer right?

The simulator's models answer an answer key's case (sim/answer_keys.py) with the reference with probability
`SimModel.accuracy(task)`, so the truth is in the answer itself: a client that holds the suite (a test, a bench)
grades what it received against the reference, the way a user with a labelled set would, and posts the grade
through `POST /v1/feedback`. The gateway sees nothing else: no sim-only channel, no peek at the draw.

`truth` replays the simulator's own draw for (model, case, seed), so a test can check that the grade and the
draw agree (the grader is honest) and compute the accuracy it should observe.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from modelyard.sim.answer_keys import AnswerKey, AnswerKeys, case_rng
from modelyard.sim.fleet import SimModel


def suite_document(tasks: Mapping[str, Sequence[tuple[str, str]]]) -> dict[str, Any]:
    """An acceptance suite (what `SimServer.add_answer_keys` reads) from task -> [(prompt, reference)]."""
    return {
        "schema": "modelyard.acceptance/v1",
        "tasks": {
            task: {"cases": [{"id": f"{task}-{i}", "prompt": p, "reference": r} for i, (p, r) in enumerate(cases)]}
            for task, cases in tasks.items()
        },
    }


def grade(keys: AnswerKeys, prompt: str, answer: str) -> float | None:
    """1.0 when `answer` is the case's reference, 0.0 when it is not; None for a prompt that is no case."""
    key = keys.get(prompt)
    if key is None:
        return None
    return 1.0 if answer.strip() == key.reference.strip() else 0.0


def truth(model: SimModel, key: AnswerKey, seed: int | None = None) -> bool:
    """Whether the simulator's `model` answers `key` right with this request `seed` (its own draw, replayed)."""
    return case_rng(model.name, key, seed).random() < model.accuracy(key.task)
