"""Feedback on answers, as the store keeps it and as learning reads it.

`POST /v1/feedback` (server/feedback.py) turns a client's verdict on an answer into a `FeedbackRecord`;
`modelyard router retrain --from-feedback` and the online recalibration (routing/recalibration.py) read
`FeedbackSample`s: each feedback joined with what its request's spend row kept (route, deployment, task, the
router's prediction, the prompt's embedding). Contract shared by the server, the stores and the lab.
"""

from __future__ import annotations

import base64
from typing import Literal

import msgspec

FeedbackSource = Literal["key", "admin"]


class FeedbackRecord(msgspec.Struct, kw_only=True, frozen=True):
    """One verdict on one answer: a score in [0, 1] (thumbs up = 1, down = 0), from the key that made the
    request (`source="key"`) or from an admin (`source="admin"`, `key_id` None)."""

    id: str
    request_id: str
    at: float
    score: float
    source: FeedbackSource
    key_id: str | None = None
    label: str | None = None


class FeedbackSample(msgspec.Struct, kw_only=True, frozen=True):
    """A feedback joined with its request's spend row: what retraining and recalibration learn from."""

    feedback_id: str
    request_id: str
    at: float  # when the feedback arrived
    score: float
    source: FeedbackSource
    label: str | None = None
    key_id: str | None = None  # the key that made the request (feedback from another key is refused)
    model: str | None = None  # the route the client asked for
    deployment: str | None = None  # what answered
    task: str | None = None
    predicted: float | None = None  # the learned router's P(good) for `deployment` when it was chosen
    embedding: str | None = None  # `space|base64 float32` (see encode_embedding), None when not embedded
    content: str | None = None  # the prompt text, only when the operator set log_content


def encode_embedding(space: str, vector: bytes) -> str:
    """A prompt's embedding as the spend log keeps it: the embedding space's signature (model and tokens
    read, e.g. `minilm-l6-v2/t16`), a bar, the float32 bytes in base64."""
    return f"{space}|{base64.b64encode(vector).decode('ascii')}"


def decode_embedding(value: str) -> tuple[str, bytes]:
    """(space, float32 bytes) of a stored embedding; ValueError when it is not one."""
    space, bar, data = value.partition("|")
    if not bar or not space:
        raise ValueError("not a stored embedding")
    raw = base64.b64decode(data, validate=True)
    if len(raw) % 4:
        raise ValueError("embedding bytes are not float32")
    return space, raw
