"""The semantic cache's precision guard: near misses never hit, true paraphrases do.

The issue's own pairs run through a real cache with the real MiniLM at the default threshold; the rule
tests use the guard alone (no embedder: any differing content word refuses, so each rule is what refuses).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from modelyard.config.model import SemanticCacheSettings
from modelyard.routing.cache_guard import MAX_PROMPT_CHARS, PrecisionGuard, fingerprint, normalise
from modelyard.routing.semantic import SemanticCache

CONTEXT = "You are the support assistant of an online shop. Be polite and short. Customer message follows. "
#: The issue's near misses (with its measured MiniLM similarities) and more of the same kind.
NEAR_MISSES = {
    "order number (0.9949)": (
        CONTEXT + "I want a refund for order 9876, the item arrived broken.",
        CONTEXT + "I want a refund for order 1234, the item arrived broken.",
    ),
    "polarity (0.9589)": (
        "Classify the sentiment of this review as positive or negative: the food was terrible",
        "Classify the sentiment of this review as positive or negative: the food was excellent",
    ),
    "audience (0.9893)": (
        "Explain how a hash map works, step by step, for a beginner.",
        "Explain how a hash map works, step by step, for an expert.",
    ),
    "negation": ("Is it safe to mix bleach and ammonia?", "Is it not safe to mix bleach and ammonia?"),
    "contracted negation": ("Why does my code compile?", "Why doesn't my code compile?"),
    "quoted string": ('Translate "good morning" into French.', 'Translate "good evening" into French.'),
    "person": (
        CONTEXT + "Send the March invoice to John Smith.",
        CONTEXT + "Send the March invoice to Jane Smith.",
    ),
    "email": (
        "Draft a reply to anna@example.com about the delay.",
        "Draft a reply to bob@example.com about the delay.",
    ),
    "url": ("Summarise https://example.com/a for me.", "Summarise https://example.com/b for me."),
    "code": ("What does error E1234 mean in the billing API?", "What does error E1235 mean in the billing API?"),
    "identifier": ("Write a function named parse_date in Python.", "Write a function named parse_time in Python."),
    "unit": ("How long does it take to walk 5 km?", "How long does it take to walk 5 miles?"),
    "swapped units": ("convert 100 kilograms to pounds", "convert 100 pounds to kilograms"),
    "date": ("What happened in Paris on 14 July 1789?", "What happened in Paris on 14 July 1790?"),
    "month": ("List the public holidays in may in germany", "List the public holidays in june in germany"),
    "tense": ("who was the ceo of apple", "who is the ceo of apple"),
    "number word": ("write a poem of eleven lines", "write a poem of twelve lines"),
    "decimal comma": ("multiply 1,5 by 2", "multiply 15 by 2"),
    "sort order": ("sort 3, 1, 2 in ascending order", "sort 3, 1, 2 in descending order"),
    "direction": ("translate from english into french: hello", "translate from french into english: hello"),
    "comparison": ("is an elephant heavier than a whale?", "is a whale heavier than an elephant?"),
    "negating prefix": ("how do I lock the screen on windows", "how do I unlock the screen on windows"),
    "arithmetic": ("multiply 1234 by 5678", "divide 1234 by 5678"),
    "added word": ("Write a poem about the sea.", "Write a sad poem about the sea."),
    "preposition": ("put the red book in the box", "put the red book on the box"),
}
PARAPHRASES = {
    "case only": ("What is the capital of France?", "WHAT IS THE CAPITAL OF FRANCE?"),
    "punctuation": ("What is the capital of France?", "what is the capital of france"),
    "whitespace": ("What is the capital\nof France?", "  What is   the capital of France? "),
    "polite prefix": ("What is the capital of France?", "Could you please tell me what is the capital of France?"),
    "thanks": ("Name three rivers in Spain.", "Name three rivers in Spain, thanks!"),
    "contraction": ("What is the boiling point of water?", "What's the boiling point of water?"),
    "filler": ("Explain how tides work.", "Just explain how tides work, please."),
    "sentences swapped": (
        "The train leaves at 9. How long is the trip to Lyon?",
        "How long is the trip to Lyon? The train leaves at 9.",
    ),
}


@pytest.mark.parametrize("name", list(NEAR_MISSES))
def test_the_guard_refuses_every_near_miss(name: str) -> None:
    a, b = (fingerprint(t) for t in NEAR_MISSES[name])
    assert a is not None and b is not None
    guard = PrecisionGuard()
    assert not guard.check(a, b).agree and not guard.check(b, a).agree


@pytest.mark.parametrize("name", list(PARAPHRASES))
def test_the_guard_accepts_true_paraphrases(name: str) -> None:
    a, b = (fingerprint(t) for t in PARAPHRASES[name])
    assert a is not None and b is not None
    assert PrecisionGuard().check(a, b).agree, PrecisionGuard().check(a, b)


def test_normalise_folds_case_quotes_contractions_and_polite_framing() -> None:
    assert normalise("Hi, could you please TELL me what\u2019s   up?  Thanks!") == "what is up?"
    assert normalise("I can't and won't") == "i can not and will not"


def test_a_difference_past_the_embedding_window_is_still_seen() -> None:
    clauses = " ".join(f"Clause {i}: the tenant keeps the flat clean." for i in range(60))
    a = fingerprint(clauses + " May the tenant keep a dog? Answer yes.")
    b = fingerprint(clauses + " May the tenant keep a dog? Answer no.")
    assert a is not None and b is not None
    assert not PrecisionGuard().check(a, b).agree


def test_a_prompt_too_long_to_guard_is_never_cached() -> None:
    assert fingerprint("x" * (MAX_PROMPT_CHARS + 1)) is None
    cache: SemanticCache[str] = SemanticCache(ttl_s=None, guard=PrecisionGuard())
    assert not cache.store("ns", np.ones(4, np.float32), "answer")  # no fingerprint: not kept
    assert len(cache) == 0


def _cache(guard: PrecisionGuard | None = None, threshold: float = 0.9) -> SemanticCache[str]:
    return SemanticCache(threshold=threshold, ttl_s=None, guard=guard or PrecisionGuard())


def test_a_candidate_refused_by_the_guard_is_a_miss_and_the_next_candidate_is_tried() -> None:
    cache = _cache()
    v = np.array([1.0, 0.0], np.float32)
    near = np.array([0.999, 0.04], np.float32)
    cache.store("ns", v, "order 1234", prompt=fingerprint("refund order 1234"))
    assert cache.lookup("ns", v, fingerprint("refund order 9876")) is None
    assert cache.refused == 1
    cache.store("ns", near, "order 9876", prompt=fingerprint("refund order 9876"))
    # the most similar entry (order 1234) is refused, the second (order 9876) is the hit
    assert cache.lookup("ns", v, fingerprint("Refund order 9876!")) == "order 9876"


def test_the_same_normalised_prompt_hits_below_the_threshold() -> None:
    cache = _cache(threshold=0.99)
    cache.store("ns", np.array([1.0, 0.0], np.float32), "Paris", prompt=fingerprint("What is the capital of France?"))
    far = np.array([0.0, 1.0], np.float32)  # as if the embedding had moved a lot
    assert cache.lookup("ns", far, fingerprint("what is the capital of france")) == "Paris"
    assert cache.lookup("ns", far, fingerprint("what is the capital of spain")) is None


def test_with_a_guard_a_lookup_or_entry_without_a_prompt_never_hits() -> None:
    cache = _cache()
    v = np.array([1.0, 0.0], np.float32)
    assert not cache.store("ns", v, "no prompt")
    cache.store("ns", v, "kept", prompt=fingerprint("hello there, general"))
    assert cache.lookup("ns", v) is None  # nothing to check the candidate against
    assert cache.lookup("ns", v, fingerprint("hello there, general")) == "kept"


def test_an_evicted_entry_leaves_no_exact_match_behind() -> None:
    cache: SemanticCache[str] = SemanticCache(threshold=0.99, max_entries=1, ttl_s=None, guard=PrecisionGuard())
    cache.store("ns", np.array([1.0, 0.0], np.float32), "first", prompt=fingerprint("first prompt"))
    cache.store("ns", np.array([0.0, 1.0], np.float32), "second", prompt=fingerprint("second prompt"))
    assert cache.lookup("ns", np.array([0.0, 1.0], np.float32), fingerprint("first prompt")) is None
    assert cache.shelves["ns"].keys == {"second prompt": cache.shelves["ns"].keys["second prompt"]}


def test_a_newer_answer_for_the_same_prompt_replaces_the_older() -> None:
    cache = _cache()
    v = np.array([1.0, 0.0], np.float32)
    cache.store("ns", v, "old", prompt=fingerprint("Tell me a joke"))
    cache.store("ns", v, "new", prompt=fingerprint("tell me a joke."))
    assert len(cache) == 1 and cache.lookup("ns", v, fingerprint("Tell me a joke")) == "new"


def test_issue_near_misses_never_hit_through_a_cache_with_real_embeddings(minilm: Any) -> None:
    """The issue's acceptance test: none of the near misses (most of them over 0.9 by the embedding alone)
    is served the other's answer; the paraphrases are."""
    threshold = SemanticCacheSettings().threshold
    settings = SemanticCacheSettings()
    guard = PrecisionGuard(minilm, synonym_similarity=settings.synonym_similarity, max_swaps=settings.max_swaps)
    over = 0
    for name, (a, b) in NEAR_MISSES.items():
        cache: SemanticCache[str] = SemanticCache(threshold=threshold, ttl_s=None, guard=guard)
        va, vb = minilm.embed([a, b])
        over += float(va @ vb / np.linalg.norm(va) / np.linalg.norm(vb)) >= 0.9
        cache.store("ns", va, a, prompt=fingerprint(a))
        assert cache.lookup("ns", vb, fingerprint(b)) is None, name
    assert over >= len(NEAR_MISSES) // 2, "the pairs must be near misses the embedding alone would serve"
    for name, (a, b) in PARAPHRASES.items():
        cache = SemanticCache(threshold=threshold, ttl_s=None, guard=guard)
        va, vb = minilm.embed([a, b])
        cache.store("ns", va, a, prompt=fingerprint(a))
        assert cache.lookup("ns", vb, fingerprint(b)) == a, name


