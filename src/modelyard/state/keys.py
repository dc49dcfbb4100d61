"""Virtual keys: how they are made, hashed and described. The raw key exists only at creation.

The store keeps the SHA-256 of a key, never the key: a stolen database cannot call the gateway, and a
lookup is one hash plus one dict (or index) probe. Keys carry enough random bits (256) that an unsalted
hash is safe; the visible `key_prefix` lets people tell their keys apart in listings.
"""

from __future__ import annotations

import hashlib
import secrets
import time

import msgspec

KEY_PREFIX = "sk-my-"


class KeyRecord(msgspec.Struct, kw_only=True):
    """A virtual key as stored: its hash, limits, allowed models, budget and lifetime."""

    id: str
    name: str
    key_hash: str
    key_prefix: str
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    #: Model names (as clients ask for them) this key may use; None = all.
    models: list[str] | None = None
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    period_s: float | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)

    def status(self, now: float) -> str:
        """ "active", "revoked" or "expired"."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def public(self, now: float | None = None) -> dict[str, object]:
        """What listings show: everything but the hash."""
        out = msgspec.to_builtins(self)
        out.pop("key_hash", None)
        out["status"] = self.status(time.time() if now is None else now)
        return out  # type: ignore[no-any-return]


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_key(
    name: str,
    *,
    models: list[str] | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    budget_usd: float | None = None,
    period_s: float | None = None,
    expires_at: float | None = None,
    metadata: dict[str, str] | None = None,
    now: float | None = None,
) -> tuple[str, KeyRecord]:
    """A fresh raw key and the record to store for it (the raw key is shown once, then forgotten)."""
    if not name.strip():
        raise ValueError("a key needs a name")
    for label, value in (("rpm", rpm), ("tpm", tpm)):
        if value is not None and value < 1:
            raise ValueError(f"{label} must be at least 1")
    if budget_usd is not None and budget_usd < 0:
        raise ValueError("budget_usd cannot be negative")
    raw = generate_key()
    record = KeyRecord(
        id="key_" + secrets.token_hex(8),
        name=name.strip(),
        key_hash=hash_key(raw),
        key_prefix=raw[: len(KEY_PREFIX) + 4],
        created_at=time.time() if now is None else now,
        expires_at=expires_at,
        models=sorted(set(models)) if models else None,
        rpm=rpm,
        tpm=tpm,
        budget_usd=budget_usd,
        period_s=period_s if budget_usd is not None else None,
        metadata=dict(metadata or {}),
    )
    return raw, record
