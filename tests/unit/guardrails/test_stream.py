"""StreamGuard: a value split across feeds at any offsets is redacted before any of it is released, the
streamed result equals the whole-text result, and only a short tail is held back."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from modelyard.guardrails import StreamGuard, check_output
from modelyard.schema.guardrails import PII_KINDS, SECRET_KINDS

from .helpers import PII_SAMPLES, SECRET_SAMPLES, guards

REDACT = guards(
    {"check": "pii", "action": "redact"},
    {"check": "secrets", "action": "redact"},
    {"check": "keywords", "words": ["Project Falcon"], "action": "redact"},
)
VALUES = [PII_SAMPLES[k] for k in PII_KINDS] + [SECRET_SAMPLES[k] for k in SECRET_KINDS if k != "private_key"]


def stream(guard: StreamGuard, pieces: list[str]) -> tuple[str, list[str]]:
    released = [guard.feed(p) for p in pieces]
    released.append(guard.finish())
    return "".join(released), released


def split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    return [text[a:b] for a, b in pairwise(points)]


@settings(max_examples=300, deadline=None)
@given(
    value=st.sampled_from(VALUES),
    before=st.sampled_from(["", "Sure: ", "x ", "Details (", "\n"]),
    after=st.sampled_from(["", ".", " and more text follows here", ")\n", " ok"]),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=40),
    min_step=st.sampled_from([1, 5, 32]),
)
def test_a_value_split_anywhere_is_never_released_unredacted(
    value: str, before: str, after: str, cuts: list[int], min_step: int
) -> None:
    text = before + value + after
    guard = StreamGuard(REDACT, min_step=min_step)
    out, released = stream(guard, split(text, cuts))
    whole = check_output(REDACT, text, finish_reason="stop").text
    assert out == whole
    assert value not in out
    # no prefix of the value longer than its first few characters ever went out before the redaction
    sent = ""
    for piece in released:
        sent += piece
        assert value not in sent
    assert sum(f.spans for f in guard.findings) == 1


def test_every_offset_one_character_at_a_time() -> None:
    for value in VALUES:
        text = f"A: {value} done"
        out, _ = stream(StreamGuard(REDACT, min_step=1), list(text))
        assert value not in out and out == check_output(REDACT, text, finish_reason="stop").text


def test_private_key_is_held_from_its_begin_line_until_its_end_line() -> None:
    key = SECRET_SAMPLES["private_key"]
    guard = StreamGuard(REDACT, min_step=1)
    text = "here:\n" + key + "\nbye"
    released = [guard.feed(ch) for ch in text]
    sent = "".join(released)
    assert "MIIE" not in sent and "-----BEGIN" not in sent
    assert sent + guard.finish() == "here:\n[private_key]\nbye"


def test_prose_is_released_with_at_most_its_last_word_held() -> None:
    guard = StreamGuard(REDACT)
    out = guard.feed("The answer to your question is that the sky is blue because of Rayleigh scattering. ")
    assert out.startswith("The answer to your question is that the sky is blue because of Rayleigh")
    assert guard.pending <= len("scattering. ")


def test_block_stops_the_stream_before_the_value() -> None:
    g = guards({"check": "secrets", "action": "block"})
    guard = StreamGuard(g)
    key = SECRET_SAMPLES["openai"]
    tail = " now and then some more prose, long enough to pass every recogniser's window of held text. " * 2
    out = "".join(guard.feed(ch) for ch in f"use {key}{tail}")
    assert key[:8] not in out and out.startswith("use ")
    assert guard.blocked is not None and guard.blocked.kinds == ("openai",)
    assert guard.feed("more") == "" and guard.finish() == ""


def test_findings_are_merged_per_check() -> None:
    guard = StreamGuard(REDACT)
    stream(guard, ["mail a@b.io ", "and c@d.io ", "and 4111 1111 1111 1111."])
    pii = guard.findings[0]
    assert pii.spans == 3 and pii.kinds == ("email", "card") and pii.fired
    assert [f.label for f in guard.findings] == ["pii", "secrets", "keywords"]


def test_unbounded_regex_buffers_until_finish() -> None:
    g = guards({"check": "regex", "patterns": [r"start.*end"], "action": "redact"})
    guard = StreamGuard(g)
    assert guard.feed("start here ") == "" and guard.feed("and end.") == ""
    assert guard.finish() == "[regex]."


def test_no_span_checks_pass_through() -> None:
    guard = StreamGuard(guards({"check": "empty"}))
    assert guard.feed("abc") == "abc" and guard.finish() == ""


OVERLAPS = [
    "phone +44 20 7946 0958@office.ab_c then more text",
    "reach +1 415 555 0134.alice@example.com today",
    "card 4111 1111 1111 1111.x@example.com ok",
    "ssn 123-45-6789.x@example.com ok",
]


def test_a_pending_match_of_one_kind_never_releases_the_start_of_another() -> None:
    """A half-typed email (`0958@office.ab`) covered the end of a phone number; when the email stopped
    matching, the phone's start had already been sent (found by a stream fuzzer)."""
    redacting = guards({"check": "pii", "action": "redact", "replacement": "#"})
    blocking = guards({"check": "pii", "action": "block"})
    for text in OVERLAPS:
        whole = check_output(redacting, text, finish_reason="stop").text
        for step in (1, 2, 3):
            pieces = [text[i : i + step] for i in range(0, len(text), step)]
            sent, _ = stream(StreamGuard(redacting, min_step=1), pieces)
            assert sent == whole, (text, step, sent)
            guard = StreamGuard(blocking, min_step=1)
            released = "".join(guard.feed(p) for p in pieces) + guard.finish()
            assert guard.blocked is not None and not any(ch.isdigit() for ch in released), (text, released)


def test_a_disguised_card_is_held_and_redacted_in_a_stream() -> None:
    """Zero-width and full-width characters are inside the held tail too (a stream released `4111` first)."""
    full_width = str.maketrans({chr(c): chr(c + 0xFEE0) for c in range(0x21, 0x7F)})
    g = guards({"check": "pii", "action": "redact", "replacement": "#"})
    for card in ("4111\u200b1111\u200b1111\u200b1111", "4111 1111 1111 1111".translate(full_width)):
        text = f"Here: {card} - thanks"
        pieces = list(text)
        guard = StreamGuard(g, min_step=1)
        released = [guard.feed(p) for p in pieces]
        released.append(guard.finish())
        assert "".join(released) == "Here: # - thanks", repr(card)
