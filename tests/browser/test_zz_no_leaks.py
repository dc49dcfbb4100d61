"""Last in the session (pytest runs this directory's files in name order): every page once more, then the
checks over everything the browser saw in the whole session — no secret in any HTML, no request that
tried to leave loopback, no Content-Security-Policy violation (a page with an inline script or style)."""

from __future__ import annotations

from typing import Any

from tests.browser.conftest import PROVIDER_KEYS, Stack, Watch

PAGES = ("/ui/", "/ui/requests", "/ui/keys", "/ui/deployments", "/ui/runs", "/ui/whatif")


def test_no_secret_in_any_page_and_nothing_left_loopback(admin: Any, stack: Stack, watch: Watch) -> None:
    for path in PAGES:
        admin.goto(path)
    admin.goto(f"/ui/runs/{stack.run_id}")
    for selector in ("table#requests tr[data-request-id] a", "table#keys tr[data-key-id] a"):
        link = admin.goto(PAGES[1] if "requests" in selector else PAGES[2]) and admin.locator(selector).first
        if link.count():
            link.click()
            admin.wait_for_load_state()
    admin.wait_for_timeout(300)  # the last answers' bodies are read
    visited = {url.split("?")[0] for url, _ in watch.html}
    assert len(watch.html) >= len(PAGES) + 1 and len(visited) >= len(PAGES), visited
    secrets = (stack.master, *PROVIDER_KEYS)
    leaks = [(url, secret[:12]) for url, text in watch.html for secret in secrets if secret in text]
    assert leaks == []
    assert watch.outside == [], watch.outside
    violations = [entry for entry in watch.console if "Content Security Policy" in entry[1]]
    assert violations == []
