"""Semantic router (example utterances -> route) and semantic cache (similar prompt -> cached answer)."""

from __future__ import annotations

import numpy as np
import pytest

from modelyard.routing.semantic import SemanticCache, SemanticRouter, namespace

from .conftest import HashEmbedder

ROUTES = {
    "coding": [
        "write a python function to sort a list", "fix this bug in my javascript code",
        "how do I reverse a string in java", "explain this SQL query error",
        "refactor this class to use dependency injection", "why does this code throw a null pointer exception",
        "implement binary search in C++", "write a unit test for this function",
        "my program crashes with a segmentation fault", "convert this loop into a list comprehension",
    ],
    "search": [
        "what is the latest news about the election", "find recent papers on protein folding",
        "what is the weather in paris today", "look up the population of brazil",
        "who won the football match last night", "what is the current stock price of apple",
        "search the web for cheap flights to tokyo", "find the opening hours of the nearest pharmacy",
        "what are the reviews for the new iphone", "who is the CEO of microsoft",
    ],
    "classification": [
        "classify this review as positive or negative", "label the sentiment of this tweet",
        "is this email spam or not spam", "categorize this support ticket into billing, technical or other",
        "tag this sentence with its topic", "which category does this news article belong to",
        "detect the language of this text", "is this comment toxic or safe",
        "assign one of these labels to the message: urgent, normal, low",
        "decide whether this transaction looks fraudulent",
    ],
    "reasoning": [
        "prove that there are infinitely many primes", "solve this logic puzzle step by step",
        "if all bloops are razzies and some razzies are lazzies, are all bloops lazzies?",
        "work out the optimal strategy for this game", "derive the formula for compound interest",
        "think step by step: how many weighings are needed to find the fake coin",
        "show that the sum of the angles in a triangle is 180 degrees",
        "a train leaves at 3pm going 60 mph, when does it catch the other train",
        "analyse the trade-offs of these two plans and recommend one", "what is the flaw in this argument",
    ],
}  # fmt: skip

# Written separately from the utterances above: none of them appears there.
HELD_OUT = {
    "coding": [
        "Write a C++ function that checks whether a number is prime", "Why does my Python script throw a KeyError?",
        "My React component re-renders forever, how do I fix it?", "Add type hints to this Go struct",
        "How do I read a CSV file in Rust?",
    ],
    "search": [
        "Find me the current price of bitcoin", "What are today's top headlines?",
        "Who is the current prime minister of Japan?", "When does the next SpaceX launch happen?",
        "Which restaurants near me are open now?",
    ],
    "classification": [
        "Is this product review positive or negative: the battery died after two days",
        "Categorize this customer message: I was charged twice",
        "Detect whether this comment is toxic: you are an idiot",
        "Label this headline as sports, politics or business", "Is this SMS a phishing attempt?",
    ],
    "reasoning": [
        "A bat and a ball cost 1.10 in total. The bat costs 1.00 more than the ball. How much does the ball "
        "cost? Think step by step.",
        "Prove that the square root of 2 is irrational", "Show that the sum of two odd numbers is even",
        "Three boxes are mislabelled; how do you fix the labels by drawing one fruit?",
        "Which of these two investment plans is better over ten years, and why?",
    ],
}  # fmt: skip


@pytest.mark.parametrize("aggregate", ["max", "top3", "centroid"])
def test_routes_held_out_utterances(minilm, aggregate) -> None:  # type: ignore[no-untyped-def]
    router = SemanticRouter(ROUTES, threshold=0.05, default="general", embedder=minilm, aggregate=aggregate)
    cases = [(route, p) for route, prompts in HELD_OUT.items() for p in prompts]
    got = [router.route(p)[0] for _, p in cases]
    right = sum(g == want for g, (want, _) in zip(got, cases, strict=True))
    assert right >= 18, list(zip(got, cases, strict=True))  # 90% of 20 unseen prompts


def test_unrelated_prompt_goes_to_default(minilm) -> None:  # type: ignore[no-untyped-def]
    router = SemanticRouter(ROUTES, threshold=0.4, default="general", embedder=minilm)
    route, sim = router.route("Tell me a bedtime story about a friendly dragon")
    assert route == "general"
    assert sim < 0.4
    route, sim = router.route("Is this email spam or not?")
    assert route == "classification" and sim >= 0.4


def test_utterances_embedded_once(hash_embedder: HashEmbedder) -> None:
    router = SemanticRouter({"a": ["red apple", "green apple"], "b": ["blue car"]}, 0.5, None, hash_embedder)
    assert hash_embedder.calls == 1 and hash_embedder.texts == 3
    assert router.route("green apple") == ("a", pytest.approx(1.0))
    assert router.route("blue car")[0] == "b"
    assert router.route("quantum chromodynamics lecture")[0] is None  # no shared words: default (None)
    assert hash_embedder.calls == 4  # one call per routed prompt, none for utterances


