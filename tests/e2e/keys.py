"""Virtual keys for e2e tests, made through the admin API as an operator would (one copy for the files that
need a fresh key: each test gets its own namespace, budget and limits)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx


def create_key(url: str, master: str, **body: Any) -> dict[str, Any]:
    """The admin API's answer for a new key (`key` is the secret, `id` its id); `body` adds limits, models,
    a name (default: a random one)."""
    response = httpx.post(
        url + "/admin/keys",
        json={"name": f"k-{uuid.uuid4().hex[:8]}", **body},
        headers={"Authorization": f"Bearer {master}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer
