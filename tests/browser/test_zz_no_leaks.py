"""Last in the session (pytest runs this directory's files in name order): every page once more, then the
checks over everything the browser saw in the whole session — no secret in any HTML, no request that
tried to leave loopback, no Content-Security-Policy violation (a page with an inline script or style), the
framing rules on every page."""

from __future__ import annotations

from typing import Any

from tests.browser.conftest import PROVIDER_KEYS, Stack, Watch, open_logged

PAGES = ("/ui/", "/ui/requests", "/ui/keys", "/ui/deployments", "/ui/runs", "/ui/whatif")


def test_no_secret_in_any_page_and_nothing_left_loopback(admin: Any, stack: Stack, watch: Watch) -> None:
    for path in PAGES:
        admin.goto(path)
    admin.goto(f"/ui/runs/{stack.run_id}")
    stack.chat("flaky", "one more for the log")
    stack.admin_post("/admin/keys", {"name": "one-more-key"})
    for listing, link in (("/ui/requests", "table#requests tr[data-request-id] a"), ("/ui/keys", "table#keys a")):
        open_logged(admin, listing, link).first.click()  # a record's own page
        admin.wait_for_load_state()
    admin.wait_for_timeout(300)  # the last answers' bodies are read
    visited = {url.split("?")[0] for url, _ in watch.html}
    assert len(visited) >= len(PAGES) + 3, visited
    secrets = (stack.master, *PROVIDER_KEYS)
    leaks = [(url, secret[:12]) for url, text in watch.html for secret in secrets if secret in text]
    assert leaks == []
    assert watch.outside == [], watch.outside
    violations = [entry for entry in watch.console if "Content Security Policy" in entry[1]]
    assert violations == []
    # every page the browser got carried the framing and script rules, not only the ones checked one by one
    for url, headers in watch.headers:
        assert "frame-ancestors 'none'" in headers.get("content-security-policy", ""), url
        assert headers.get("x-frame-options") == "DENY", url
