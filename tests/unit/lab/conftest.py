"""The lab's tests share the routing-intelligence fixtures (a bag-of-words embedder, the real MiniLM).

The routing extra (numpy, scipy) is optional for the package; without it these tests are not collected.
"""

from __future__ import annotations

import importlib.util

from tests.unit.routing_intel.conftest import hash_embedder, minilm

__all__ = ["hash_embedder", "minilm"]

if any(importlib.util.find_spec(m) is None for m in ("numpy", "scipy")):
    collect_ignore_glob = ["test_*.py"]  # `pip install 'modelyard[routing]'` to run them
