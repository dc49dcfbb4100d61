"""The dashboard's own guards, without a server: client address and scheme behind proxies, cross-site
posts, CSRF comparison, login throttling, the post-login redirect, cookies, and chart labels escaped."""

from __future__ import annotations

from typing import Any

import pytest

from modelyard.server.ui.app import safe_next
from modelyard.server.ui.charts import line_chart, waterfall
from modelyard.server.ui.render import money
from modelyard.server.ui.security import (
    CONTENT_SECURITY_POLICY,
    LoginThrottle,
    client_address,
    cross_site,
    is_https,
    same_token,
    trusted_networks,
)
from modelyard.server.ui.sessions import cookie_value, set_cookie

PROXIES = trusted_networks(["10.0.0.0/8", "::1"])


def scope(client: str = "10.1.2.3", scheme: str = "http", **headers: str) -> dict[str, Any]:
    return {
        "client": (client, 5555),
        "scheme": scheme,
        "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
    }


def test_forwarded_for_is_believed_only_from_a_trusted_proxy() -> None:
    assert client_address(scope(x_forwarded_for="203.0.113.9"), PROXIES) == "203.0.113.9"
    # An untrusted peer cannot pick its own address (and so dodge the login throttle).
    assert client_address(scope("198.51.100.7", x_forwarded_for="203.0.113.9"), PROXIES) == "198.51.100.7"
    # The last hop that is not a trusted proxy: a client cannot prepend a fake address.
    spoofed = scope(x_forwarded_for="1.2.3.4, 203.0.113.9, 10.9.9.9")
    assert client_address(spoofed, PROXIES) == "203.0.113.9"
    assert client_address(scope(x_forwarded_for="not an address"), PROXIES) == "10.1.2.3"
    assert client_address(scope(x_forwarded_for="203.0.113.9"), ()) == "10.1.2.3"


def test_https_from_the_scheme_or_a_trusted_proxy_only() -> None:
    assert is_https(scope(scheme="https"), ())
    assert is_https(scope(x_forwarded_proto="https"), PROXIES)
    assert not is_https(scope("198.51.100.7", x_forwarded_proto="https"), PROXIES)
    assert not is_https(scope(), PROXIES)


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ({"sec_fetch_site": "cross-site"}, True),
        ({"sec_fetch_site": "same-site"}, True),
        ({"sec_fetch_site": "same-origin", "origin": "http://gw:8080", "host": "gw:8080"}, False),
        # Behind a proxy that rewrites Host, the browser's Sec-Fetch-Site still decides.
        ({"sec_fetch_site": "same-origin", "origin": "https://dash.example", "host": "10.0.0.5:4000"}, False),
        ({"origin": "http://evil.example", "host": "gw:8080"}, True),
        ({"origin": "null", "host": "gw:8080"}, True),
        ({"host": "gw:8080"}, False),  # no Origin (curl, old browsers): the CSRF token decides
    ],
)
def test_cross_site_posts(headers: dict[str, str], refused: bool) -> None:
    assert cross_site(scope(**headers)) is refused


def test_csrf_tokens_compare_exactly() -> None:
    assert same_token("abc", "abc")
    assert not same_token("abd", "abc")
    assert not same_token(None, "abc")
    assert not same_token("", "")


def test_login_throttle_per_address_and_for_the_replica() -> None:
    now = [1000.0]
    throttle = LoginThrottle(3, clock=lambda: now[0], max_addresses=5)
    for _ in range(3):
        assert throttle.retry_after("a") is None
        throttle.failed("a")
    wait = throttle.retry_after("a")
    assert wait is not None and 290 < wait <= 300
    assert throttle.retry_after("b") is None  # another address is not blocked by a's failures
    now[0] += 301
    assert throttle.retry_after("a") is None  # the window slid past them
    # 10x the limit across many addresses blocks the whole replica (a distributed guess).
    for i in range(30):
        throttle.failed(f"addr-{i}")
    assert throttle.retry_after("fresh") is not None
    assert len(throttle._failures) <= 5  # bounded memory whatever the number of addresses


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/ui/requests?model=x", "/ui/requests?model=x"),
        ("https://evil.example/", "/ui/"),
        ("//evil.example/ui/", "/ui/"),
        ("/ui//evil.example", "/ui/"),
        ("/ui/\\evil", "/ui/"),
        ("/admin/keys", "/ui/"),
        (None, "/ui/"),
    ],
)
def test_after_login_only_dashboard_paths(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected


def test_cookies_are_http_only_strict_and_secure_over_tls() -> None:
    name, value = set_cookie("modelyard_ui", "s3cret", max_age=60, secure=True)
    text = value.decode()
    assert name == b"set-cookie"
    for flag in ("HttpOnly", "SameSite=Strict", "Secure", "Path=/ui", "Max-Age=60"):
        assert flag in text
    assert "Secure" not in set_cookie("modelyard_ui", "x", max_age=60, secure=False)[1].decode()
    request = scope(cookie="other=1; modelyard_ui=abc; modelyard_ui=second")
    assert cookie_value(request, "modelyard_ui") == "abc"
    assert cookie_value(scope(cookie="modelyard_ui=" + "x" * 500), "modelyard_ui") is None


def test_the_policy_allows_no_inline_script_or_style_and_no_framing() -> None:
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY


def test_chart_labels_are_escaped() -> None:
    hostile = "<script>alert(1)</script>"
    svg = str(line_chart([(hostile, [(0.0, 1.0), (60.0, 2.0)])], title=hostile))
    svg += str(waterfall([{"deployment": hostile, "outcome": hostile, "start_ms": 0, "ms": 5}], 10.0))
    assert "<script>" not in svg
    assert "&lt;script&gt;" in svg


def test_money_shows_small_amounts() -> None:
    assert money(0.000123) == "$0.000123"
    assert money(12.345) == "$12.35"
    assert money(float("nan")) == "-"
