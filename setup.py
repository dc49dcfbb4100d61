"""Optional compiled build (issue #20): the hot-path modules listed in src/modelyard/hot_path.py compiled with
mypyc. It needs a C compiler, Python's headers and mypy in the building environment:

    pip install .
    pip install -U mypy "setuptools>=77" wheel
    MODELYARD_COMPILE=1 pip install --no-build-isolation --no-deps --force-reinstall .

(the first install brings the dependencies; the build uses this environment's setuptools and mypy).

Without the flag the package is pure Python (what `pip install .` and `pip install -e .` build). Everything else
about the package is in pyproject.toml."""

from __future__ import annotations

import os
import runpy

from setuptools import setup


def ext_modules() -> list[object]:
    if os.environ.get("MODELYARD_COMPILE") != "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as exc:
        raise SystemExit(
            "MODELYARD_COMPILE=1 needs mypy in the building environment: "
            'pip install -U mypy "setuptools>=77" wheel, then pip install --no-build-isolation .'
        ) from exc

    hot_path = runpy.run_path(os.path.join("src", "modelyard", "hot_path.py"))
    return list(mypycify([*hot_path["MYPY_OPTIONS"], *hot_path["source_paths"]()], opt_level="3"))


setup(ext_modules=ext_modules())
