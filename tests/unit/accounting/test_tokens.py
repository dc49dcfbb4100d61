"""The one token counter: framing, role, text and images, the same from canonical Messages or from dicts."""

from __future__ import annotations

from modelyard.accounting.tokens import count_message_dicts, count_messages, count_text, count_value, filler
from modelyard.schema.chat import ChatRequest, SystemMessage, UserMessage


def test_each_message_costs_its_framing_and_its_role() -> None:
    # 3 of reply priming; per message 3 of framing + 1 for the role name ("system", "user") + the text.
    messages = [SystemMessage(content="hi"), UserMessage(content="hello there")]
    assert count_text("hi") == 1 and count_text("hello there") == 2
    assert count_messages(messages) == 3 + (3 + 1 + 1) + (3 + 1 + 2)


def test_images_are_counted_by_detail() -> None:
    low = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,", "detail": "low"}}]}]
    auto = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]
    bare = [{"role": "user", "content": []}]
    assert count_message_dicts(low) - count_message_dicts(bare) == 85
    assert count_message_dicts(auto) - count_message_dicts(bare) == 255


def test_dicts_count_exactly_like_the_gateway_request() -> None:
    raw = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name three rivers."}]
    req = ChatRequest(
        model="m", messages=[SystemMessage(content="Be brief."), UserMessage(content="Name three rivers.")]
    )
    assert count_message_dicts(raw) == count_messages(req.messages)


def test_values_and_filler() -> None:
    assert count_value(None) == 0
    assert count_value("hello there") == 2
    assert count_value({"a": 1}) == count_text('{"a": 1}')
    assert count_text(filler(57)) == 57
