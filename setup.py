"""Optional compiled build (issue #20): `MODELYARD_COMPILE=1 pip install .` compiles the hot-path modules
listed in src/modelyard/hot_path.py with mypyc (needs a C compiler and Python's headers); without the flag the
package is pure Python. Everything else about the package is in pyproject.toml."""

from __future__ import annotations

import os
import runpy

from setuptools import setup


def ext_modules() -> list[object]:
    if os.environ.get("MODELYARD_COMPILE") != "1":
        return []
    from mypyc.build import mypycify

    hot_path = runpy.run_path(os.path.join("src", "modelyard", "hot_path.py"))
    return list(mypycify(hot_path["source_paths"](), opt_level="3"))


setup(ext_modules=ext_modules())