def test_match_explains_nearest_utterance(hash_embedder: HashEmbedder) -> None:
    router = SemanticRouter({"a": ["red apple", "green apple"], "b": ["blue car"]}, 0.99, "d", hash_embedder)
    m = router.match("green apple pie")
    assert m.route == "d"  # below the threshold
    assert m.nearest_route == "a" and m.utterance == "green apple"
    assert set(router.scores("blue car")) == {"a", "b"}


def test_router_rejects_bad_config(hash_embedder: HashEmbedder) -> None:
    with pytest.raises(ValueError):
        SemanticRouter({"a": []}, 0.5, None, hash_embedder)
    with pytest.raises(ValueError):
        SemanticRouter({"a": ["x"]}, 1.5, None, hash_embedder)


def _vec(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cache_hit_within_threshold_only() -> None:
    cache: SemanticCache[str] = SemanticCache(threshold=0.95, max_entries=10, ttl_s=None)
    ns = namespace("gpt-4o", "key-1")
    cache.store(ns, _vec(1, 0, 0), "answer-x")
    assert cache.lookup(ns, _vec(1, 0.1, 0)) == "answer-x"  # cosine 0.995
    assert cache.lookup(ns, _vec(1, 0.5, 0)) is None  # cosine 0.894
    assert (cache.hits, cache.misses) == (1, 1)


def test_cache_returns_the_most_similar_entry() -> None:
    cache: SemanticCache[str] = SemanticCache(threshold=0.9, ttl_s=None)
    cache.store("ns", _vec(1, 0, 0), "x")
    cache.store("ns", _vec(0.9, 0.44, 0), "xy")
    assert cache.lookup("ns", _vec(0.95, 0.3, 0)) == "xy"
    assert cache.lookup("ns", _vec(1, 0.01, 0)) == "x"


def test_cache_namespaces_are_isolated() -> None:
    cache: SemanticCache[str] = SemanticCache(threshold=0.9, ttl_s=None)
    cache.store(namespace("m1", "k1"), _vec(1, 0), "a")
    assert cache.lookup(namespace("m1", "k2"), _vec(1, 0)) is None  # another key
    assert cache.lookup(namespace("m2", "k1"), _vec(1, 0)) is None  # another model
    assert cache.lookup(namespace("m1", "k1"), _vec(1, 0)) == "a"
    assert namespace("m", None) != namespace("m", "k")


def test_cache_ttl_expires_entries() -> None:
    clock = Clock()
    cache: SemanticCache[str] = SemanticCache(threshold=0.9, ttl_s=60.0, clock=clock)
    cache.store("ns", _vec(1, 0), "a")
    clock.now += 59
    assert cache.lookup("ns", _vec(1, 0)) == "a"
    clock.now += 2
    assert cache.lookup("ns", _vec(1, 0)) is None
    assert len(cache) == 0


def test_cache_evicts_least_recently_used() -> None:
    cache: SemanticCache[str] = SemanticCache(threshold=0.99, max_entries=2, ttl_s=None)
    cache.store("ns", _vec(1, 0, 0), "a")
    cache.store("ns", _vec(0, 1, 0), "b")
    assert cache.lookup("ns", _vec(1, 0, 0)) == "a"  # a is now more recent than b
    cache.store("ns", _vec(0, 0, 1), "c")  # evicts b
    assert cache.lookup("ns", _vec(0, 1, 0)) is None
    assert cache.lookup("ns", _vec(1, 0, 0)) == "a"
    assert cache.lookup("ns", _vec(0, 0, 1)) == "c"
    assert len(cache) == 2


def test_cache_grows_past_initial_capacity_and_clears() -> None:
    cache: SemanticCache[int] = SemanticCache(threshold=0.999, max_entries=100, ttl_s=None)
    eye = np.eye(40, dtype=np.float32)
    for i in range(40):
        cache.store("ns", eye[i], i)
    assert all(cache.lookup("ns", eye[i]) == i for i in range(40))
    cache.clear("ns")
    assert cache.lookup("ns", eye[0]) is None


def test_cache_with_real_embeddings(minilm) -> None:  # type: ignore[no-untyped-def]
    cache: SemanticCache[str] = SemanticCache(threshold=0.9, ttl_s=None)
    ns = namespace("gpt-4o", "k")
    cache.store(ns, minilm.embed_one("What is the capital of France?"), "Paris")
    assert cache.lookup(ns, minilm.embed_one("what's the capital of france")) == "Paris"
    assert cache.lookup(ns, minilm.embed_one("What is the capital of Germany?")) is None
