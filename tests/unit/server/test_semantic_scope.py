"""server/semantic_scope.py: the semantic cache's partition ignores only the compared text and delivery fields."""

from __future__ import annotations

from typing import Any

from modelyard.server.semantic_scope import semantic_namespace

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def body(last: Any, **extra: Any) -> dict[str, Any]:
    messages = [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "earlier question"},
        {"role": "assistant", "content": "earlier answer"},
        {"role": "user", "content": last},
    ]
    return {"model": "faq", "messages": messages, **extra}


def ns(raw: dict[str, Any], key: str | None = "key_1") -> str:
    return semantic_namespace("faq", key, raw)


def test_the_compared_text_and_delivery_fields_do_not_change_the_partition() -> None:
    base = ns(body("How do I reset my password?"))
    assert ns(body("how do i reset my password")) == base
    assert ns(body("How do I reset my password?", stream=False, user="u-9", service_tier="flex")) == base
    assert ns(body([{"type": "text", "text": "reset it?"}])) == ns(body([{"type": "text", "text": "other"}]))


def test_everything_else_that_can_change_the_answer_does() -> None:
    base = ns(body("q"))
    other_system = body("q")
    other_system["messages"][0]["content"] = "Answer in German."
    other_turns = body("q")
    other_turns["messages"][1]["content"] = "another earlier question"
    variants = [
        ns(other_system),
        ns(other_turns),
        ns(body([{"type": "text", "text": "q"}, IMAGE])),
        ns(body("q", n=2)),
        ns(body("q", response_format={"type": "json_object"})),
        ns(body("q", tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])),
        ns(body("q", temperature=1.5)),
        ns(body("q"), key="key_2"),
        ns(body("q"), key=None),
    ]
    assert base not in variants and len(set(variants)) == len(variants)


def test_only_the_last_user_turn_is_the_compared_one() -> None:
    raw = body("q")
    raw["messages"].append({"role": "assistant", "content": "a later assistant turn"})
    changed = body("q")
    changed["messages"][1]["content"] = "changed"
    changed["messages"].append({"role": "assistant", "content": "a later assistant turn"})
    assert ns(raw) != ns(changed)
    assert ns({"model": "faq", "messages": "not a list"}) != ns(raw)
