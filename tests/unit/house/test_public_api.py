"""The package's public surface: one way to build the gateway, one root for its exceptions."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import modelyard
from modelyard.config.loader import parse_config
from modelyard.server.app import Gateway

CONFIG = """
deployments:
  - {name: a, provider: openai, model: gpt-4o-mini, api_base: "http://127.0.0.1:9/v1", api_key: k}
models:
  m: {candidates: [a]}
spend: {enabled: false}
"""


def test_create_app_from_a_config_or_a_path(tmp_path: Path) -> None:
    from_config = modelyard.create_app(parse_config(CONFIG))
    path = tmp_path / "modelyard.yaml"
    path.write_text(CONFIG)
    from_path = modelyard.create_app(path)
    from_text_path = modelyard.create_app(str(path))
    for app in (from_config, from_path, from_text_path):
        assert isinstance(app, Gateway)
        assert [d.name for d in app.config.deployments] == ["a"]


def test_importing_the_package_does_not_load_the_server() -> None:
    code = "import sys, modelyard; print(any(m.startswith('modelyard.server') for m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        modelyard.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("modelyard.no_such_name resolved")


def _own_exception_classes() -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for info in pkgutil.walk_packages(modelyard.__path__, "modelyard."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == info.name
                and not name.startswith("_")
            ):
                found.append(value)
    return found


def test_every_exception_the_package_defines_is_a_modelyard_error() -> None:
    classes = _own_exception_classes()
    assert len(classes) >= 10  # the walk found the package's exceptions
    outside = sorted(f"{c.__module__}.{c.__qualname__}" for c in classes if not issubclass(c, modelyard.ModelyardError))
    assert outside == []
