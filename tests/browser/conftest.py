"""The dashboard in a real browser: Debian's Chromium driven headless by Playwright (sync API) against a real
`modelyard serve` process over the provider simulator.

One server and one browser for this directory (package-scoped: in a whole-suite run they stop after its last
test); a fresh browser context (cookies) per test. Every request the browser makes goes through a route
handler that lets only loopback through: anything else is aborted and recorded, and the run fails at its end
if one was seen. Every HTML answer the browser received is kept, so the last test can look for secrets in all
of them. Screenshots for docs/ui/ are taken only with MODELYARD_SCREENSHOTS=1 (a normal run leaves the tree
clean).

Without /usr/bin/chromium the tests are skipped, unless MODELYARD_REQUIRE_BROWSER=1 (scripts/test, CI),
where a missing browser is a failure.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from modelyard.sim.server import SimServer
from modelyard.testing.process import GatewayProcess

ROOT = Path(__file__).resolve().parents[2]
DOCS_UI = ROOT / "docs" / "ui"
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = os.environ.get("MODELYARD_SCREENSHOTS") == "1"
REQUIRE = os.environ.get("MODELYARD_REQUIRE_BROWSER") == "1"
VIEWPORT = {"width": 1280, "height": 800}
RUN_ID = "r-browser"
WHATIF_FILE = "labelled.jsonl"
PROVIDER_KEYS = ("sk-test-primary-secret", "sk-test-backup-secret", "sk-test-broken-secret")
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
#: Chromium's own background traffic off (the route handler only sees pages' requests), a dead proxy for
#: anything that is not loopback (loopback always bypasses a proxy) and no name resolution but localhost.
BROWSER_ARGS = [
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-breakpad",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
    "--proxy-server=http://127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
]


def _browser_available() -> None:
    if CHROMIUM.exists():
        return
    reason = f"{CHROMIUM} is missing (apt-get install chromium; scripts/test installs it when run as root)"
    if REQUIRE:
        pytest.fail(f"MODELYARD_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


# ---------------------------------------------------------------------------------------------- the watch


@dataclass
class Watch:
    """What the browser did over the whole session: requests that would have left loopback, every HTML
    answer (url, text) and its headers, console errors and page errors (url, text)."""

    outside: list[str] = field(default_factory=list)
    html: list[tuple[str, str]] = field(default_factory=list)
    headers: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    console: list[tuple[str, str]] = field(default_factory=list)

    def route(self, route: Any) -> None:
        url = route.request.url
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob", "about") or parts.hostname in LOOPBACK:
            route.continue_()
            return
        self.outside.append(url)
        route.abort("blockedbyclient")

    def response(self, response: Any) -> None:
        kind = (response.headers.get("content-type") or "").split(";")[0].strip()
        if kind != "text/html" or not 200 <= response.status < 300:
            return
        self.headers.append((response.url, response.headers))
        try:
            self.html.append((response.url, response.text()))
        except Exception as error:  # the page went away before its body was read
            self.html.append((response.url, f"<unreadable: {error}>"))

    def on_console(self, page: Any, message: Any) -> None:
        if message.type in ("error", "warning"):
            self.console.append((page.url, f"{message.type}: {message.text}"))


# ---------------------------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    """The server under test and what was made for it."""

    url: str
    master: str
    sim: SimServer
    gateway: GatewayProcess
    workdir: Path
    run_id: str
    whatif_file: str

    def client(self, key: str | None = None) -> openai.OpenAI:
        """The official SDK against the gateway (no retries: a test sees every answer)."""
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or self.master, max_retries=0, timeout=30)

    def chat(self, model: str = "chat", prompt: str = "hello", key: str | None = None) -> str:
        """One completion through the SDK; its request id (x-request-id, the spend row's id)."""
        with self.client(key) as client:
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": prompt}], max_tokens=16
            )
            raw.parse()
            return str(raw.headers["x-request-id"])

    def admin_post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """The admin JSON API with the master key (setting things up without the pages)."""
        answer = httpx.post(self.url + path, json=body, headers={"authorization": f"Bearer {self.master}"})
        assert answer.status_code < 300, answer.text
        data: dict[str, Any] = answer.json()
        return data

    def traffic(self, n: int, model: str = "chat") -> list[str]:
        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(lambda i: self.chat(model, f"traffic {i}"), range(n)))


def gateway_yaml(sim_url: str, workdir: Path, whatif: Path) -> str:
    """Two models over the simulator: `chat` (primary, backup: both healthy) and `flaky`, whose first
    deployment always answers 500 (the simulator's `x-sim-fault` header, sent by that deployment only), so
    each of its requests fails over to `backup`."""
    base = f'api_base: "{sim_url}/v1", timeouts: {{connect: 2, first_token: 10, total: 20}}'
    return (
        "deployments:\n"
        f"  - {{name: primary, provider: openai, model: sim-small, {base}, api_key: {PROVIDER_KEYS[0]},"
        " price: {input: 0.1, output: 0.4}}\n"
        f"  - {{name: backup, provider: openai, model: sim-medium, {base}, api_key: {PROVIDER_KEYS[1]},"
        " price: {input: 0.8, output: 2.4}, limits: {rpm: 600, max_concurrency: 8}}\n"
        f"  - {{name: broken, provider: openai, model: sim-small, {base}, api_key: {PROVIDER_KEYS[2]},"
        " price: {input: 0.1, output: 0.4}, headers: {x-sim-fault: server_error}}\n"
        "models:\n"
        "  chat: {strategy: priority, candidates: [primary, backup]}\n"
        "  flaky: {strategy: priority, candidates: [broken, backup]}\n"
        "routing: {retries: 0, breaker: {failures: 1000}}\n"
        f'spend: {{store: "{workdir / "spend.db"}", flush_interval_s: 0.2, log_content: true}}\n'
        "ui:\n"
        "  explain_sample: 1.0\n"
        "  refresh_s: 1\n"
        f'  runs_store: "{workdir / "runs.db"}"\n'
        f'  whatif_data: ["{whatif}"]\n'
    )


