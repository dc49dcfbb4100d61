"""The modules a compiled build turns into C extensions with mypyc (issue #20: where Python is the limit).

One list for every build: `setup.py` reads it when `MODELYARD_COMPILE=1` (a wheel with the compiled modules
beside their sources) and `scripts/compile` reads it for a compiled copy of the tree (`build/compiled`, for
benchmarks and CI). The sources stay the pure-Python fallback: an install without a C compiler, or without the
flag, runs them as they are, with the same behaviour.

A module belongs here only if it sits on the per-request path and mypyc can compile it. Left out, each for a
reason: `providers/transport.py` and `routing/executor.py` (async generators, which mypyc does not compile),
`providers/base.py` (runtime-checkable protocols), `routing/trace.py` (msgspec structs), `accounting/spend.py`
(a surrogate code point in a literal), `providers/openai.py` (its adapter and stream translator are
subclassed by Azure's and by third-party adapters, which a compiled base class refuses, and its msgspec
options lose their annotations compiled).

Compiled code checks the declared types of arguments at run time, and reads class attributes set after
import only when they are declared `ClassVar`: the compiled pass of `scripts/test` runs the suites that
exercise these modules through real objects. A compiled coroutine keeps the exception it is handling in the
thread's state rather than its own, so these modules never await inside an `except` or `finally` block
(another task would run with that state: a handled exception leaks, and a later clean `finally` elsewhere
raises it again); cleanup that awaits runs after the block (`server.http.always`), which
tests/unit/house/test_hot_path.py enforces and tests/e2e/test_exception_state.py shows.

Stdlib only: `setup.py` runs this file before the package is installed.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os

MODULES: tuple[str, ...] = (
    "modelyard.accounting.prices",
    "modelyard.accounting.spool",
    "modelyard.providers.http1",
    "modelyard.providers.sse",
    "modelyard.routing.admission",
    "modelyard.routing.features",
    "modelyard.routing.limits",
    "modelyard.routing.plan",
    "modelyard.routing.router",
    "modelyard.routing.strategies",
    "modelyard.server.access",
    "modelyard.server.app",
    "modelyard.server.codecs.chat_completions",
    "modelyard.server.coalesce",
    "modelyard.server.context",
    "modelyard.server.http",
    "modelyard.server.metrics",
    "modelyard.server.pipeline",
    "modelyard.server.priority",
    "modelyard.server.protocol",
    "modelyard.server.services",
    "modelyard.server.validation",
    "modelyard.state.counters",
    "modelyard.state.rollup",
    "modelyard.state.windows",
)


#: mypy's options for the compiling run (setup.py and scripts/compile): the listed modules are checked, not the
#: project's strict development settings (CI enforces those with every extra installed; a plain install has no
#: numpy), and what they import is analysed silently.
MYPY_OPTIONS: tuple[str, ...] = ("--config-file=", "--ignore-missing-imports", "--follow-imports=silent")


def source_paths(root: str = "src") -> list[str]:
    """The source file of each module under `root` (the layout mypyc is given)."""
    return [os.path.join(root, *name.split(".")) + ".py" for name in MODULES]


def compiled() -> list[str]:
    """The hot-path modules an import would load compiled (found, not executed: the banner costs nothing)."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    found = []
    for name in MODULES:
        spec = importlib.util.find_spec(name)
        if spec is not None and str(spec.origin).endswith(suffixes):
            found.append(name)
    return found


def describe() -> str:
    """One line for the start-up banner: which build serves the requests."""
    count = len(compiled())
    if count == 0:
        return "hot path: pure Python"
    return f"hot path: compiled with mypyc ({count} of {len(MODULES)} modules)"
