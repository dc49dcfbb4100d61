"""Hostile text is shown as text: a prompt and a key name carrying script are rendered literally on every
page that shows them, and no script runs (each payload would set window.__xss)."""

from __future__ import annotations

from typing import Any

from tests.browser.conftest import Stack, Watch, open_logged

PROMPT = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'
KEY_NAME = "<img src=x onerror=window.__xss=3>"


def _no_script_ran(page: Any) -> None:
    page.wait_for_timeout(200)  # an injected <img src=x> would have failed to load and fired by now
    assert page.evaluate("typeof window.__xss") == "undefined", page.url
    assert page.locator("#main img").count() == 0, page.url  # the payload's <img> is not an element


def test_a_hostile_prompt_and_key_name_are_shown_as_text(admin: Any, stack: Stack, watch: Watch) -> None:
    made = stack.admin_post("/admin/keys", {"name": KEY_NAME})
    request_id = stack.chat("chat", PROMPT, key=made["key"])
    open_logged(admin, f"/ui/requests/{request_id}", "pre#content")  # (a 404 while the log is written)
    console_before = len(watch.console)
    admin.reload()
    _no_script_ran(admin)
    assert PROMPT in admin.locator("pre#content").inner_text()
    assert KEY_NAME in admin.locator("dl#facts").inner_text()

    admin.goto(f"/ui/requests?key={made['id']}")
    _no_script_ran(admin)
    assert KEY_NAME in admin.locator(f'tr[data-request-id="{request_id}"]').inner_text()

    admin.goto("/ui/keys")
    _no_script_ran(admin)
    assert KEY_NAME in admin.locator(f'tr[data-key-id="{made["id"]}"]').inner_text()

    admin.goto(f"/ui/keys/{made['id']}")
    _no_script_ran(admin)
    assert admin.locator("h1").inner_text() == KEY_NAME

    admin.goto("/ui/?range=15m")
    _no_script_ran(admin)
    assert KEY_NAME in admin.locator('table[data-by="key"]').inner_text()

    errors = watch.console[console_before:]
    assert errors == [], errors  # not even a blocked inline script (a CSP report) or a failed <img src=x>
