"""lab/cache_pairs.py: the pair set is rebuilt the same everywhere, and the committed sample is a slice of it."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from modelyard.lab import datasets as ds
from modelyard.lab.cache_pairs import Pair, read_pairs, sample_pairs, shared_pairs

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "semantic_cache_pairs_sample.jsonl"


def test_a_sample_takes_the_same_few_pairs_of_every_kind_and_label() -> None:
    pairs = [Pair(f"a{i}", f"b{i}", kind, hit) for kind, hit in (("number", False), ("case", True)) for i in range(20)]
    pairs.append(Pair("x", "y", "rare", False))
    sample = sample_pairs(pairs, 3, seed=7)
    assert Counter((p.kind, p.hit) for p in sample) == {("case", True): 3, ("number", False): 3, ("rare", False): 1}
    assert set(sample) <= set(pairs) and len(set(sample)) == 7
    assert sample_pairs(pairs, 3, seed=7) == sample  # seeded


@pytest.mark.skipif(ds.shared_data_dir() is None, reason="the shared routing data is not on this machine")
def test_the_committed_sample_is_a_slice_of_the_rebuilt_set() -> None:
    start = time.monotonic()
    full = shared_pairs()
    assert len(full) == 4900 and sum(not p.hit for p in full) == 2800
    assert sample_pairs(full, 6) == read_pairs(SAMPLE)
    assert time.monotonic() - start < 60
