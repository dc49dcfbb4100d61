"""The dashboard and its admin API, attacked (#16): the real gateway (uvicorn on loopback) over the simulator
and a hostile provider, with a master key and a SQLite store.

Privilege (plain keys on every /ui and /admin route, revoked/expired admin keys, a changed master key,
logout, session fixation, odd cookies), CSRF (every POST form, login CSRF, cross-site markers), login
throttling (and X-Forwarded-For from an untrusted peer), redirects (`next=`, CR/LF), XSS (every value a
client or a provider controls, on every page that shows it), secrets (never in a page or an /admin answer
but the one-time create answer), static files, bounded inputs (4xx, never 5xx, never slow), security
headers on every /ui answer.

Holes found are `xfail(strict=True, reason="HOLE: ...")`: each fails today and passes once fixed. Tests of
what holds stay unmarked.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from modelyard.config.loader import parse_config
from modelyard.server.background import BackgroundServer
from modelyard.server.factory import create_app
from modelyard.sim.server import SimServer

MASTER = "sk-master-dash-attack-0123456789abcdef"
OTHER_MASTER = "sk-master-dash-other-9876543210fedcba"
PROVIDER_SECRETS = ("sk-provider-sim-secret-4f1e2d", "sk-provider-evil-secret-7a8b9c")
COOKIE = "modelyard_ui"
LOGIN_COOKIE = "modelyard_ui_login"
#: One payload per context: element text, double- and single-quoted attributes, a URL.
XSS = '<script>alert(1)</script><img src=x onerror=alert(2)>"\' onmouseover="alert(3)" javascript:alert(4)'
#: Substrings that would run if the payload reached the HTML unescaped.
DANGEROUS = ("<script>alert", "<img src=x onerror", '" onmouseover="alert', 'href="javascript:', "href='javascript:")


# --------------------------------------------------------------------------- a provider that says hostile things


class EvilProvider:
    """An OpenAI-wire provider whose error text and answer carry markup (and echo nothing secret)."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if b"please fail" in body:
            status = 500
            answer: dict[str, Any] = {"error": {"message": f"upstream exploded {XSS}", "type": "server_error"}}
        elif b"please echo" in body:  # some upstreams quote the credential they were sent in their error
            sent = dict(scope["headers"]).get(b"authorization", b"").decode()
            status = 400 if b"as a 400" in body else 401
            answer = {"error": {"message": f"invalid credential {sent}", "type": "invalid_request_error"}}
        elif b"please flood" in body:  # a long error text without digits (what masking key-like runs chews on)
            status = 400
            answer = {"error": {"message": "x" * 30_000, "type": "invalid_request_error"}}
        elif b"please reject" in body:
            status = 400
            answer = {"error": {"message": f"upstream refused {XSS}", "type": "invalid_request_error"}}
        else:
            status = 200
            answer = {
                "id": "chatcmpl-evil",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": "evil",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": f"answer {XSS}"}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
            }
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
        )
        await send({"type": "http.response.body", "body": json.dumps(answer).encode()})


# --------------------------------------------------------------------------- the gateway


def config_text(sim: SimServer, evil_url: str, store: Path, master: str = MASTER, ui: str = "") -> str:
    return f"""
deployments:
  - name: sim@openai
    provider: openai
    model: sim-small
    api_base: {sim.openai_base}
    api_key: {PROVIDER_SECRETS[0]}
    price: {{input: 1.0, output: 2.0}}
  - name: evil@openai
    provider: openai
    model: evil
    api_base: {evil_url}/v1
    api_key: {PROVIDER_SECRETS[1]}
    price: {{input: 1.0, output: 2.0}}
    timeouts: {{connect: 2, first_token: 5, total: 10}}
models:
  chat: {{candidates: [sim@openai]}}
  evil: {{candidates: [evil@openai]}}
  failover: {{candidates: [evil@openai, sim@openai], strategy: priority}}
access:
  master_key: {master}
spend:
  store: {store}
  flush_interval_s: 0.05
  log_content: true
ui:
  max_failed_logins: 1000
  {ui}
"""


@dataclass
class Gateway:
    url: str
    store: Path
    services: Any


@contextmanager
def running(text: str, store: Path) -> Iterator[Gateway]:
    app = create_app(parse_config(text, env={}))
    with BackgroundServer(app) as server:
        yield Gateway(server.url, store, app.services)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with SimServer(seed=5, instant=True) as server:
        yield server


@pytest.fixture(scope="module")
def evil() -> Iterator[str]:
    with BackgroundServer(EvilProvider()) as server:
        yield server.url