def test_near_synonyms_pass_and_unrelated_words_do_not(minilm: Any) -> None:
    guard = PrecisionGuard(minilm, synonym_similarity=0.85)
    fa = fingerprint("recommend a good car for a family")
    assert fa is not None
    same = fingerprint("recommend a good automobile for a family")
    other = fingerprint("recommend a good boat for a family")
    assert same is not None and other is not None
    assert guard.check(fa, same).agree
    assert not guard.check(fa, other).agree


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("what is 1234 + 5678", "what is 1234 - 5678"),
        ("return x when a == b", "return x when a != b"),
        ("flag the order if the total is > 100", "flag the order if the total is < 100"),
        ("classify this reaction: \U0001f44d", "classify this reaction: \U0001f44e"),
        ("Price: $500", "Price: \u20ac500"),
    ],
)
def test_operators_and_symbols_are_words_too(a: str, b: str) -> None:
    fa, fb = fingerprint(a), fingerprint(b)
    assert fa is not None and fb is not None
    assert not PrecisionGuard().check(fa, fb).agree


def test_a_hyphen_inside_a_word_is_punctuation() -> None:
    fa, fb = fingerprint("Give a well-known example."), fingerprint("give a well known example")
    assert fa is not None and fb is not None
    assert PrecisionGuard().check(fa, fb).agree


