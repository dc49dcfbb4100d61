"""The login and logout pages."""

from __future__ import annotations

import secrets

from modelyard.schema.errors import GatewayError
from modelyard.server.ui.app import PREFIX, Page, UiApp, UiRequest, safe_next
from modelyard.server.ui.security import same_token
from modelyard.server.ui.sessions import COOKIE, LOGIN_COOKIE, cookie_value, set_cookie

_LOGIN_TOKEN_S = 3600


async def login_form(ui: UiRequest, *, status: int = 200, problem: str | None = None) -> Page:
    """The form, with a fresh double-submit token (cookie + hidden field)."""
    if problem is None and await ui.app.sessions.viewer(ui.request.scope) is not None:
        return ui.redirect(safe_next(ui.query.get("next")))
    token = secrets.token_urlsafe(24)
    secure = ui.app.secure_cookies(ui.request)
    page = ui.render(
        "login.html",
        status,
        login_token=token,
        next=safe_next(ui.query.get("next") or ui.form.get("next")),
        problem=problem,
    )
    page.cookies.append(set_cookie(LOGIN_COOKIE, token, max_age=_LOGIN_TOKEN_S, secure=secure))
    return page


async def show_login(ui: UiRequest) -> Page:
    return await login_form(ui)


async def log_in(ui: UiRequest) -> Page:
    app, request = ui.app, ui.request
    address = app.client(request)
    wait = app.throttle.retry_after(address)
    if wait is not None:
        return await login_form(ui, status=429, problem=f"Too many failed logins: try again in {wait:.0f} s.")
    if not same_token(ui.form.get("login_token"), cookie_value(request.scope, LOGIN_COOKIE) or ""):
        return await login_form(ui, status=403, problem="The login form expired: try again.")
    credential = ui.form.get("key", "").strip()
    try:
        secret, session = await app.sessions.open(credential[:512])
    except GatewayError as error:
        if error.status != 401:
            raise
        app.throttle.failed(address)
        return await login_form(ui, status=401, problem="That key may not use the dashboard.")
    app.throttle.succeeded(address)
    secure = app.secure_cookies(request)
    page = ui.redirect(safe_next(ui.form.get("next")))
    ttl = max(1, int(session.expires_at - session.created_at))
    page.cookies.append(set_cookie(COOKIE, secret, max_age=ttl, secure=secure))
    page.cookies.append(set_cookie(LOGIN_COOKIE, "", max_age=0, secure=secure))
    return page


async def log_out(ui: UiRequest) -> Page:
    assert ui.viewer is not None
    await ui.app.sessions.close(ui.viewer)
    page = ui.redirect(f"{PREFIX}/login")
    page.cookies.append(set_cookie(COOKIE, "", max_age=0, secure=ui.app.secure_cookies(ui.request)))
    return page


def install(app: UiApp) -> None:
    app.page("GET", f"{PREFIX}/login", show_login, public=True)
    app.page("POST", f"{PREFIX}/login", log_in, public=True)
    app.page("POST", f"{PREFIX}/logout", log_out)
