"""The dashboard's routes and the one wrapper every page goes through.

The wrapper, in order: the dashboard is on and the gateway has a master key (else 404 / 403); the static
files and the login page are public; every other page needs a session (else 303 to the login page, the
page asked for kept in `next`); every POST is refused when a browser marks it cross-site, and needs the
session's CSRF token in its form (the login form: its own double-submit token); a page's GatewayError
becomes an error page in the same layout, never a traceback; every answer carries the security headers
(security.py) and a Server-Timing header with the time the page took.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote

import jinja2

from modelyard.schema.errors import GatewayError
from modelyard.server.admin import admin_gate
from modelyard.server.http import Headers, Request
from modelyard.server.ui.render import environment
from modelyard.server.ui.security import (
    LoginThrottle,
    client_address,
    cross_site,
    is_https,
    same_token,
    trusted_networks,
    with_security,
)
from modelyard.server.ui.sessions import UiSessions, Viewer

if TYPE_CHECKING:
    from modelyard.config.model import UiSettings
    from modelyard.server.access import Access
    from modelyard.server.app import Gateway
    from modelyard.server.context import ErrorWriter, Handler, RequestContext

log = logging.getLogger("modelyard.ui")

PREFIX = "/ui"
_FORM_LIMIT = 64 * 1024
_MAX_FIELDS = 200
_STATIC_TYPES = {".css": b"text/css; charset=utf-8", ".js": b"text/javascript; charset=utf-8", ".svg": b"image/svg+xml"}
#: The sections of the navigation bar: (path, title).
NAVIGATION = (
    ("/ui/", "Overview"),
    ("/ui/requests", "Requests"),
    ("/ui/keys", "Keys"),
    ("/ui/deployments", "Deployments"),
    ("/ui/runs", "Runs"),
    ("/ui/whatif", "What-if"),
)


@dataclass(slots=True)
class Page:
    """What a page function answers: a template and its values, or a redirect; cookies to set."""

    template: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    status: int = 200
    location: str | None = None
    cookies: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class UiRequest:
    """One dashboard request as a page function sees it."""

    gw: Gateway
    request: Request
    ctx: RequestContext
    app: UiApp
    viewer: Viewer | None
    form: dict[str, str] = field(default_factory=dict)
    #: The path parameter of a prefix route (`/ui/keys/{id}` → the id), '' for exact routes.
    param: str = ""

    @property
    def query(self) -> dict[str, str]:
        return self.request.query

    def render(self, template: str, status: int = 200, **values: Any) -> Page:
        return Page(template, values, status)

    @staticmethod
    def redirect(location: str) -> Page:
        return Page(location=location, status=303)


PageFn = Callable[[UiRequest], Awaitable[Page]]


def safe_next(target: str | None) -> str:
    """Where to go after login: a dashboard path only (never another site: no `//`, no backslash)."""
    if not target or not target.startswith(PREFIX + "/") or "//" in target or "\\" in target:
        return PREFIX + "/"
    if any(not "!" <= ch <= "~" for ch in target):  # CR/LF (a header injection), spaces, anything not ASCII
        return PREFIX + "/"
    return target[:512]


class UiApp:
    """The dashboard of one gateway process (a reload keeps it; its pages read the current generation)."""

    def __init__(self, settings: UiSettings, access: Access) -> None:
        self.settings = settings
        self.access = access
        self.sessions = UiSessions(access, settings.session_ttl_s)
        self.throttle = LoginThrottle(settings.max_failed_logins)
        self.proxies = trusted_networks(settings.trusted_proxies)
        self.templates: jinja2.Environment = environment()
        self._exact: dict[tuple[str, str], tuple[PageFn, bool]] = {}
        self._prefixed: list[tuple[str, str, PageFn]] = []
        self._static = _load_static()
        self._handlers: dict[tuple[str, str], Handler] = {}

    # ------------------------------------------------------------------ registration

    def page(self, method: str, path: str, fn: PageFn, *, public: bool = False) -> None:
        self._exact[(method, path)] = (fn, public)

    def prefixed(self, method: str, prefix: str, fn: PageFn) -> None:
        """A page under `prefix` + one path segment (its `param`), e.g. `/ui/keys/` + an id."""
        self._prefixed.append((method, prefix, fn))

    def routes(self, error_writer: ErrorWriter) -> dict[tuple[str, str], tuple[Handler, ErrorWriter]]:
        out: dict[tuple[str, str], tuple[Handler, ErrorWriter]] = {}
        for (method, path), (fn, public) in self._exact.items():
            out[(method, path)] = (self._handler(fn, public, ""), error_writer)
        out[("GET", PREFIX)] = (self._redirect_home, error_writer)
        return out

    def match(self, method: str, path: str, error_writer: ErrorWriter) -> tuple[Handler, ErrorWriter] | None:
        if method == "GET" and path.startswith(PREFIX + "/static/"):
            return self._serve_static, error_writer
        for route_method, prefix, fn in self._prefixed:
            if method == route_method and path.startswith(prefix):
                param = path[len(prefix) :]
                if param and "/" not in param and len(param) <= 128:
                    return self._handler(fn, False, param), error_writer
        if path == PREFIX or path.startswith(PREFIX + "/"):
            # Any other dashboard path or method: the dashboard's own 404/405 page (with its headers), not
            # the API's JSON error.
            return self._handler(self._unknown, True, ""), error_writer
        return None

    async def _unknown(self, ui: UiRequest) -> Page:
        path = ui.request.path
        known = any(p == path for _, p in self._exact) or path == PREFIX
        if known:
            raise GatewayError(405, f"{ui.request.method} is not allowed on {path[:200]}")
        raise GatewayError(404, f"no dashboard page at {path[:200]}")

    def _handler(self, fn: PageFn, public: bool, param: str) -> Handler:
        async def handle(gw: Gateway, request: Request, ctx: RequestContext) -> None:
            await self._run(gw, request, ctx, fn, public, param)

        return handle

    # ------------------------------------------------------------------ the wrapper

    async def _run(
        self, gw: Gateway, request: Request, ctx: RequestContext, fn: PageFn, public: bool, param: str
    ) -> None:
        started = time.perf_counter()
        ui = UiRequest(gw, request, ctx, self, None, param=param)
        try:
            page = await self._page(ui, fn, public)
        except GatewayError as error:
            if error.status == 401 and not public:
                page = UiRequest.redirect(f"{PREFIX}/login?next={quote(safe_next(request.path), safe='/')}")
            else:
                page = Page("error.html", {"status": error.status, "message": error.message}, error.status)
        except Exception:
            log.exception("dashboard page %s failed (request %s)", request.path[:256], ctx.request_id)
            message = f"Internal error (request id {ctx.request_id})"
            page = Page("error.html", {"status": 500, "message": message}, 500)
        await self._send(ui, page, started)

    async def _page(self, ui: UiRequest, fn: PageFn, public: bool) -> Page:
        gw, request = ui.gw, ui.request
        if not gw.config.ui.enabled:
            raise GatewayError(404, "the dashboard is off on this gateway (ui: false)")
        admin_gate(gw)
        if not public:
            ui.viewer = await self.sessions.viewer(request.scope)
            if ui.viewer is None:
                raise GatewayError(401, "log in first")
        if request.method == "POST":
            if cross_site(request.scope):
                raise GatewayError(403, "cross-site form posts are refused")
            ui.form = await read_form(request)
            if not public:
                assert ui.viewer is not None
                if not same_token(ui.form.get("csrf"), ui.viewer.csrf):
                    raise GatewayError(403, "this form's CSRF token is missing or wrong: reload the page and try again")
        return await fn(ui)

    async def _send(self, ui: UiRequest, page: Page, started: float) -> None:
        headers: Headers = with_security([])
        headers.extend(page.cookies)
        if page.location is not None:
            location = page.location if page.location.isascii() and page.location.isprintable() else PREFIX + "/"
            headers.append((b"location", location.encode()))
            body = b""
        else:
            template = self.templates.get_template(page.template or "error.html")
            values = {**self.common(ui), **page.values}
            body = template.render(values).encode()
            headers.append((b"content-type", b"text/html; charset=utf-8"))
        elapsed = (time.perf_counter() - started) * 1000
        headers.append((b"server-timing", f"app;dur={elapsed:.1f}".encode()))
        await ui.request.respond(page.status, body, headers)

    def common(self, ui: UiRequest) -> dict[str, Any]:
        """Values every template may use (the layout's)."""
        viewer = ui.viewer
        return {
            "viewer": viewer,
            "csrf": viewer.csrf if viewer is not None else "",
            "navigation": NAVIGATION,
            "path": ui.request.path,
            "refresh_s": self.settings.refresh_s,
        }

    def secure_cookies(self, request: Request) -> bool:
        return is_https(request.scope, self.proxies)

    def client(self, request: Request) -> str:
        return client_address(request.scope, self.proxies)

    # ------------------------------------------------------------------ plain routes

    async def _redirect_home(self, gw: Gateway, request: Request, ctx: RequestContext) -> None:
        await request.respond(303, b"", with_security([(b"location", (PREFIX + "/").encode())]))

    async def _serve_static(self, gw: Gateway, request: Request, ctx: RequestContext) -> None:
        name = request.path[len(PREFIX + "/static/") :]
        asset = self._static.get(name)
        if asset is None or not gw.config.ui.enabled:
            await request.respond(404, b"not found", with_security([(b"content-type", b"text/plain")]))
            return
        body, kind, etag = asset
        headers = with_security([(b"content-type", kind), (b"etag", etag)])
        headers = [(k, v) for k, v in headers if k != b"cache-control"]
        headers.append((b"cache-control", b"public, max-age=3600"))
        if request.header(b"if-none-match") == etag.decode():
            await request.respond(304, b"", headers)
            return
        await request.respond(200, body, headers)


async def read_form(request: Request) -> dict[str, str]:
    """A urlencoded form body (bounded: 64 kB, 200 fields); anything else is a 415."""
    kind = (request.header(b"content-type") or "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise GatewayError(415, "dashboard forms are sent as application/x-www-form-urlencoded")
    raw = (await request.body(_FORM_LIMIT)).decode("utf-8", "replace")
    try:
        pairs = parse_qsl(raw, keep_blank_values=True, max_num_fields=_MAX_FIELDS)
    except ValueError:
        raise GatewayError(400, "too many form fields") from None
    return dict(pairs)


def _load_static() -> dict[str, tuple[bytes, bytes, bytes]]:
    """The shipped assets, read once: name → (body, content type, ETag)."""
    out: dict[str, tuple[bytes, bytes, bytes]] = {}
    folder = resources.files("modelyard.server.ui").joinpath("static")
    for item in folder.iterdir():
        suffix = "." + item.name.rsplit(".", 1)[-1]
        kind = _STATIC_TYPES.get(suffix)
        if kind is None or not item.is_file():
            continue
        body = item.read_bytes()
        etag = f'"{hashlib.sha256(body).hexdigest()[:16]}"'.encode()
        out[item.name] = (body, kind, etag)
    return out
