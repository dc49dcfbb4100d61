"""The compiled build's module list (src/modelyard/hot_path.py): every entry is a real module of the package,
and a run that is meant to be compiled (scripts/test's compiled pass sets MODELYARD_EXPECT_COMPILED=1) really
loads every one of them compiled, so a copy that silently fell back to Python fails instead of passing as one."""

from __future__ import annotations

import ast
import importlib
import os
import runpy
from pathlib import Path

import pytest
import setuptools

import modelyard
from modelyard import hot_path

ROOT = Path(modelyard.__file__).resolve().parent.parent


def test_every_listed_module_is_a_source_file_of_the_package() -> None:
    assert len(set(hot_path.MODULES)) == len(hot_path.MODULES)
    for path in hot_path.source_paths(str(ROOT)):
        assert Path(path).is_file(), path
    for name in hot_path.MODULES:
        assert importlib.import_module(name).__name__ == name


def test_the_list_keeps_out_what_mypyc_cannot_compile() -> None:
    """Async generators and runtime-checkable protocols do not compile (hot_path's docstring says which)."""
    for path in hot_path.source_paths(str(ROOT)):
        tree = ast.parse(Path(path).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.AsyncFunctionDef):
                inner = [n for n in ast.walk(node) if isinstance(n, ast.Yield | ast.YieldFrom)]
                assert not inner, f"{path}: async generator {node.name}"
            if isinstance(node, ast.Name):
                assert node.id != "runtime_checkable", path


def awaits_in_handlers(source: str) -> list[int]:
    """Lines that await (or `async for` / `async with`) inside an `except` or `finally` block, and `async with`
    statements anywhere except `asyncio.timeout` (whose exit never suspends): mypyc keeps a coroutine's handled
    exception in the thread's state, so a switch to another task there leaks or resurrects one."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Try | ast.TryStar):
            bodies = [handler.body for handler in node.handlers] + [node.finalbody]
            for stmt in (stmt for body in bodies for stmt in body):
                found += [n.lineno for n in ast.walk(stmt) if isinstance(n, ast.Await | ast.AsyncFor | ast.AsyncWith)]
        if isinstance(node, ast.AsyncWith):
            timeouts = [item for item in node.items if ast.unparse(item.context_expr).startswith("asyncio.timeout(")]
            if len(timeouts) != len(node.items):
                found.append(node.lineno)
    return sorted(set(found))


def test_hot_path_coroutines_do_not_await_in_except_or_finally_blocks() -> None:
    """tests/e2e/test_exception_state.py shows what it breaks; cleanup that awaits runs after the block
    (`modelyard.server.http.always`)."""
    for path in hot_path.source_paths(str(ROOT)):
        assert awaits_in_handlers(Path(path).read_text()) == [], path


def test_the_await_rule_sees_each_form() -> None:
    assert awaits_in_handlers("async def f():\n    try:\n        pass\n    except E:\n        await g()\n") == [5]
    assert awaits_in_handlers("async def f():\n    try:\n        pass\n    finally:\n        await g()\n") == [5]
    assert awaits_in_handlers("async def f():\n    async with lock:\n        pass\n") == [2]
    assert awaits_in_handlers("async def f():\n    async with asyncio.timeout(1):\n        await g()\n") == []
    assert awaits_in_handlers("async def f():\n    try:\n        await g()\n    except E:\n        x = 1\n") == []


@pytest.mark.skipif(os.environ.get("MODELYARD_EXPECT_COMPILED") == "1", reason="the compiled pass checks the other way")
def test_a_source_tree_runs_pure_python() -> None:
    assert hot_path.compiled() == []
    assert hot_path.describe() == "hot path: pure Python"


@pytest.mark.skipif(os.environ.get("MODELYARD_EXPECT_COMPILED") != "1", reason="only in the compiled pass")
def test_the_compiled_pass_runs_every_hot_path_module_compiled() -> None:
    assert hot_path.compiled() == list(hot_path.MODULES)
    assert (
        hot_path.describe()
        == f"hot path: compiled with mypyc ({len(hot_path.MODULES)} of {len(hot_path.MODULES)} modules)"
    )
    assert importlib.import_module("modelyard.server.app").__file__.endswith(".so")


def test_setup_py_builds_pure_python_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """`pip install .` stays pure (no compiler needed); MODELYARD_COMPILE=1 hands the list to mypyc."""
    setup_py = ROOT.parent / "setup.py"
    if not setup_py.is_file():
        pytest.skip("installed package: no setup.py beside it")
    called: dict[str, object] = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: called.update(kw))
    monkeypatch.delenv("MODELYARD_COMPILE", raising=False)
    monkeypatch.chdir(setup_py.parent)
    runpy.run_path(str(setup_py))
    assert called == {"ext_modules": []}