def _start_workflow(workdir: Path) -> subprocess.Popen[bytes]:
    """A small workflow (plan → fan-out search → analyze) on the scripted backend into the run store the
    Runs page reads; started while the gateway starts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    env |= {"MODELYARD_WORKFLOW_BACKEND": "scripted", "MODELYARD_SCRIPTED_DELAY_S": "0.05"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelyard.cli.workflows",
            "run",
            str(ROOT / "examples" / "workflows" / "research.yaml"),
            "--store",
            str(workdir / "runs.db"),
            "--run-id",
            RUN_ID,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=workdir,
    )


def _whatif_data(workdir: Path) -> Path:
    """A small labelled file for the What-if page: each prompt answered by both simulator models, with a
    score and a cost (the replay's recorded answers)."""
    folder = workdir / "whatif"
    folder.mkdir()
    lines = []
    for i in range(8):
        prompt = "a short question" if i % 2 else "a much longer question that keeps going on and on about routing"
        prompt += f" #{i}"
        lines.append({"prompt": prompt, "model": "sim-small", "score": float(i % 3 != 0), "cost": 0.0001 * (i + 1)})
        lines.append({"prompt": prompt, "model": "sim-medium", "score": 1.0, "cost": 0.001 * (i + 1)})
    (folder / WHATIF_FILE).write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    _browser_available()
    workdir = tmp_path_factory.mktemp("browser")
    master = "sk-master-" + secrets.token_urlsafe(18)
    workflow = _start_workflow(workdir)
    whatif = _whatif_data(workdir)
    with SimServer(seed=7) as sim:
        config = workdir / "gateway.yaml"
        config.write_text(gateway_yaml(sim.url, workdir, whatif))
        env = {"MODELYARD_MASTER_KEY": master}
        with GatewayProcess(config, env=env) as gateway:
            _, problem = workflow.communicate(timeout=60)
            assert workflow.returncode == 0, problem.decode(errors="replace")
            yield Stack(gateway.url, master, sim, gateway, workdir, RUN_ID, WHATIF_FILE)


# ---------------------------------------------------------------------------------------------- the browser


@pytest.fixture(scope="package")
def watch() -> Watch:
    return Watch()


@pytest.fixture(scope="package")
def browser(stack: Stack, watch: Watch) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    args = [*BROWSER_ARGS, *(["--no-sandbox"] if os.geteuid() == 0 else [])]
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        yield chromium
        chromium.close()
    assert watch.outside == [], f"the browser tried to leave loopback: {watch.outside}"


@pytest.fixture
def context(browser: Any, stack: Stack, watch: Watch) -> Iterator[Any]:
    ctx = browser.new_context(viewport=VIEWPORT, base_url=stack.url, service_workers="block")
    ctx.route("**/*", watch.route)
    ctx.on("response", watch.response)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: Any, watch: Watch) -> Iterator[Any]:
    tab = context.new_page()
    tab.on("console", lambda message: watch.on_console(tab, message))
    tab.on("pageerror", lambda error: watch.console.append((tab.url, f"pageerror: {error}")))
    yield tab


@pytest.fixture
def admin(page: Any, stack: Stack) -> Any:
    """A page logged in with the master key."""
    login(page, stack.master)
    return page


# ---------------------------------------------------------------------------------------------- helpers


def login(page: Any, key: str, *, path: str = "/ui/login") -> Any:
    """Log in through the form; the answer to the form's POST (its Set-Cookie, its status)."""
    page.goto(path)
    page.fill("#key", key)
    with page.expect_response(lambda r: r.request.method == "POST" and urlsplit(r.url).path == "/ui/login") as posted:
        page.click("form[action='/ui/login'] button[type=submit]")
    page.wait_for_load_state()
    return posted.value


def open_logged(page: Any, path: str, selector: str, *, within_s: float = 5.0) -> Any:
    """Open `path` until `selector` is on it: the spend log is written in the background (a page flushes it
    at most once a second), so a request that just ended may take a moment to show."""
    deadline = time.monotonic() + within_s
    while True:
        page.goto(path)
        found = page.locator(selector)
        if found.count() or time.monotonic() > deadline:
            assert found.count(), f"{selector} not on {path} within {within_s} s"
            return found
        page.wait_for_timeout(250)


def screenshot(page: Any, name: str, *, blank: Sequence[str] = ()) -> None:
    """docs/ui/<name>.png, the full page at 1280x800, with the elements `blank` selects painted over; only
    with MODELYARD_SCREENSHOTS=1."""
    if not SCREENSHOTS:
        return
    DOCS_UI.mkdir(parents=True, exist_ok=True)
    masks = [page.locator(selector) for selector in blank]
    page.screenshot(path=str(DOCS_UI / f"{name}.png"), full_page=True, mask=masks, mask_color="#d0d4da")
