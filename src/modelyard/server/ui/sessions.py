"""Dashboard logins: a key in a form → a session in the store (so it is valid on every replica).

The browser holds only a random secret in an HttpOnly, SameSite=Strict cookie (Secure over TLS or behind a
trusted proxy that says https); the store holds its SHA-256, who logged in and the session's CSRF token.
Every page view re-checks who it is: a revoked or expired admin key, or a master key that changed, ends
the session at once.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from modelyard.schema.errors import GatewayError
from modelyard.server.access import MASTER_ID, has_admin_role
from modelyard.server.http import Scope
from modelyard.state.store import UiSession

if TYPE_CHECKING:
    from modelyard.server.access import Access

COOKIE = "modelyard_ui"
#: The login form's own CSRF token (double submit: cookie and form field must match): no one can log a
#: browser into a session of theirs.
LOGIN_COOKIE = "modelyard_ui_login"
_MAX_COOKIE = 128


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is looking at the dashboard, in this session."""

    subject: str  # `master:<a prefix of the master key's hash>` or a key id
    label: str  # what the page shows: "master key" or the key's name
    csrf: str
    id_hash: str

    @property
    def master(self) -> bool:
        """Logged in with the master key (only it may make, change or revoke admin keys)."""
        return self.subject.startswith(MASTER_ID + ":")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def cookie_value(scope: Scope, name: str) -> str | None:
    """One cookie of the request (the first of that name), bounded in length."""
    for key, value in scope.get("headers", ()):
        if key != b"cookie":
            continue
        for part in value.decode("latin-1").split(";"):
            cookie, _, text = part.strip().partition("=")
            if cookie == name and text and len(text) <= _MAX_COOKIE:
                return str(text)
    return None


def set_cookie(name: str, value: str, *, max_age: int, secure: bool) -> tuple[bytes, bytes]:
    flags = "; Secure" if secure else ""
    return (
        b"set-cookie",
        f"{name}={value}; Path=/ui; Max-Age={max_age}; HttpOnly; SameSite=Strict{flags}".encode(),
    )


class UiSessions:
    """Opens, finds and ends dashboard sessions in the store, through the access layer's bounded guard."""

    def __init__(self, access: Access, ttl_s: float) -> None:
        self.access = access
        self.ttl_s = ttl_s

    async def open(self, credential: str) -> tuple[str, UiSession]:
        """A new session for the master key or an admin key (the cookie's secret and the stored row); 401
        for anything else."""
        access = self.access
        subject = await access.admin_subject(credential)
        if subject is None:
            raise GatewayError(401, "that key may not use the dashboard (the master key, or a key with role admin)")
        if subject == MASTER_ID:  # bound to this master key: a new master key ends its sessions
            subject = self._master_subject()
        now = access.clock()
        secret = secrets.token_urlsafe(32)
        session = UiSession(
            id_hash=_digest(secret),
            subject=subject,
            csrf=secrets.token_urlsafe(24),
            created_at=now,
            expires_at=now + self.ttl_s,
        )
        guard = access.store_guard
        await guard.call(access.store.purge_sessions(now))
        await guard.call(access.store.create_session(session))
        return secret, session

    async def viewer(self, scope: Scope) -> Viewer | None:
        """The session's viewer, or None (no cookie, unknown or expired session, or its key no longer an
        active admin key)."""
        secret = cookie_value(scope, COOKIE)
        if secret is None:
            return None
        access = self.access
        session = await access.store_guard.call(access.store.get_session(_digest(secret), access.clock()))
        if session is None:
            return None
        label = await self._label(session.subject)
        if label is None:  # its key was revoked, expired or demoted: ended for good, not just hidden
            await access.store_guard.call(access.store.delete_session(session.id_hash))
            return None
        return Viewer(session.subject, label, session.csrf, session.id_hash)

    async def _label(self, subject: str) -> str | None:
        access = self.access
        if subject.startswith(MASTER_ID + ":"):
            return "master key" if access.master_hash is not None and subject == self._master_subject() else None
        record = await access.store_guard.call(access.store.get_key(subject))
        if record is None or record.status(access.clock()) != "active":
            return None
        if not has_admin_role(record.metadata):
            return None
        return record.name

    def _master_subject(self) -> str:
        return f"{MASTER_ID}:{(self.access.master_hash or '')[:16]}"

    async def close(self, viewer: Viewer) -> None:
        await self.access.store_guard.call(self.access.store.delete_session(viewer.id_hash))
