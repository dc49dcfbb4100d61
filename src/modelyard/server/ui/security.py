"""What every dashboard answer carries and what every login is checked against: security headers, the
client's address and scheme behind trusted proxies, login throttling, CSRF token comparison."""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from modelyard.server.http import Headers, Scope

#: No inline script or style anywhere: the pages' only script and stylesheet are served from /ui/static.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # no-referrer made Chromium post `Origin: null`
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_networks(entries: Sequence[str]) -> tuple[Network, ...]:
    """`ui.trusted_proxies` as networks (a bare address is a /32 or /128); a bad entry raises ValueError."""
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _trusted(scope: Scope, proxies: tuple[Network, ...]) -> bool:
    client = scope.get("client")
    if not proxies or not client:
        return False
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    return any(address in network for network in proxies)


def client_address(scope: Scope, proxies: tuple[Network, ...]) -> str:
    """The client's address: the peer's, or (only when the peer is a trusted proxy) the last address of
    X-Forwarded-For that is not itself a trusted proxy."""
    client = scope.get("client")
    peer = str(client[0]) if client else "-"
    if not _trusted(scope, proxies):
        return peer
    forwarded = _header(scope, b"x-forwarded-for")
    if not forwarded:
        return peer
    for hop in reversed([h.strip() for h in forwarded.split(",")[-16:]]):
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            return peer
        if not any(address in network for network in proxies):
            return str(address)
    return peer


def is_https(scope: Scope, proxies: tuple[Network, ...]) -> bool:
    """Whether the browser reached us over TLS: directly, or through a trusted proxy saying so."""
    if scope.get("scheme") == "https":
        return True
    return _trusted(scope, proxies) and (_header(scope, b"x-forwarded-proto") or "").lower() == "https"


def same_token(given: str | None, expected: str) -> bool:
    """A CSRF token compared in constant time (a missing one never matches)."""
    return bool(given) and hmac.compare_digest(str(given).encode(), expected.encode())


def cross_site(scope: Scope) -> bool:
    """A state-changing request from another site: by Sec-Fetch-Site when the browser sends it (every current
    browser does, and it survives proxies that rewrite Host), else by an Origin that is not this host.
    Refused before the CSRF token is even looked at."""
    site = _header(scope, b"sec-fetch-site")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = _header(scope, b"origin")
    if origin is None:
        return False  # not a browser (curl, a script): the CSRF token decides
    host = _header(scope, b"host")
    return origin == "null" or host is None or origin.split("://", 1)[-1] != host


class LoginThrottle:
    """Failed logins per client address in a sliding window, and for the whole replica (10x the per-address
    bound), so guessing keys costs a client a 429 after `limit` tries. Bounded: at most `max_addresses`
    addresses are remembered (the oldest forgotten first)."""

    WINDOW_S = 300.0

    def __init__(self, limit: int, *, clock: Callable[[], float] = time.monotonic, max_addresses: int = 10_000) -> None:
        self.limit = limit
        self.clock = clock
        self.max_addresses = max_addresses
        self._failures: OrderedDict[str, list[float]] = OrderedDict()
        self._all: list[float] = []

    def _recent(self, times: list[float], now: float) -> list[float]:
        cutoff = now - self.WINDOW_S
        return [t for t in times if t > cutoff]

    def retry_after(self, address: str) -> float | None:
        """Seconds until `address` may try again, or None when it may try now."""
        now = self.clock()
        self._all = self._recent(self._all, now)
        mine = self._recent(self._failures.get(address, []), now)
        if len(mine) >= self.limit:
            return max(1.0, mine[0] + self.WINDOW_S - now)
        if len(self._all) >= 10 * self.limit:
            return max(1.0, self._all[0] + self.WINDOW_S - now)
        return None

    def failed(self, address: str) -> None:
        now = self.clock()
        times = self._recent(self._failures.pop(address, []), now)
        times.append(now)
        self._failures[address] = times[-self.limit :]
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)
        self._all.append(now)
        self._all = self._all[-10 * self.limit :]

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)


def with_security(headers: Headers) -> Headers:
    headers.extend(SECURITY_HEADERS)
    return headers