@pytest.mark.parametrize(
    "hostile", [". " * 16_000, "," * 32_000, "-" * 32_000, " please" * 4_500, "a@" * 16_000, ",.;!- " * 5_000]
)
def test_a_hostile_prompt_is_fingerprinted_in_linear_time(hostile: str) -> None:
    """The guard runs on the embedding thread: a pattern tried from every position over a long run of
    punctuation was quadratic (32,000 dots took 22 s, hyphens 13 s); each is now tens of milliseconds."""
    import time

    start = time.perf_counter()
    fingerprint(hostile[:MAX_PROMPT_CHARS])  # None for some: punctuation only, no words to compare
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize(("a", "b"), [("add .5 to x", "add 5 to x"), ("add 0.5 to x", "add 05 to x"), ("+5", "5")])
def test_numbers_are_compared_as_written(a: str, b: str) -> None:
    fa, fb = fingerprint(a), fingerprint(b)
    assert fa is not None and fb is not None
    assert not PrecisionGuard().check(fa, fb).agree


def test_a_prompt_with_no_words_left_is_not_cached() -> None:
    """ "Thanks!" and "Please." normalise to nothing: they would share one key and one answer."""
    assert fingerprint("Thanks!") is None and fingerprint("Please.") is None and fingerprint("???") is None
    assert fingerprint("\U0001f44d") is not None  # a symbol is a word
