"""The house rules CI enforces (`scripts/check`) fail when broken: shown on a copy of the project with defects
injected, and the import-layer table's parser and contract generation table-tested on small trees."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _load_layers() -> ModuleType:
    spec = importlib.util.spec_from_file_location("layers", ROOT / "scripts" / "layers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["layers"] = module
    spec.loader.exec_module(module)
    return module


layers = _load_layers()

DOC = """# map
<!-- layers:begin -->
| package | job | may import |
|---|---|---|
| `low/` | the bottom | nothing of ours |
| `mid/` | the middle | `low` |
| `top/` | the top | any |
<!-- layers:end -->
"""


def _tree(root: Path, imports: dict[str, str]) -> Path:
    """A package `pkg` with one subpackage per entry, each module holding the given source."""
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    for name, source in imports.items():
        (root / "pkg" / name).mkdir()
        (root / "pkg" / name / "__init__.py").write_text(source)
    return root


def test_table_reads_rows_and_any() -> None:
    assert layers.read_table(DOC) == {"low": set(), "mid": {"low"}, "top": None}


def test_table_without_marks_is_an_error() -> None:
    with pytest.raises(layers.TableError, match="layers:begin"):
        layers.read_table(DOC.replace("<!-- layers:begin -->", ""))


def test_a_package_missing_from_the_table_fails() -> None:
    with pytest.raises(layers.TableError, match="missing from the layer table: extra"):
        layers.contracts_ini("pkg", layers.read_table(DOC), {"low", "mid", "top", "extra"})


def test_a_row_for_a_package_that_does_not_exist_fails() -> None:
    with pytest.raises(layers.TableError, match="do not exist: top"):
        layers.contracts_ini("pkg", layers.read_table(DOC), {"low", "mid"})


def test_contracts_forbid_everything_the_row_does_not_name() -> None:
    ini = layers.contracts_ini("pkg", layers.read_table(DOC), {"low", "mid", "top"})
    assert "source_modules = pkg.low" in ini and "    pkg.mid\n    pkg.top" in ini
    assert "source_modules = pkg.top" not in ini  # `any`: no contract


def test_forbidden_import_fails_and_allowed_one_passes(tmp_path: Path) -> None:
    doc = tmp_path / "architecture.md"
    doc.write_text(DOC)
    good = _tree(tmp_path / "good", {"low": "", "mid": "import pkg.low\n", "top": "import pkg.mid\n"})
    assert layers.main(["--root", str(good), "--doc", str(doc), "--package", "pkg"]) == 0
    bad = _tree(tmp_path / "bad", {"low": "import pkg.mid\n", "mid": "", "top": ""})
    assert layers.main(["--root", str(bad), "--doc", str(doc), "--package", "pkg"]) == 1


def _copy_project(target: Path) -> Path:
    for name in ("src", "tests", "bench", "scripts", "docs"):
        shutil.copytree(ROOT / name, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "pyproject.toml", target / "pyproject.toml")
    return target


@pytest.mark.slow
def test_scripts_check_fails_on_each_broken_rule(tmp_path: Path) -> None:
    """An unformatted file, a type error in server/ and a forbidden import each fail `scripts/check`."""
    project = _copy_project(tmp_path / "project")
    package = project / "src" / "modelyard"
    (package / "server" / "untidy.py").write_text('"""Unformatted on purpose."""\n\nVALUES = ( 1,2 )\n')
    with (package / "server" / "http.py").open("a") as handle:
        handle.write('\n\ndef _wrong_type() -> int:\n    return "not an int"\n')
    with (package / "schema" / "errors.py").open("a") as handle:
        handle.write("\n\nimport modelyard.server  # noqa: E402,F401\n")
    env = {**os.environ, "MYPY_CACHE_DIR": str(tmp_path / "mypy-cache")}
    result = subprocess.run(
        [str(project / "scripts" / "check")], cwd=project, env=env, capture_output=True, text=True, timeout=240
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    broken = next(line for line in output.splitlines() if line.startswith("house rules broken:"))
    assert {"format", "types", "layers"} <= set(broken.split(":")[1].split()), output
    assert "untidy.py" in output and 'Incompatible return value type (got "str", expected "int")' in output
    assert "modelyard.schema may import only: nothing of ours BROKEN" in output
