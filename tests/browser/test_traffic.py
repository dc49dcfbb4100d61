"""The overview's live refresh and the request log: traffic the test sends through the official SDK shows up
without a reload, and a failed-over request shows both attempts with their errors."""

from __future__ import annotations

import re
import time
from typing import Any

from tests.browser.conftest import SCREENSHOTS, Stack, open_logged, screenshot

LIVE_WITHIN_S = 5.0


def _tile(page: Any, metric: str) -> int:
    text = page.locator(f'.tile[data-metric="{metric}"] .value').inner_text()
    digits = re.sub(r"[^0-9]", "", text)
    assert digits, f"tile {metric} shows {text!r}"
    return int(digits)


def test_traffic_appears_on_the_overview_within_5_s_without_a_reload(admin: Any, stack: Stack) -> None:
    admin.goto("/ui/?range=15m")
    assert admin.locator("h1").inner_text() == "Overview"
    assert float(admin.locator("#main").get_attribute("data-refresh") or 0) > 0
    before = _tile(admin, "requests")
    admin.evaluate("window.__sameDocument = true")  # gone if the page were reloaded
    sent = 6
    stack.traffic(sent)
    done = time.monotonic()
    while (now := _tile(admin, "requests")) < before + sent:
        waited = time.monotonic() - done
        assert waited < LIVE_WITHIN_S, f"the requests tile still shows {now} (was {before}) after {waited:.1f} s"
        admin.wait_for_timeout(100)
    assert admin.evaluate("window.__sameDocument") is True
    assert admin.locator("#main").get_attribute("data-updated")  # ui.js swapped <main> in place
    assert admin.locator('table[data-by="model"] tr[data-name="chat"]').count() == 1
    assert admin.locator('table[data-by="deployment"] tr[data-name="primary"]').count() == 1
    if SCREENSHOTS:  # a fuller picture for docs/ui/overview.png
        stack.traffic(40)
        stack.traffic(8, "flaky")
        admin.wait_for_timeout(2500)
    screenshot(admin, "overview")


def test_a_failed_over_request_shows_both_attempts_with_their_errors(admin: Any, stack: Stack) -> None:
    request_id = stack.chat("flaky", "please fail over")
    row = open_logged(admin, "/ui/requests?model=flaky", f'table#requests tr[data-request-id="{request_id}"]')
    assert admin.locator("h1").inner_text() == "Requests"
    assert row.count() == 1
    assert "backup" in row.inner_text()
    screenshot(admin, "requests")
    row.locator(f'a[href="/ui/requests/{request_id}"]').click()
    admin.wait_for_url(f"**/ui/requests/{request_id}")
    assert request_id in admin.locator("h1").inner_text()
    attempts = admin.locator("table#attempts tr[data-attempt]")
    assert attempts.count() == 2
    first, second = attempts.nth(0), attempts.nth(1)
    assert "broken" in first.locator("td").nth(1).inner_text()
    assert first.locator(".badge").inner_text() != "ok"
    assert first.locator("td").nth(3).inner_text() == "500"
    assert first.locator("td.error-text").inner_text().strip(), "the failed attempt's error text is missing"
    assert "backup" in second.locator("td").nth(1).inner_text()
    assert second.locator(".badge").inner_text() == "ok"
    # the waterfall: one bar per attempt, the failed one marked as an error
    waterfall = admin.locator('svg[aria-label="attempts"]')
    assert waterfall.locator('rect[class^="attempt-"]').count() == 2
    assert waterfall.locator("rect.attempt-error").count() == 1
    # the routing explanation names both candidates
    assert admin.locator('table#candidates tr[data-candidate="broken"]').count() == 1
    assert admin.locator('table#candidates tr[data-candidate="backup"]').count() == 1
    screenshot(admin, "request")
