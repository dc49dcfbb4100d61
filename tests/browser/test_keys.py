"""Keys: create one on the page, use it from the official SDK, revoke it on the page, the SDK gets 401."""

from __future__ import annotations

import secrets
from typing import Any

import openai
import pytest

from tests.browser.conftest import Stack, screenshot


def test_create_use_and_revoke_a_key_from_the_page(admin: Any, stack: Stack) -> None:
    name = "browser-" + secrets.token_hex(3)
    admin.goto("/ui/keys")
    assert admin.locator("h1").inner_text() == "Keys"
    form = admin.locator("form#create-key")
    form.locator("input[name=name]").fill(name)
    form.locator("input[name=budget_usd]").fill("5")
    form.locator("input[name=rpm]").fill("600")
    form.locator("button[type=submit]").click()
    admin.wait_for_load_state()
    key = admin.locator("code#new-key").inner_text().strip()
    assert len(key) >= 20 and " " not in key
    screenshot(admin, "keys", blank=["code#new-key"])

    assert stack.chat("chat", "hello from a key made on the page", key=key)  # a 200, or the SDK raises

    admin.goto("/ui/keys")  # shown once: the page never has it again
    assert admin.locator("code#new-key").count() == 0
    assert key not in admin.content()
    row = admin.locator("table#keys tr[data-key-id]", has=admin.get_by_role("link", name=name, exact=True))
    assert row.count() == 1
    key_id = row.get_attribute("data-key-id")
    assert "active" in row.locator(".badge").first.inner_text()

    admin.goto(f"/ui/keys/{key_id}")
    assert admin.locator("h1").inner_text() == name
    assert admin.locator("form#edit-key").count() == 1
    screenshot(admin, "key")

    admin.goto("/ui/keys")
    admin.once("dialog", lambda dialog: dialog.accept())  # data-confirm="Revoke <name>?"
    row.locator("form.revoke button[type=submit]").click()
    admin.wait_for_load_state()
    with pytest.raises(openai.AuthenticationError):
        stack.chat("chat", "after the revocation", key=key)
    admin.goto("/ui/keys?all=1")
    assert "revoked" in admin.locator(f'tr[data-key-id="{key_id}"] .badge').first.inner_text()


def test_cancelling_the_confirmation_revokes_nothing(admin: Any, stack: Stack) -> None:
    made = stack.admin_post("/admin/keys", {"name": "kept-" + secrets.token_hex(3)})
    admin.goto("/ui/keys")
    row = admin.locator(f'tr[data-key-id="{made["id"]}"]')
    admin.once("dialog", lambda dialog: dialog.dismiss())
    row.locator("form.revoke button[type=submit]").click()
    admin.wait_for_timeout(300)
    assert stack.chat("chat", "still allowed", key=made["key"])
