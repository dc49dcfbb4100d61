"""The answer cache: a rerun of unchanged cases against unchanged models sends nothing and costs $0.

One SQLite file (default `.modelyard/accept-cache.sqlite`). The key is a SHA-256 of the exact request body,
the target (model or deployment name), what the target stands for (each deployment's provider, upstream
model and base URL, so pointing a name elsewhere misses) and the repeat index. Answers are JSON.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from modelyard.acceptance.outcome import Answer

DEFAULT_PATH = Path(".modelyard") / "accept-cache.sqlite"


def cache_key(body: dict[str, Any], target: str, fingerprint: list[Any], repeat: int) -> str:
    material = json.dumps([body, target, fingerprint, repeat], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


class AnswerCache:
    """get/put of answers by key; used from the event loop's thread only (calls are sub-millisecond)."""

    def __init__(self, path: str | Path = DEFAULT_PATH) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT NOT NULL, created REAL NOT NULL)"
        )
        self._db.commit()
        self.hits = 0

    def get(self, key: str) -> Answer | None:
        row = self._db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        self.hits += 1
        return Answer.from_cache(json.loads(row[0]))

    def put(self, key: str, answer: Answer) -> None:
        data = json.dumps(answer.to_cache(), separators=(",", ":"))
        self._db.execute(
            "INSERT OR REPLACE INTO answers (key, answer, created) VALUES (?, ?, ?)", (key, data, time.time())
        )
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> AnswerCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
