"""Logging in and out, pages without a session, the security headers and cookie flags, CSRF."""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.browser.conftest import Stack, login, screenshot

#: Every dashboard page (ids need not exist: the session is checked before the page looks anything up).
PAGES = (
    "/ui/",
    "/ui/requests",
    "/ui/requests/req-does-not-matter",
    "/ui/keys",
    "/ui/keys/key-does-not-matter",
    "/ui/deployments",
    "/ui/runs",
    "/ui/runs/r-browser",
    "/ui/whatif",
)


def _session_cookie(page: Any) -> dict[str, Any] | None:
    return next((c for c in page.context.cookies() if c["name"] == "modelyard_ui"), None)


def test_the_master_key_logs_in_with_a_strict_http_only_cookie(page: Any, stack: Stack) -> None:
    page.goto("/ui/login")
    assert page.locator("h1").inner_text() == "Log in"
    screenshot(page, "login")
    posted = login(page, stack.master)
    assert posted.status == 303
    assert urlsplit(page.url).path == "/ui/"
    assert page.locator("form.logout button").is_visible()
    set_cookie = next(
        v for v in posted.headers_array() if v["name"].lower() == "set-cookie" and "modelyard_ui=" in v["value"]
    )
    flags = [part.strip().lower() for part in set_cookie["value"].split(";")]
    assert "httponly" in flags and "samesite=strict" in flags and "path=/ui" in " ".join(flags), set_cookie
    cookie = _session_cookie(page)
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # HttpOnly: no script can read it


def test_a_wrong_key_shows_the_error_and_opens_no_session(page: Any, stack: Stack) -> None:
    posted = login(page, "sk-not-a-key-" + "x" * 20)
    assert posted.status == 401
    assert urlsplit(page.url).path == "/ui/login"
    assert "may not use the dashboard" in page.locator(".problem").inner_text()
    assert _session_cookie(page) is None
    page.goto("/ui/")
    assert urlsplit(page.url).path == "/ui/login"


def test_a_role_admin_key_logs_in_and_a_plain_key_does_not(page: Any, stack: Stack) -> None:
    plain = stack.admin_post("/admin/keys", {"name": "plain-" + secrets.token_hex(3)})
    assert login(page, plain["key"]).status == 401
    assert _session_cookie(page) is None
    name = "operator-" + secrets.token_hex(3)
    operator = stack.admin_post("/admin/keys", {"name": name, "metadata": {"role": "admin"}})
    assert login(page, operator["key"]).status == 303
    assert urlsplit(page.url).path == "/ui/"
    assert page.locator("form.logout .who").inner_text() == name


@pytest.mark.parametrize("path", PAGES)
def test_every_page_without_a_session_redirects_to_login(page: Any, path: str) -> None:
    answer = page.goto(path)
    assert answer is not None and answer.ok
    where = urlsplit(page.url)
    assert where.path == "/ui/login", page.url
    assert parse_qs(where.query)["next"] == [path]
    assert page.locator("h1").inner_text() == "Log in"


def test_login_goes_back_to_the_page_asked_for(page: Any, stack: Stack) -> None:
    page.goto("/ui/runs")
    assert urlsplit(page.url).path == "/ui/login"
    page.fill("#key", stack.master)
    page.click("form[action='/ui/login'] button[type=submit]")
    page.wait_for_url("**/ui/runs")
    assert page.locator("h1").inner_text() == "Runs"


def test_logout_ends_the_session_for_the_old_cookie_too(admin: Any, stack: Stack) -> None:
    old = [c for c in admin.context.cookies() if c["name"] == "modelyard_ui"]
    assert old
    admin.click("form.logout button[type=submit]")
    admin.wait_for_url("**/ui/login")
    assert _session_cookie(admin) is None
    admin.context.add_cookies(old)  # replay the cookie the server should have forgotten
    admin.goto("/ui/")
    assert urlsplit(admin.url).path == "/ui/login"
    replayed = httpx.get(stack.url + "/ui/", cookies={"modelyard_ui": old[0]["value"]})
    assert replayed.status_code == 303 and replayed.headers["location"].startswith("/ui/login")


@pytest.mark.parametrize("path", ["/ui/login", "/ui/"])
def test_pages_carry_the_security_headers(admin: Any, path: str) -> None:
    answer = admin.goto(path)
    assert answer is not None
    headers = answer.all_headers()
    policy = headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"


def _csrf(page: Any) -> str:
    token = page.locator("form.logout input[name=csrf]").get_attribute("value")
    assert token
    return str(token)


def test_a_post_without_the_csrf_token_is_refused(admin: Any, stack: Stack) -> None:
    name = "made-without-csrf"
    refused = admin.request.post("/ui/keys", form={"name": name}, max_redirects=0)
    assert refused.status == 403 and "CSRF" in refused.text()
    keys = httpx.get(stack.url + "/admin/keys", headers={"authorization": f"Bearer {stack.master}"}).json()
    assert name not in str(keys)
    # logging out without the token does not end the session either
    assert admin.request.post("/ui/logout", form={}, max_redirects=0).status == 403
    admin.goto("/ui/")
    assert urlsplit(admin.url).path == "/ui/"


def test_a_cross_site_post_is_refused_even_with_the_token(admin: Any, stack: Stack) -> None:
    token = _csrf(admin)
    name = "made-cross-site"
    evil = {"origin": "http://evil.example"}
    refused = admin.request.post("/ui/keys", form={"name": name, "csrf": token}, headers=evil, max_redirects=0)
    assert refused.status == 403 and "cross-site" in refused.text()
    keys = httpx.get(stack.url + "/admin/keys", headers={"authorization": f"Bearer {stack.master}"}).json()
    assert name not in str(keys)
    refused = admin.request.post("/ui/logout", form={"csrf": token}, headers=evil, max_redirects=0)
    assert refused.status == 403
    admin.goto("/ui/")
    assert urlsplit(admin.url).path == "/ui/"  # still logged in