@pytest.fixture(scope="module")
def gw(sim: SimServer, evil: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    store = tmp_path_factory.mktemp("dash") / "modelyard.db"
    with running(config_text(sim, evil, store), store) as gateway:
        yield gateway


# --------------------------------------------------------------------------- HTTP helpers


def request(
    url: str, method: str, path: str, *, cookies: dict[str, str] | None = None, **kwargs: Any
) -> httpx.Response:
    headers = dict(kwargs.pop("headers", {}) or {})
    if cookies:
        headers["cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    return httpx.request(method, url + path, headers=headers, timeout=30, follow_redirects=False, **kwargs)


def admin(gw: Gateway, method: str, path: str, key: str | None = MASTER, **kwargs: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return request(gw.url, method, path, headers=headers, **kwargs)


def set_cookies(response: httpx.Response) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in response.headers.get_list("set-cookie"):
        name, _, rest = line.partition("=")
        out[name.strip()] = rest.split(";", 1)[0]
    return out


def login_form(url: str, cookies: dict[str, str] | None = None) -> tuple[str, str]:
    """(login_token, login cookie) from a fresh GET /ui/login."""
    page = request(url, "GET", "/ui/login", cookies=cookies)
    assert page.status_code == 200, page.text
    match = re.search(r'name="login_token" value="([^"]+)"', page.text)
    assert match is not None
    return match.group(1), set_cookies(page)[LOGIN_COOKIE]


def login_response(url: str, key: str, *, pre: dict[str, str] | None = None, **form: str) -> httpx.Response:
    token, cookie = login_form(url)
    return request(
        url,
        "POST",
        "/ui/login",
        cookies={**(pre or {}), LOGIN_COOKIE: cookie},
        data={"key": key, "login_token": token, **form},
    )


def login(url: str, key: str = MASTER) -> str:
    """A session cookie's value for `key` (asserting the login worked)."""
    answer = login_response(url, key)
    assert answer.status_code == 303, answer.text
    return set_cookies(answer)[COOKIE]


def csrf_of(url: str, session: str) -> str:
    page = request(url, "GET", "/ui/", cookies={COOKIE: session})
    assert page.status_code == 200, page.text[:500]
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match is not None
    return match.group(1)


def logged_in(url: str, session: str) -> bool:
    page = request(url, "GET", "/ui/", cookies={COOKIE: session})
    assert page.status_code < 500, page.text[:500]
    return page.status_code == 200


def make_key(gw: Gateway, by: str = MASTER, **body: Any) -> dict[str, Any]:
    answer = admin(gw, "POST", "/admin/keys", key=by, json={"name": "k", **body})
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def chat(gw: Gateway, key: str, model: str, text: str, **headers: str) -> httpx.Response:
    return request(
        gw.url,
        "POST",
        "/v1/chat/completions",
        headers={"authorization": f"Bearer {key}", **headers},
        json={"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 8},
    )


def ui_routes(gw: Gateway) -> list[tuple[str, str]]:
    """Every registered dashboard route (exact ones; prefix routes with a sample id)."""
    ui = gw.services.ui
    routes = [(method, path) for (method, path) in ui._exact]
    routes += [(method, prefix + "sample-id") for method, prefix, _ in ui._prefixed]
    return sorted(set(routes))


def admin_routes(gw: Gateway) -> list[tuple[str, str]]:
    """Every admin JSON route (exact and prefixed, with a sample id)."""
    services = gw.services
    routes = [(m, p) for (m, p) in services.routes() if p.startswith("/admin")]
    routes += [(m, prefix + "sample-id") for m, prefix, _ in services.admin.prefixed]
    routes.append(("DELETE", "/admin/keys/sample-id"))
    return sorted(set(routes))


def test_the_harness_sees_the_services(gw: Gateway) -> None:
    assert gw.services is not None and gw.services.ui is not None
    assert ("GET", "/ui/login") in ui_routes(gw)
    assert ("GET", "/admin/keys") in admin_routes(gw)


# =========================================================================== privilege


def test_every_ui_route_without_a_session_goes_to_the_login_page(gw: Gateway) -> None:
    for method, path in ui_routes(gw):
        if path == "/ui/login":
            continue
        answer = request(gw.url, method, path, data={"csrf": "x"} if method == "POST" else None)
        assert answer.status_code == 303, (method, path, answer.status_code)
        assert answer.headers["location"].startswith("/ui/login?next="), (method, path)


def test_a_plain_key_is_refused_by_every_admin_route(gw: Gateway) -> None:
    plain = make_key(gw, name="plain")["key"]
    for method, path in admin_routes(gw):
        for key in (plain, None, "sk-my-not-a-key", MASTER + "x"):
            answer = admin(gw, method, path, key=key, json={"name": "x", "metadata": {"role": "admin"}})
            assert answer.status_code == 401, (method, path, key, answer.status_code, answer.text[:200])
            assert answer.json()["error"]["type"] in ("authentication_error", "invalid_request_error")
    assert all(k["name"] != "x" for k in admin(gw, "GET", "/admin/keys", params={"all": "true"}).json()["data"])


def test_a_plain_key_opens_no_dashboard_page_as_a_bearer_or_at_login(gw: Gateway) -> None:
    plain = make_key(gw, name="plain")["key"]
    for method, path in ui_routes(gw):
        if path == "/ui/login":
            continue
        answer = admin(gw, method, path, key=plain, data={"csrf": "x"} if method == "POST" else None)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/ui/login"), (method, path)
    refused = login_response(gw.url, plain)
    assert refused.status_code == 401 and COOKIE not in set_cookies(refused)
    assert plain not in refused.text  # the refused key is not echoed back
    # The plain key's raw value as a session cookie is no session either.
    assert not logged_in(gw.url, plain)


def test_a_role_admin_key_cannot_mint_an_admin(gw: Gateway) -> None:
    boss = make_key(gw, name="boss", metadata={"role": "admin"})
    minted = admin(gw, "POST", "/admin/keys", key=boss["key"], json={"name": "x", "metadata": {"role": " ADMIN "}})
    assert minted.status_code == 403, minted.text
    plain = make_key(gw, name="plain")
    promoted = admin(gw, "PATCH", f"/admin/keys/{plain['id']}", key=boss["key"], json={"metadata": {"role": "admin"}})
    assert promoted.status_code == 403, promoted.text
    # Nor through the dashboard's forms.
    session = login(gw.url, boss["key"])
    csrf = csrf_of(gw.url, session)
    before = {k["id"] for k in admin(gw, "GET", "/admin/keys").json()["data"]}
    form = {"csrf": csrf, "name": "minted-by-boss", "role": "admin"}
    request(gw.url, "POST", "/ui/keys", cookies={COOKIE: session}, data=form)
    request(gw.url, "POST", f"/ui/keys/{plain['id']}", cookies={COOKIE: session}, data={"csrf": csrf, "role": "admin"})
    for entry in admin(gw, "GET", "/admin/keys").json()["data"]:
        if entry["id"] not in before or entry["id"] == plain["id"]:
            assert entry["metadata"].get("role") != "admin", entry


def test_a_role_admin_key_cannot_lift_its_own_limits(gw: Gateway) -> None:
    boss = make_key(gw, name="capped-boss", metadata={"role": "admin"}, budget_usd=1.0, rpm=5)
    raised = admin(gw, "PATCH", f"/admin/keys/{boss['id']}", key=boss["key"], json={"budget_usd": 1e6, "rpm": 100000})
    assert raised.status_code == 403, raised.text
    record = admin(gw, "GET", f"/admin/keys/{boss['id']}").json()
    assert record["budget_usd"] == 1.0 and record["rpm"] == 5


def test_a_role_admin_key_cannot_revoke_another_admin_key(gw: Gateway) -> None:
    rogue = make_key(gw, name="rogue-admin", metadata={"role": "admin"})
    victims = [make_key(gw, name=f"victim-admin-{i}", metadata={"role": "admin"}) for i in range(2)]
    by_api = admin(gw, "DELETE", f"/admin/keys/{victims[0]['id']}", key=rogue["key"])
    session = login(gw.url, rogue["key"])
    form = {"csrf": csrf_of(gw.url, session), "key_id": victims[1]["id"], "id": victims[1]["id"]}
    by_form = request(gw.url, "POST", "/ui/keys/revoke", cookies={COOKIE: session}, data=form)
    states = {k["id"]: k["status"] for k in admin(gw, "GET", "/admin/keys", params={"all": "true"}).json()["data"]}
    assert by_api.status_code == 403, by_api.text[:200]
    assert by_form.status_code == 403, by_form.status_code
    assert [states[v["id"]] for v in victims] == ["active", "active"]


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


def test_a_revoked_or_demoted_admin_keys_live_session_ends(gw: Gateway) -> None:
    revoked = make_key(gw, name="soon-revoked", metadata={"role": "admin"})
    demoted = make_key(gw, name="soon-demoted", metadata={"role": "admin"})
    sessions = {name: login(gw.url, made["key"]) for name, made in (("r", revoked), ("d", demoted))}
    assert all(logged_in(gw.url, s) for s in sessions.values())
    assert admin(gw, "DELETE", f"/admin/keys/{revoked['id']}").status_code == 200
    assert admin(gw, "PATCH", f"/admin/keys/{demoted['id']}", json={"metadata": {"role": None}}).status_code == 200
    assert not logged_in(gw.url, sessions["r"])
    assert not logged_in(gw.url, sessions["d"])
    # Neither may log in again.
    assert login_response(gw.url, revoked["key"]).status_code == 401
    assert login_response(gw.url, demoted["key"]).status_code == 401


def test_an_ended_session_stays_ended(gw: Gateway) -> None:
    demoted = make_key(gw, name="demoted-then-promoted", metadata={"role": "admin"})
    extended = make_key(gw, name="expired-then-extended", metadata={"role": "admin"}, expires_in=2)
    sessions = [login(gw.url, demoted["key"]), login(gw.url, extended["key"])]
    assert admin(gw, "PATCH", f"/admin/keys/{demoted['id']}", json={"metadata": {"role": None}}).status_code == 200
    assert wait_until(lambda: not any(logged_in(gw.url, s) for s in sessions), timeout=8.0)
    assert admin(gw, "PATCH", f"/admin/keys/{demoted['id']}", json={"metadata": {"role": "admin"}}).status_code == 200
    assert admin(gw, "PATCH", f"/admin/keys/{extended['id']}", json={"expires_in": "1d"}).status_code == 200
    assert [logged_in(gw.url, s) for s in sessions] == [False, False]


def test_an_expired_admin_keys_live_session_ends(gw: Gateway) -> None:
    short = make_key(gw, name="short-lived", metadata={"role": "admin"}, expires_in=3)
    session = login(gw.url, short["key"])
    assert wait_until(lambda: not logged_in(gw.url, session), timeout=8.0)
    assert admin(gw, "GET", "/admin/keys", key=short["key"]).status_code == 401


def test_logout_ends_the_session_and_the_old_cookie_does_not_come_back(gw: Gateway) -> None:
    session = login(gw.url)
    csrf = csrf_of(gw.url, session)
    out = request(gw.url, "POST", "/ui/logout", cookies={COOKIE: session}, data={"csrf": csrf})
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    assert set_cookies(out)[COOKIE] == "" and "Max-Age=0" in out.headers["set-cookie"]
    assert not logged_in(gw.url, session)
    # Replaying the logout (or any form) with the old cookie and token changes nothing and opens nothing.
    again = request(gw.url, "POST", "/ui/logout", cookies={COOKIE: session}, data={"csrf": csrf})
    assert again.status_code == 303 and again.headers["location"].startswith("/ui/login?next=")


def test_a_pre_set_session_cookie_does_not_survive_login(gw: Gateway) -> None:
    """Session fixation: whatever cookie the browser held before, login answers a new random secret."""
    planted = "attacker-chosen-session-value-0123456789"
    answer = login_response(gw.url, MASTER, pre={COOKIE: planted})
    assert answer.status_code == 303
    fresh = set_cookies(answer)[COOKIE]
    assert fresh != planted and len(fresh) >= 32
    assert not logged_in(gw.url, planted)
    # Nor does a planted copy of a real session's value fix anything: the login always mints its own.
    other = login(gw.url)
    assert set_cookies(login_response(gw.url, MASTER, pre={COOKIE: other}))[COOKIE] != other


def test_a_session_cookie_is_httponly_strict_and_scoped_to_ui(gw: Gateway) -> None:
    answer = login_response(gw.url, MASTER)
    line = next(v for v in answer.headers.get_list("set-cookie") if v.startswith(COOKIE + "="))
    assert "HttpOnly" in line and "SameSite=Strict" in line and "Path=/ui" in line


@pytest.mark.parametrize(
    "cookie",
    [
        f"{COOKIE}={'a' * 6000}",  # very long
        "; ".join(f"c{i}={i}" for i in range(400)),  # many
        f"{COOKIE}=; {COOKIE}==; {COOKIE}=a=b=c",  # empty and odd values
        f"{COOKIE}=\u00e9\u00e8\u00ff; x=\x01\x02",  # latin-1 and control bytes
        ";;;; ;=;=x; ==; " + COOKIE,  # no value at all
    ],
    ids=["long", "many", "empty", "bytes", "garbage"],
)
def test_odd_cookies_are_no_session_and_no_5xx(gw: Gateway, cookie: str) -> None:
    for path in ("/ui/", "/ui/login", "/ui/requests"):
        answer = httpx.get(gw.url + path, headers={b"cookie": cookie.encode("latin-1")}, timeout=30)
        assert answer.status_code in (200, 303, 400, 431), (path, answer.status_code)
        if path != "/ui/login":
            assert answer.status_code != 200


def test_a_duplicated_cookie_uses_one_value_and_never_mixes_two_sessions(gw: Gateway) -> None:
    real = login(gw.url)
    # The first value of the name counts (a planted first value cannot borrow a second, real one).
    assert request(gw.url, "GET", "/ui/", headers={"cookie": f"{COOKIE}=junk; {COOKIE}={real}"}).status_code == 303
    assert request(gw.url, "GET", "/ui/", headers={"cookie": f"{COOKIE}={real}; {COOKIE}=junk"}).status_code == 200


def test_a_master_key_change_ends_its_sessions(sim: SimServer, evil: str, tmp_path: Path) -> None:
    store = tmp_path / "modelyard.db"
    with running(config_text(sim, evil, store), store) as first:
        session = login(first.url)
        assert logged_in(first.url, session)
    with running(config_text(sim, evil, store, master=OTHER_MASTER), store) as second:
        assert not logged_in(second.url, session)
        assert login_response(second.url, MASTER).status_code == 401
        assert logged_in(second.url, login(second.url, OTHER_MASTER))


# =========================================================================== CSRF


def post_routes(gw: Gateway) -> list[str]:
    return [path for method, path in ui_routes(gw) if method == "POST" and path != "/ui/login"]


def forged_posts(
    gw: Gateway, session: str, other_csrf: str, login_token: str
) -> list[tuple[str, dict[str, str], dict[str, str]]]:
    """(what, form, extra headers) for each forgery: the form's own fields are filled in as a real page would."""
    real = csrf_of(gw.url, session)
    cross = {"origin": "http://evil.example", "sec-fetch-site": "cross-site"}
    return [
        ("no token", {}, {}),
        ("empty token", {"csrf": ""}, {}),
        ("another session's token", {"csrf": other_csrf}, {}),
        ("the login token", {"csrf": login_token, "login_token": login_token}, {}),
        ("the token in the query string", {}, {}),
        ("cross-site Origin", {"csrf": real}, {"origin": "http://evil.example"}),
        ("Origin null", {"csrf": real}, {"origin": "null"}),
        ("same-site Sec-Fetch-Site", {"csrf": real}, {"sec-fetch-site": "same-site"}),
        ("cross-site Sec-Fetch-Site", {"csrf": real}, {"sec-fetch-site": "cross-site"}),
        ("both", {"csrf": real}, cross),
    ]


def test_every_dashboard_post_refuses_a_forged_form(gw: Gateway) -> None:
    victim = make_key(gw, name="csrf-victim")
    session = login(gw.url)
    other_csrf = csrf_of(gw.url, login(gw.url))
    login_token, _ = login_form(gw.url)
    keys_before = admin(gw, "GET", "/admin/keys", params={"all": "true"}).json()["data"]
    fields = {"name": "forged", "key_id": victim["id"], "id": victim["id"], "rpm": "1", "budget_usd": "0"}
    for path in [*post_routes(gw), f"/ui/keys/{victim['id']}"]:
        for what, form, headers in forged_posts(gw, session, other_csrf, login_token):
            params = {"csrf": csrf_of(gw.url, session)} if what == "the token in the query string" else None
            answer = request(
                gw.url, "POST", path, cookies={COOKIE: session}, data={**fields, **form}, headers=headers, params=params
            )
            assert answer.status_code == 403, (path, what, answer.status_code, answer.text[:300])
            assert "text/html" in answer.headers["content-type"]
    assert logged_in(gw.url, session)  # the forged logouts did nothing
    keys_after = admin(gw, "GET", "/admin/keys", params={"all": "true"}).json()["data"]
    assert keys_after == keys_before  # no key made, revoked or edited


def test_login_csrf_needs_the_login_cookie_and_its_own_token(gw: Gateway) -> None:
    token, cookie = login_form(gw.url)
    _, other_cookie = login_form(gw.url)
    attempts = [
        ({}, {"key": MASTER, "login_token": token}),  # no login cookie: a cross-site form cannot send one
        ({LOGIN_COOKIE: other_cookie}, {"key": MASTER, "login_token": token}),  # another form's cookie
        ({LOGIN_COOKIE: cookie}, {"key": MASTER}),  # no token
        ({LOGIN_COOKIE: cookie}, {"key": MASTER, "login_token": ""}),
        ({LOGIN_COOKIE: ""}, {"key": MASTER, "login_token": ""}),
    ]
    for cookies, form in attempts:
        answer = request(gw.url, "POST", "/ui/login", cookies=cookies, data=form)
        assert answer.status_code == 403, (cookies, form, answer.status_code)
        assert COOKIE not in set_cookies(answer)
    crossed = request(
        gw.url,
        "POST",
        "/ui/login",
        cookies={LOGIN_COOKIE: cookie},
        data={"key": MASTER, "login_token": token},
        headers={"origin": "http://evil.example"},
    )
    assert crossed.status_code == 403 and COOKIE not in set_cookies(crossed)


def test_forms_in_another_encoding_or_too_big_are_refused_not_crashed(gw: Gateway) -> None:
    session = login(gw.url)
    csrf = csrf_of(gw.url, session)
    cookies = {COOKIE: session}
    as_json = request(gw.url, "POST", "/ui/logout", cookies=cookies, json={"csrf": csrf})
    assert as_json.status_code == 415
    multipart = request(gw.url, "POST", "/ui/logout", cookies=cookies, files={"csrf": ("a", csrf.encode())})
    assert multipart.status_code == 415
    many = "&".join(f"f{i}=1" for i in range(5000)) + f"&csrf={csrf}"
    crowded = request(
        gw.url,
        "POST",
        "/ui/keys",
        cookies=cookies,
        content=many,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert crowded.status_code == 400, crowded.status_code
    huge = request(gw.url, "POST", "/ui/keys", cookies=cookies, data={"csrf": csrf, "name": "n" * 200_000})
    assert huge.status_code == 413, huge.status_code
    assert logged_in(gw.url, session)


# =========================================================================== throttling


@pytest.fixture
def strict_gw(sim: SimServer, evil: str, tmp_path: Path) -> Iterator[Gateway]:
    store = tmp_path / "modelyard.db"
    text = config_text(sim, evil, store).replace("max_failed_logins: 1000", "max_failed_logins: 10")
    with running(text, store) as gateway:
        yield gateway


def test_fifty_wrong_keys_from_one_client_are_throttled(strict_gw: Gateway) -> None:
    codes = [login_response(strict_gw.url, f"sk-wrong-{i}").status_code for i in range(50)]
    assert codes[:10] == [401] * 10 and set(codes[10:]) == {429}, codes
    # The admin API takes no session, but a guessed key there is still only a 401 (keys are 256-bit).
    assert admin(strict_gw, "GET", "/admin/keys", key="sk-wrong").status_code == 401


def rotate_forwarded_for(gw: Gateway, source: str) -> list[int]:
    """50 wrong keys from `source` (a loopback address), each claiming another client address."""
    codes = []
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=30) as client:
        for i in range(50):
            page = client.get(gw.url + "/ui/login")
            match = re.search(r'name="login_token" value="([^"]+)"', page.text)
            assert match is not None
            spoof = {
                "x-forwarded-for": f"203.0.113.{i}",
                "x-real-ip": f"198.51.100.{i}",
                "forwarded": f"for=192.0.2.{i}",
                "cookie": f"{LOGIN_COOKIE}={set_cookies(page)[LOGIN_COOKIE]}",
            }
            answer = client.post(
                gw.url + "/ui/login", data={"key": f"sk-wrong-{i}", "login_token": match.group(1)}, headers=spoof
            )
            codes.append(answer.status_code)
    return codes


def test_x_forwarded_for_rotation_from_an_untrusted_remote_peer_does_not_bypass_the_throttle(
    strict_gw: Gateway,
) -> None:
    codes = rotate_forwarded_for(strict_gw, "127.0.0.2")  # a peer uvicorn does not trust either
    assert codes[:10] == [401] * 10 and set(codes[10:]) == {429}, codes


def test_x_forwarded_for_rotation_from_an_untrusted_loopback_peer_does_not_bypass_the_throttle(
    strict_gw: Gateway,
) -> None:
    codes = rotate_forwarded_for(strict_gw, "127.0.0.1")  # ui.trusted_proxies is empty: no peer is trusted
    assert set(codes[10:]) == {429}, codes


def test_x_forwarded_for_rotation_does_not_bypass_the_throttle_of_the_real_process(
    sim: SimServer, evil: str, tmp_path: Path
) -> None:
    from modelyard.testing.process import GatewayProcess

    store = tmp_path / "modelyard.db"
    config = tmp_path / "modelyard.yaml"
    config.write_text(config_text(sim, evil, store).replace("max_failed_logins: 1000", "max_failed_logins: 10"))
    with GatewayProcess(config) as process:
        codes = rotate_forwarded_for(Gateway(process.url, store, None), "127.0.0.1")
    assert set(codes[10:]) == {429}, codes


# =========================================================================== redirects


OPEN_REDIRECTS = [
    "//evil.example",
    "/\\evil.example",
    "\\\\evil.example",
    "/ui//evil.example",
    "/ui/\\evil.example",
    "%2f%2fevil.example",
    "/%2f%2fevil.example",
    "/ui/%2f%2fevil.example",
    "https://evil.example/ui/",
    "javascript:alert(1)//ui/",
    "/ui/../../evil.example",
    "/\u2215\u2215evil.example",  # division slashes
    "/\uff0f\uff0fevil.example",  # fullwidth solidus
    "/ui/\u3002evil.example",
    "\t//evil.example",
    " //evil.example",
    "/ui/\t/\\evil.example",
]


def _same_site(location: str) -> bool:
    # As a browser reads it: backslashes are slashes, tabs and newlines dropped.
    cleaned = location.replace("\\", "/").replace("\t", "").replace("\n", "").replace("\r", "")
    target = urlsplit(urljoin("http://gw.local/ui/login", cleaned))
    return target.netloc == "gw.local" and target.scheme == "http" and location.startswith("/ui/")


@pytest.mark.parametrize("target", OPEN_REDIRECTS)
def test_next_never_leaves_the_dashboard(gw: Gateway, target: str) -> None:
    after_login = login_response(gw.url, MASTER, next=target)
    assert after_login.status_code == 303
    assert _same_site(after_login.headers["location"]), after_login.headers["location"]
    session = set_cookies(after_login)[COOKIE]
    already = request(gw.url, "GET", "/ui/login", cookies={COOKIE: session}, params={"next": target})
    assert already.status_code == 303 and _same_site(already.headers["location"]), already.headers["location"]
    form = request(gw.url, "GET", "/ui/login", params={"next": target})
    match = re.search(r'name="next" value="([^"]*)"', form.text)
    assert match is not None and _same_site(match.group(1).replace("&amp;", "&"))


def raw_get(url: str, target: bytes, headers: bytes = b"") -> bytes:
    """A GET written by hand (httpx refuses to send what an attacker would)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n" + headers + b"\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_crlf_in_next_is_no_header_and_no_5xx(gw: Gateway) -> None:
    session = login(gw.url)
    for target in ("/ui/%0d%0aSet-Cookie:%20x=y", "/ui/%0aX-Injected:%201", "/ui/%0d%0a%0d%0a<script>"):
        answer = raw_get(gw.url, b"/ui/login?next=" + target.encode(), f"Cookie: {COOKIE}={session}\r\n".encode())
        head = answer.split(b"\r\n\r\n", 1)[0]
        assert head.startswith(b"HTTP/1.1 303"), head[:200]
        assert b"\r\nx-injected" not in head.lower() and b"set-cookie: x=y" not in head.lower()
    # And after a login form posted with it.
    posted = login_response(gw.url, MASTER, next="/ui/\r\nSet-Cookie: x=y")
    assert posted.status_code == 303 and "\n" not in posted.headers["location"]


# =========================================================================== security headers and static files


def assert_framing_refused(answer: httpx.Response, what: str) -> None:
    csp = answer.headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp, (what, answer.status_code, dict(answer.headers))
    assert answer.headers.get("x-frame-options") == "DENY", (what, answer.status_code)
    assert answer.headers.get("x-content-type-options") == "nosniff", what


def test_pages_redirects_static_and_page_errors_carry_the_security_headers(gw: Gateway) -> None:
    session = login(gw.url)
    cookies = {COOKIE: session}
    answers = {
        "login": request(gw.url, "GET", "/ui/login"),
        "login refused": request(gw.url, "POST", "/ui/login", data={"key": "x"}),
        "redirect to login": request(gw.url, "GET", "/ui/"),
        "bare /ui": request(gw.url, "GET", "/ui"),
        "overview": request(gw.url, "GET", "/ui/", cookies=cookies),
        "page 400": request(gw.url, "GET", "/ui/requests", cookies=cookies, params={"limit": "x"}),
        "page 404": request(gw.url, "GET", "/ui/requests/no-such-request", cookies=cookies),
        "csrf 403": request(gw.url, "POST", "/ui/logout", cookies=cookies),
        "form 415": request(gw.url, "POST", "/ui/logout", cookies=cookies, json={}),
        "static": request(gw.url, "GET", "/ui/static/ui.css"),
        "static 404": request(gw.url, "GET", "/ui/static/nothing.css"),
    }
    for what, answer in answers.items():
        assert answer.status_code < 500, (what, answer.status_code)
        assert_framing_refused(answer, what)


def test_unknown_ui_paths_and_methods_carry_the_security_headers(gw: Gateway) -> None:
    session = login(gw.url)
    cookies = {COOKIE: session}
    answers = {
        "unknown page": request(gw.url, "GET", "/ui/nothing-here", cookies=cookies),
        "nested unknown": request(gw.url, "GET", "/ui/keys/a/b", cookies=cookies),
        "GET a POST-only page": request(gw.url, "GET", "/ui/logout", cookies=cookies),
        "POST a GET-only page": request(gw.url, "POST", "/ui/", cookies=cookies),
        "HEAD static": request(gw.url, "HEAD", "/ui/static/ui.css"),
        "traversal": request(gw.url, "GET", "/ui/static/../app.py"),
    }
    for what, answer in answers.items():
        assert_framing_refused(answer, what)


@pytest.mark.parametrize(
    "target",
    [
        b"/ui/static/../app.py",
        b"/ui/static/..%2fapp.py",
        b"/ui/static/%2e%2e/app.py",
        b"/ui/static/%2e%2e%2fapp.py",
        b"/ui/static/%252e%252e%252fapp.py",
        b"/ui/static/..%5capp.py",
        b"/ui/static/....//app.py",
        b"/ui/static/./ui.css/../../app.py",
        b"/ui/static/",
        b"/ui/static/.",
        b"/ui/static/..",
        b"/ui/static/templates",
        b"/ui/static/../templates/base.html",
        b"/ui/static/%2e%2e/templates/login.html",
        b"/ui/static/ui.css%00.py",
        b"/ui/static/UI.CSS",
        b"/ui/static//etc/passwd",
        b"/ui/static/%2fetc%2fpasswd",
        b"/ui/static/__init__.py",
    ],
)
def test_static_serves_only_its_assets(gw: Gateway, target: bytes) -> None:
    answer = raw_get(gw.url, target)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith((b"HTTP/1.1 404", b"HTTP/1.1 400")), head[:100]
    for marker in (b"import ", b"root:", b"{% ", b"def "):
        assert marker not in body


def test_static_assets_are_served_with_their_types(gw: Gateway) -> None:
    css = request(gw.url, "GET", "/ui/static/ui.css")
    js = request(gw.url, "GET", "/ui/static/ui.js")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "eval(" not in js.text and "innerHTML" not in js.text, "the script must not turn text into markup"


# =========================================================================== XSS and secrets on every page


@dataclass
class Traffic:
    """What the hostile traffic left behind: ids to look at and every secret that must never show."""

    session: str
    request_ids: list[str]
    key_ids: list[str]
    secrets: list[str]


def _request_id(answer: httpx.Response) -> str:
    return answer.headers["x-request-id"]


@pytest.fixture(scope="module")
def traffic(gw: Gateway) -> Traffic:
    hostile = make_key(gw, name=XSS, metadata={"note": XSS, "team": "javascript:alert(5)"})
    admin_key = make_key(gw, name=f"admin {XSS}", metadata={"role": "admin"})
    raws = [hostile["key"], admin_key["key"]]
    answers = [
        chat(gw, hostile["key"], "chat", f"prompt {XSS}"),  # content logged (spend.log_content: true)
        chat(gw, hostile["key"], XSS, "an unknown model"),  # 404, logged with the model asked for
        chat(
            gw,
            hostile["key"],
            "chat",
            "tagged",
            **{"x-modelyard-tags": XSS, "x-modelyard-task": XSS, "x-modelyard-explain": "1"},
        ),
        chat(gw, hostile["key"], "evil", f"please fail {XSS}"),  # the provider's error text carries markup
        chat(gw, hostile["key"], "failover", "please fail then recover"),  # two attempts, one with that error
        chat(gw, hostile["key"], "evil", "an answer with markup"),
        chat(gw, hostile["key"], "evil", "please reject this"),  # a 4xx whose message the provider wrote
        chat(gw, MASTER, "chat", f"master {XSS}"),
        chat(gw, hostile["key"], "evil", "please echo as a 400"),  # the provider quotes the key it was sent
        chat(gw, hostile["key"], "evil", "please echo"),  # ... in a 401
        request(  # a guardrail finding (a per-request check whose words are the client's)
            gw.url,
            "POST",
            "/v1/chat/completions",
            headers={"authorization": f"Bearer {hostile['key']}"},
            json={
                "model": "chat",
                "messages": [{"role": "user", "content": f"guarded {XSS}"}],
                "max_tokens": 8,
                "modelyard": {"guardrails": [{"check": "keywords", "words": [XSS], "stage": "input"}]},
            },
        ),
    ]
    assert answers[0].status_code == 200 and answers[1].status_code == 404, [a.status_code for a in answers]
    assert answers[3].status_code >= 500 and answers[4].status_code == 200
    assert answers[10].status_code == 422 and answers[10].headers["x-modelyard-guardrails"]
    session = login(gw.url)
    csrf = csrf_of(gw.url, session)
    # A key made through the dashboard's own form: its raw value is on that one answer only.
    made = request(
        gw.url, "POST", "/ui/keys", cookies={COOKIE: session}, data={"csrf": csrf, "name": f"ui {XSS}", "rpm": "5"}
    )
    assert made.status_code in (200, 303), made.text[:500]
    shown = re.findall(r"sk-my-[A-Za-z0-9_-]{20,}", made.text)
    assert shown, "the create form's answer shows the new key once"
    raws += shown
    listed = admin(gw, "GET", "/admin/keys", params={"all": "true"}).json()["data"]
    hashes = [hashlib.sha256(raw.encode()).hexdigest() for raw in [*raws, MASTER]]
    secrets = [MASTER, *PROVIDER_SECRETS, *raws, *hashes, *(h[:16] for h in hashes)]
    time.sleep(0.3)  # the spend writer flushes every 0.05 s; pages flush too
    return Traffic(session, [_request_id(a) for a in answers], [k["id"] for k in listed], secrets)


def crawl(gw: Gateway, session: str, start: list[str], limit: int = 400) -> dict[str, httpx.Response]:
    """Every dashboard page reachable by GET links from `start` (same site, /ui only, no static, no logout)."""
    seen: dict[str, httpx.Response] = {}
    queue = list(start)
    while queue and len(seen) < limit:
        path = queue.pop(0)
        if path in seen:
            continue
        answer = request(gw.url, "GET", path, cookies={COOKIE: session})
        seen[path] = answer
        for href in re.findall(r'href="([^"]+)"', answer.text):
            href = href.replace("&amp;", "&")
            if href.startswith("/ui/") and not href.startswith("/ui/static/") and href not in seen:
                queue.append(href)
    return seen


def pages_of(gw: Gateway, traffic: Traffic) -> dict[str, httpx.Response]:
    start = [path for method, path in ui_routes(gw) if method == "GET" and "sample-id" not in path]
    start += [f"/ui/requests/{rid}" for rid in traffic.request_ids]
    start += [f"/ui/keys/{kid}" for kid in traffic.key_ids]
    start += ["/ui/keys?all=1", "/ui/requests?limit=200"]
    return crawl(gw, traffic.session, start)


def unescaped(html: str) -> list[str]:
    return [d for d in DANGEROUS if d in html]


def test_every_page_shows_hostile_text_escaped(gw: Gateway, traffic: Traffic) -> None:
    pages = pages_of(gw, traffic)
    assert len(pages) >= 10
    for path, answer in pages.items():
        assert answer.status_code < 500, (path, answer.status_code, answer.text[:300])
        assert not unescaped(answer.text), (path, unescaped(answer.text))
    # The payload did reach the pages (as text): else this test would prove nothing.
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    shown_on = {path for path, answer in pages.items() if escaped in answer.text}
    for rid in [traffic.request_ids[i] for i in (0, 1, 2, 3, 6, 7)]:
        assert f"/ui/requests/{rid}" in shown_on, rid
    assert "/ui/keys" in shown_on and "/ui/requests" in shown_on


def test_a_logged_prompt_and_a_provider_error_are_text_on_the_request_page(gw: Gateway, traffic: Traffic) -> None:
    prompt = request(gw.url, "GET", f"/ui/requests/{traffic.request_ids[0]}", cookies={COOKIE: traffic.session})
    assert "prompt &lt;script&gt;alert(1)&lt;/script&gt;" in prompt.text
    failed = request(gw.url, "GET", f"/ui/requests/{traffic.request_ids[6]}", cookies={COOKIE: traffic.session})
    assert "upstream refused &lt;script&gt;" in failed.text and not unescaped(failed.text)
    unknown = request(gw.url, "GET", f"/ui/requests/{traffic.request_ids[1]}", cookies={COOKIE: traffic.session})
    assert unknown.status_code == 200 and "&lt;script&gt;" in unknown.text


def test_no_page_holds_a_secret(gw: Gateway, traffic: Traffic) -> None:
    csrf = csrf_of(gw.url, traffic.session)
    for path, answer in pages_of(gw, traffic).items():
        for secret in traffic.secrets:
            assert secret not in answer.text, (path, secret[:12])
        # The CSRF token only in POST forms' hidden fields: never in a link or a GET form (URLs reach logs).
        for href in re.findall(r'(?:href|action|src)="([^"]*)"', answer.text):
            assert csrf not in href, (path, href)
        for form in re.findall(r"<form[^>]*>.*?</form>", answer.text, flags=re.S):
            if 'method="post"' not in form.lower():
                assert csrf not in form, path


def test_no_admin_answer_holds_a_secret(gw: Gateway, traffic: Traffic) -> None:
    paths = [p for m, p in admin_routes(gw) if m == "GET" and "sample-id" not in p]
    paths += [f"/admin/requests/{rid}" for rid in traffic.request_ids]
    paths += [f"/admin/keys/{kid}" for kid in traffic.key_ids]
    paths += ["/admin/keys?all=true", "/admin/requests?limit=200", "/admin/spend?by=key"]
    for path in paths:
        answer = admin(gw, "GET", path)
        assert answer.status_code < 500, (path, answer.status_code)
        for secret in traffic.secrets:
            assert secret not in answer.text, (path, secret[:12])


# =========================================================================== bounded inputs: 4xx, never 5xx, never slow

SEEDED_ROWS = 20_000


def seed_spend(store: Path, rows: int) -> None:
    """`rows` spend records over the last day, written through the store's own writer (rollups included)."""
    import asyncio

    from modelyard.accounting.spend import SpendRecord
    from modelyard.state.sqlite_store import SQLiteStore

    async def go() -> None:
        sqlite = SQLiteStore(str(store))
        await sqlite.open()
        try:
            now = time.time()
            batch = []
            for i in range(rows):
                batch.append(
                    SpendRecord(
                        id=f"req_seed{i:08d}",
                        at=now - 86400 * (i / rows),
                        key_id=f"key_{i % 40:016x}",
                        key_name=f"team-{i % 40}",
                        model=("chat", "evil", "failover")[i % 3],
                        deployment=("sim@openai", "evil@openai")[i % 2],
                        provider="openai",
                        endpoint="/v1/chat/completions",
                        attempts=1 + i % 3,
                        prompt_tokens=10 + i % 500,
                        completion_tokens=5 + i % 300,
                        cost_usd=(i % 97) / 1e4,
                        latency_ms=50.0 + (i * 37) % 9000,
                        status="ok" if i % 17 else "error",
                        error_kind=None if i % 17 else "server",
                        guardrails=None if i % 20 else "pii:input:block fired 1 0.10ms",
                    )
                )
                if len(batch) == 500:
                    await sqlite.write_spend(batch)
                    batch = []
            if batch:
                await sqlite.write_spend(batch)
        finally:
            await sqlite.close()

    asyncio.run(go())


@pytest.fixture(scope="module")
def seeded(sim: SimServer, evil: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, str]]:
    store = tmp_path_factory.mktemp("seeded") / "modelyard.db"
    with running(config_text(sim, evil, store), store):  # creates the schema
        pass
    seed_spend(store, SEEDED_ROWS)
    with running(config_text(sim, evil, store), store) as gateway:
        yield gateway, login(gateway.url)


BAD_QUERIES: list[tuple[str, dict[str, str]]] = [
    ("/admin/requests", {"limit": "1000000000"}),
    ("/admin/requests", {"limit": "-1"}),
    ("/admin/requests", {"limit": "0"}),
    ("/admin/requests", {"limit": "1e3"}),
    ("/admin/requests", {"min_cost": "nan"}),
    ("/admin/requests", {"min_cost": "inf"}),
    ("/admin/requests", {"min_cost": "-1e400"}),
    ("/admin/requests", {"min_cost": "1e400"}),
    ("/admin/requests", {"min_cost": "0x10"}),
    ("/admin/requests", {"min_latency_ms": "-1"}),
    ("/admin/requests", {"min_latency_ms": "NaN"}),
    ("/admin/requests", {"since": "-1e308"}),
    ("/admin/requests", {"since": "1e308"}),
    ("/admin/requests", {"since": "garbage"}),
    ("/admin/requests", {"since": "9999999999d"}),
    ("/admin/requests", {"since": "2026-13-45"}),
    ("/admin/requests", {"until": "inf"}),
    ("/admin/requests", {"since": "1h", "until": "2h"}),
    ("/admin/requests", {"before": "garbage"}),
    ("/admin/requests", {"before": "nan:x"}),
    ("/admin/requests", {"before": "-1:x"}),
    ("/admin/requests", {"before": "1:"}),
    ("/admin/requests", {"before": "1:" + "a" * 300}),
    ("/admin/requests", {"status": "ok' OR 1=1"}),
    ("/admin/requests", {"guardrail": "all"}),
    ("/admin/requests", {"key": "k" * 5000}),
    ("/admin/requests", {"model": "m\x01"}),
    ("/admin/requests", {"q": "q" * 1000}),
    ("/admin/overview", {"range": "10000y"}),
    ("/admin/overview", {"range": "1h "}),
    ("/admin/overview", {"model": "chat", "key": "x"}),
    ("/admin/overview", {"deployment": "d" * 5000}),
    ("/admin/spend", {"since": "10000y"}),
    ("/admin/spend", {"since": "nan"}),
    ("/admin/spend", {"by": "nothing"}),
    ("/admin/runs", {"limit": "1000000000"}),
    ("/admin/keys/key_0000000000000000", {"range": "10000y"}),
]


@pytest.mark.parametrize(("path", "params"), BAD_QUERIES, ids=[f"{p}?{q}"[:60] for p, q in BAD_QUERIES])
def test_bad_filter_values_are_a_400_in_the_api_and_on_the_page(
    seeded: tuple[Gateway, str], path: str, params: dict[str, str]
) -> None:
    gw, session = seeded
    answer = admin(gw, "GET", path, params=params)
    assert answer.status_code in (400, 404), (answer.status_code, answer.text[:300])
    assert set(answer.json()["error"]) >= {"message", "type", "param", "code"}
    page_path = {"/admin/overview": "/ui/", "/admin/spend": None}.get(path, path.replace("/admin/", "/ui/"))
    if page_path is not None:
        shown = request(gw.url, "GET", page_path, cookies={COOKIE: session}, params=params)
        assert shown.status_code in (400, 404), (shown.status_code, shown.text[:300])
        assert "Internal error" not in shown.text and "Traceback" not in shown.text
        assert_framing_refused(shown, page_path)


@pytest.mark.parametrize("path", ["/admin/requests", "/admin/runs", "/ui/requests", "/ui/runs"])
def test_a_unicode_digit_limit_is_a_400(seeded: tuple[Gateway, str], path: str) -> None:
    gw, session = seeded
    answer = admin(gw, "GET", path, params={"limit": "\u00b2"}, cookies={COOKIE: session})
    assert answer.status_code == 400, answer.status_code


FILTERS: list[dict[str, str]] = [
    {},
    {"limit": "200"},
    {"q": "req_seed0000"},
    {"q": "%"},
    {"q": "_"},
    {"key": "key_0000000000000007"},
    {"model": "evil", "status": "error"},
    {"deployment": "sim@openai", "min_cost": "0.009"},
    {"min_latency_ms": "8999"},
    {"min_cost": "1000000"},  # matches nothing: the worst case for a scan
    {"guardrail": "block"},
    {"since": "2h", "until": "1h"},
    {"before": f"{time.time() - 43200!r}:req_seed00002000", "limit": "200"},
    {"key": "no-such-key", "model": "no-such-model", "min_latency_ms": "1"},
]


@pytest.mark.parametrize("params", FILTERS, ids=[str(f)[:50] for f in FILTERS])
def test_a_filter_on_thousands_of_rows_is_fast(seeded: tuple[Gateway, str], params: dict[str, str]) -> None:
    gw, session = seeded
    for path, headers in (("/admin/requests", {"authorization": f"Bearer {MASTER}"}), ("/ui/requests", {})):
        started = time.perf_counter()
        answer = request(gw.url, "GET", path, params=params, headers=headers, cookies={COOKIE: session})
        took = time.perf_counter() - started
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
        assert took < 1.0, (path, params, took)


@pytest.mark.parametrize("range_name", ["15m", "1h", "6h", "24h", "7d", "30d"])
def test_the_overview_of_thousands_of_rows_is_fast(seeded: tuple[Gateway, str], range_name: str) -> None:
    gw, session = seeded
    for params in ({"range": range_name}, {"range": range_name, "key": "key_0000000000000003"}):
        started = time.perf_counter()
        answer = request(gw.url, "GET", "/ui/", params=params, cookies={COOKIE: session})
        assert answer.status_code == 200 and time.perf_counter() - started < 1.0, (params, answer.status_code)


def test_huge_query_strings_and_many_fields_are_refused_or_ignored_quickly(seeded: tuple[Gateway, str]) -> None:
    gw, session = seeded
    many = "&".join(f"f{i}=1" for i in range(5000))
    for target in (f"/ui/requests?{many}", f"/admin/requests?{many}", "/ui/requests?q=" + "a" * 60_000):
        started = time.perf_counter()
        answer = request(
            gw.url, "GET", target, cookies={COOKIE: session}, headers={"authorization": f"Bearer {MASTER}"}
        )
        assert answer.status_code < 500 and time.perf_counter() - started < 2.0, (target[:40], answer.status_code)
    repeated = "&".join(["limit=1"] * 1000 + ["limit=1000000000"])
    answer = request(gw.url, "GET", f"/admin/requests?{repeated}", headers={"authorization": f"Bearer {MASTER}"})
    assert answer.status_code in (200, 400)


def test_an_admin_keys_hostile_name_is_text_in_its_own_session(gw: Gateway, traffic: Traffic) -> None:
    admin_key = next(k for k in admin(gw, "GET", "/admin/keys").json()["data"] if k["name"] == f"admin {XSS}")
    assert admin_key["metadata"]["role"] == "admin"
    raw = [s for s in traffic.secrets if s.startswith("sk-my-")]
    session = next(
        (c for r in raw if (a := login_response(gw.url, r)).status_code == 303 for c in [set_cookies(a)[COOKIE]]), None
    )
    assert session is not None
    for path in ("/ui/", "/ui/keys", f"/ui/keys/{admin_key['id']}", "/ui/requests"):
        shown = request(gw.url, "GET", path, cookies={COOKIE: session})
        assert shown.status_code == 200 and not unescaped(shown.text), path
        assert "admin &lt;script&gt;" in shown.text or path != "/ui/"


def test_the_admin_api_takes_no_session_cookie(gw: Gateway) -> None:
    session = login(gw.url)
    for method, path in admin_routes(gw):
        answer = request(gw.url, method, path, cookies={COOKIE: session}, json={})
        assert answer.status_code == 401, (method, path, answer.status_code)


KEY_FORM_VALUES = ["nan", "inf", "-1", "1e400", "\u00b2", "9" * 100, "0x10", "[1]", "a" * 10_000, "x\x00y", "\u202e"]


def test_hostile_key_form_values_are_refused_never_stored(gw: Gateway) -> None:
    session = login(gw.url)
    csrf = csrf_of(gw.url, session)
    victim = make_key(gw, name="form-victim", budget_usd=1.0, rpm=5)
    for field in ("rpm", "tpm", "budget_usd", "period", "expires_in", "models", "name"):
        for value in KEY_FORM_VALUES:
            for path in ("/ui/keys", f"/ui/keys/{victim['id']}"):
                form = {"csrf": csrf, "name": "form-fuzz", "rpm": "5", "budget_usd": "1", field: value}
                answer = request(gw.url, "POST", path, cookies={COOKIE: session}, data=form)
                assert answer.status_code in (200, 303, 400), (path, field, value[:20], answer.status_code)
                assert not unescaped(answer.text)
    for entry in admin(gw, "GET", "/admin/keys", params={"all": "true"}).json()["data"]:
        for name in ("rpm", "tpm", "budget_usd", "period_s", "expires_at"):
            value = entry[name]
            assert value is None or (isinstance(value, int | float) and 0 <= value < 1e12), (entry["id"], name, value)
        assert len(entry["name"]) <= 256 and "\x00" not in entry["name"]


def test_the_store_holds_no_session_secret_and_an_expired_row_opens_nothing(gw: Gateway) -> None:
    import sqlite3

    session = login(gw.url)
    digest = hashlib.sha256(session.encode()).hexdigest()
    with sqlite3.connect(gw.store) as db:
        rows = db.execute("SELECT id_hash, subject FROM modelyard_ui_sessions").fetchall()
        assert (digest,) in [(r[0],) for r in rows]
        assert all(session not in " ".join(map(str, r)) for r in rows)  # only its hash is stored
        assert all(MASTER not in str(r[1]) for r in rows)
        db.execute("UPDATE modelyard_ui_sessions SET expires_at = ? WHERE id_hash = ?", (time.time() - 1, digest))
    assert not logged_in(gw.url, session)
    # A row that names a key that is not there (or another master key) opens nothing either.
    forged = {
        "no-such-key": "secret-a-0123456789abcdef0123456789",
        "master:0000000000000000": "secret-b-0123456789abcdef",
    }
    with sqlite3.connect(gw.store) as db:
        for subject, secret in forged.items():
            db.execute(
                "INSERT INTO modelyard_ui_sessions VALUES (?, ?, ?, ?, ?)",
                (hashlib.sha256(secret.encode()).hexdigest(), subject, "csrf", time.time(), time.time() + 3600),
            )
    for secret in forged.values():
        assert not logged_in(gw.url, secret)


def test_a_flood_of_made_up_session_cookies_is_only_redirects(gw: Gateway) -> None:
    """Each made-up cookie costs one bounded store read: a flood of them is answered, none with a 5xx."""
    import asyncio
    import secrets as random_secrets

    async def flood() -> list[int]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=gw.url, timeout=30, limits=limits) as client:

            async def one(i: int) -> int:
                cookie = f"{COOKIE}={random_secrets.token_urlsafe(32)}"
                path = ("/ui/", "/ui/requests", "/ui/keys", "/ui/login")[i % 4]
                return (await client.get(path, headers={"cookie": cookie})).status_code

            return await asyncio.gather(*(one(i) for i in range(400)))

    started = time.perf_counter()
    codes = asyncio.run(flood())
    assert set(codes) <= {200, 303}, sorted(set(codes))
    assert time.perf_counter() - started < 20
    assert logged_in(gw.url, login(gw.url))


# =========================================================================== two replicas on PostgreSQL


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.postgres
def test_two_replicas_on_postgres_end_sessions_together_and_hold_the_same_lines(sim: SimServer, evil: str) -> None:
    """Sessions live in the store: a logout or a revocation on one replica ends the session on the other; bad
    filters and hostile text behave the same on PostgreSQL."""
    if not _reachable(5432):
        pytest.skip("needs PostgreSQL on 127.0.0.1:5432")
    import asyncio
    import uuid

    schema = f"e2e_dash_{uuid.uuid4().hex[:10]}"
    dsn = f"postgresql://postgres@127.0.0.1:5432/test?schema={schema}"
    text = config_text(sim, evil, Path("unused")).replace("store: unused", f'store: "{dsn}"')
    try:
        with running(text, Path("unused")) as first, running(text, Path("unused")) as second:
            boss = make_key(first, name=f"boss {XSS}", metadata={"role": "admin"})
            session = login(first.url, boss["key"])
            assert logged_in(second.url, session)
            csrf = csrf_of(second.url, session)
            assert request(second.url, "POST", "/ui/logout", cookies={COOKIE: session}, data={"csrf": csrf}).is_redirect
            assert not logged_in(first.url, session)
            session = login(second.url, boss["key"])
            assert admin(second, "DELETE", f"/admin/keys/{boss['id']}").status_code == 200
            assert not logged_in(first.url, session)
            hostile = make_key(first, name=XSS)
            for words in ("hi", "please reject", "please fail"):
                chat(first, hostile["key"], "evil", f"{words} {XSS}")
            chat(first, hostile["key"], XSS, "an unknown model")
            master = login(second.url)
            for path, params in BAD_QUERIES[:30]:
                assert admin(second, "GET", path, params=params).status_code in (400, 404), (path, params)
            pages = crawl(second, master, ["/ui/", "/ui/requests", "/ui/keys", "/ui/deployments"], limit=80)
            assert len(pages) > 20
            for path, answer in pages.items():
                assert answer.status_code < 500 and not unescaped(answer.text), path
                assert MASTER not in answer.text and PROVIDER_SECRETS[1] not in answer.text, path
    finally:
        import asyncpg

        async def drop() -> None:
            conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test")
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await conn.close()

        asyncio.run(drop())


def test_without_a_master_key_no_admin_key_or_old_session_opens_anything(
    sim: SimServer, evil: str, tmp_path: Path
) -> None:
    store = tmp_path / "modelyard.db"
    with running(config_text(sim, evil, store), store) as first:
        boss = make_key(first, name="boss", metadata={"role": "admin"})
        sessions = [login(first.url), login(first.url, boss["key"])]
    text = config_text(sim, evil, store).replace(f"master_key: {MASTER}", "master_key: null")
    with running(text, store) as second:
        for session in sessions:
            answer = request(second.url, "GET", "/ui/", cookies={COOKIE: session})
            assert answer.status_code == 403, answer.status_code
            assert_framing_refused(answer, "no master key")
        page = request(second.url, "GET", "/ui/login")
        assert page.status_code == 403 and COOKIE not in set_cookies(page)
        for key in (boss["key"], MASTER):
            assert admin(second, "GET", "/admin/keys", key=key).status_code == 403
            posted = request(second.url, "POST", "/ui/login", data={"key": key, "login_token": "x"})
            assert posted.status_code == 403 and COOKIE not in set_cookies(posted)


def test_no_get_changes_anything(gw: Gateway, traffic: Traffic) -> None:
    """Every GET a page links to (and GETs of the POST-only paths) leaves keys and sessions as they were."""
    import sqlite3

    def state() -> tuple[Any, ...]:
        with sqlite3.connect(gw.store) as db:
            keys = db.execute("SELECT id, name, revoked_at, rpm, budget_usd, metadata FROM modelyard_keys").fetchall()
            sessions = db.execute("SELECT id_hash FROM modelyard_ui_sessions").fetchall()
        return sorted(keys), sorted(sessions)

    before = state()
    cookies = {COOKIE: traffic.session}
    for path in ("/ui/logout", "/ui/keys/revoke", f"/ui/keys/{traffic.key_ids[0]}?rpm=1&budget_usd=0", "/ui/whatif"):
        assert request(gw.url, "GET", path, cookies=cookies).status_code < 500
    pages_of(gw, traffic)
    assert state() == before
    assert logged_in(gw.url, traffic.session)


# =========================================================================== a provider that reports absurd usage

ABSURD_USAGE: dict[str, dict[str, Any]] = {
    "negative": {"prompt_tokens": -1_000_000, "completion_tokens": -5, "total_tokens": -1_000_005},
    "huge": {"prompt_tokens": 10**30, "completion_tokens": 10**30, "total_tokens": 10**30},
    "float": {"prompt_tokens": 1e308, "completion_tokens": 1.5, "total_tokens": 3},
    "text": {"prompt_tokens": "NaN", "completion_tokens": "x", "total_tokens": "y"},
    "details": {
        "prompt_tokens": 5,
        "completion_tokens": 5,
        "total_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 10**9},
        "completion_tokens_details": {"reasoning_tokens": -(10**9)},
    },
}


class UsageProvider:
    """An OpenAI-wire provider that answers with the usage named by the prompt (ABSURD_USAGE)."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await EvilProvider()(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        asked = json.loads(body)
        usage = ABSURD_USAGE[asked["messages"][-1]["content"]]
        if asked.get("stream"):
            chunks: list[dict[str, Any]] = [
                {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "ok"}, "finish_reason": None}]},
                {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                {"choices": [], "usage": usage},
            ]
            events = b"".join(
                b"data: "
                + json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, **c}).encode()
                + b"\n\n"
                for c in chunks
            )
            start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
            await send(start)
            await send({"type": "http.response.body", "body": events + b"data: [DONE]\n\n"})
            return
        answer = {
            "id": "chatcmpl-usage",
            "object": "chat.completion",
            "created": 1,
            "model": "evil",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": usage,
        }
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(answer).encode()})


@pytest.fixture
def usage_gw(sim: SimServer, tmp_path: Path) -> Iterator[Gateway]:
    with BackgroundServer(UsageProvider()) as provider:
        store = tmp_path / "modelyard.db"
        with running(config_text(sim, provider.url, store), store) as gateway:
            yield gateway


def _answer_and_log(gw: Gateway, case: str) -> tuple[httpx.Response, httpx.Response, httpx.Response]:
    key = make_key(gw, name="usage", budget_usd=1.0)
    answer = chat(gw, key["key"], "evil", case)
    time.sleep(0.2)
    session = login(gw.url)
    return (
        answer,
        admin(gw, "GET", "/admin/requests"),
        request(gw.url, "GET", "/ui/requests", cookies={COOKIE: session}),
    )


def test_a_providers_absurd_details_are_clamped(usage_gw: Gateway) -> None:
    answer, log, page = _answer_and_log(usage_gw, "details")
    assert answer.status_code == 200 and 0 <= float(answer.headers["x-modelyard-cost-usd"]) < 1
    assert log.status_code == 200 and page.status_code == 200


@pytest.mark.parametrize("case", ["huge", "float"])
def test_a_providers_huge_token_counts_leave_the_request_log_readable(usage_gw: Gateway, case: str) -> None:
    answer, log, page = _answer_and_log(usage_gw, case)
    assert log.status_code == 200, log.text[:300]
    assert page.status_code == 200
    assert admin(usage_gw, "POST", "/admin/keys", json={"name": "after"}).status_code == 200
    assert answer.status_code in (200, 502) and float(answer.headers.get("x-modelyard-cost-usd", "0")) < 1e6


def test_a_providers_negative_usage_is_no_negative_cost(usage_gw: Gateway) -> None:
    answer, log, _ = _answer_and_log(usage_gw, "negative")
    assert float(answer.headers.get("x-modelyard-cost-usd", "0")) >= 0
    assert all(row["cost_usd"] >= 0 and row["prompt_tokens"] >= 0 for row in log.json()["data"])


def test_a_providers_non_numeric_usage_is_no_500(usage_gw: Gateway) -> None:
    answer, log, page = _answer_and_log(usage_gw, "text")
    assert answer.status_code in (200, 502), answer.text[:300]
    assert log.status_code == 200 and page.status_code == 200


def test_a_long_provider_error_does_not_freeze_the_gateway(sim: SimServer, evil: str, tmp_path: Path) -> None:
    import threading

    store = tmp_path / "modelyard.db"
    with running(config_text(sim, evil, store), store) as gw:
        done: dict[str, Any] = {}

        def flood() -> None:
            started = time.perf_counter()
            done["status"] = chat(gw, MASTER, "evil", "please flood").status_code
            done["took"] = time.perf_counter() - started

        assert chat(gw, MASTER, "evil", "warm up").status_code == 200  # connections and plans made
        thread = threading.Thread(target=flood)
        thread.start()
        waits: list[float] = []
        while thread.is_alive() and len(waits) < 50:  # the gateway's answer time to others while it runs
            started = time.perf_counter()
            assert request(gw.url, "GET", "/ui/login").status_code == 200
            waits.append(time.perf_counter() - started)
            time.sleep(0.05)
        thread.join(timeout=120)
        waited = max(waits, default=0.0)
        assert done["status"] == 400
        assert waited < 1.0 and done["took"] < 2.0, (waited, done["took"])


@pytest.mark.parametrize("case", ["negative", "huge", "float", "text"])
def test_a_providers_absurd_usage_in_a_stream_is_not_trusted(usage_gw: Gateway, case: str) -> None:
    key = make_key(usage_gw, name="streamed", budget_usd=1.0)
    body = {
        "model": "evil",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": case}],
    }
    answer = request(
        usage_gw.url, "POST", "/v1/chat/completions", headers={"authorization": f"Bearer {key['key']}"}, json=body
    )
    assert answer.status_code == 200, answer.text[:300]
    time.sleep(0.2)
    log = admin(usage_gw, "GET", "/admin/requests")
    assert log.status_code == 200, log.text[:300]
    for row in log.json()["data"]:
        assert 0 <= row["prompt_tokens"] <= 10**9 and 0 <= row["completion_tokens"] <= 10**9
        assert 0 <= row["cost_usd"] < 1
    spent = admin(usage_gw, "GET", f"/admin/keys/{key['id']}").json()["spend"]["spent_usd"]
    assert 0 <= spent < 1


def test_a_huge_logged_prompt_is_stored_and_shown_bounded(gw: Gateway) -> None:
    import sqlite3

    answer = request(
        gw.url,
        "POST",
        "/v1/chat/completions",
        headers={"authorization": f"Bearer {MASTER}"},
        json={"model": "evil", "messages": [{"role": "user", "content": "<b>" * 500_000}], "max_tokens": 5},
    )
    assert answer.status_code == 200, answer.text[:300]
    request_id = answer.headers["x-request-id"]
    time.sleep(0.2)
    shown = request(gw.url, "GET", f"/ui/requests/{request_id}", cookies={COOKIE: login(gw.url)})
    assert shown.status_code == 200 and not unescaped(shown.text)
    with sqlite3.connect(gw.store) as db:
        (stored,) = db.execute("SELECT length(content) FROM modelyard_spend WHERE id = ?", (request_id,)).fetchone()
    assert stored <= 256 * 1024, stored
    assert len(shown.text) < 1024 * 1024, len(shown.text)
