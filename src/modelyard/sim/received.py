"""What the simulator received: the last request bodies and headers per model, for tests.

A gateway test asserts on the upstream side that a client's body arrived as sent (`cache_control` marks,
thinking signatures, `anthropic-beta`). Bounded twice: a few requests per model, a fixed number of models
(the oldest model's entries go first), so a long benchmark run never grows it. Credentials are not kept.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

#: Headers never recorded: they carry the caller's credential.
_SECRET_HEADERS = frozenset({b"authorization", b"x-api-key", b"x-goog-api-key", b"api-key"})


class RequestLog:
    """The last `per_model` requests of each of at most `max_models` models."""

    def __init__(self, per_model: int = 16, max_models: int = 256) -> None:
        self.per_model = per_model
        self.max_models = max_models
        self._by_model: OrderedDict[str, deque[dict[str, Any]]] = OrderedDict()

    def record(self, model: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        entries = self._by_model.get(model)
        if entries is None:
            if len(self._by_model) >= self.max_models:
                self._by_model.popitem(last=False)
            entries = self._by_model[model] = deque(maxlen=self.per_model)
        kept = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in headers if name not in _SECRET_HEADERS
        }
        entries.append({"path": path, "headers": kept, "body": body.decode("utf-8", "replace")})

    def snapshot(self, model: str) -> list[dict[str, Any]]:
        """Oldest first; [] for a model that received nothing."""
        return list(self._by_model.get(model, ()))

    def clear(self) -> None:
        self._by_model.clear()
