"""A provider from outside the package, end to end: `provider: tests.plugins.acme_adapter:AcmeAdapter` (a
made-up wire format with options of its own) served by the real `modelyard serve` process to the official
OpenAI SDK, and the mistakes a user makes with such an adapter reported by `modelyard check` with file:line.
Nothing in src/ knows the Acme format."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from modelyard.testing.process import GatewayProcess
from tests.plugins.acme_upstream import AcmeUpstream

ROOT = Path(__file__).resolve().parents[2]
#: The serving process imports the adapter from the checkout, as it would from an installed package.
ENV = {"PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p), "COLUMNS": "200"}
ADAPTER = "tests.plugins.acme_adapter:AcmeAdapter"


def config_yaml(api_base: str, provider: str = ADAPTER, options: tuple[str, ...] = ("tone: shouty",)) -> str:
    """The Acme deployment; `options` are lines of its `options:` block (the first on line 9)."""
    return (
        "deployments:\n"
        "  - name: house@acme\n"
        f"    provider: {provider}\n"
        "    model: acme-7\n"
        f'    api_base: "{api_base}"\n'
        "    api_key: acme-secret\n"
        "    price: {input: 1.0, output: 2.0}\n"
        "    options:\n" + "".join(f"      {line}\n" for line in options) + "models:\n"
        "  house: {candidates: [house@acme]}\n"
    )


@pytest.fixture(scope="module")
def acme() -> Iterator[AcmeUpstream]:
    with AcmeUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def client(acme: AcmeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    config = tmp_path_factory.mktemp("acme") / "modelyard.yaml"
    config.write_text(config_yaml(acme.url))
    with GatewayProcess(config, env=ENV) as gateway:
        yield openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def test_a_chat_through_an_adapter_from_outside_the_package(client: openai.OpenAI, acme: AcmeUpstream) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="house", messages=[{"role": "user", "content": "hello there acme"}]
    )
    answer = raw.parse()
    assert answer.choices[0].message.content == "ACME THERE HELLO"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (3, 3)
    assert raw.headers["x-modelyard-provider"] == ADAPTER
    assert float(raw.headers["x-modelyard-cost-usd"]) > 0
    sent = acme.seen[-1]
    # The adapter's own typed options reached it: the tone from the config, the default budget.
    assert sent["body"] == {
        "engine": "acme-7",
        "turns": [{"speaker": "user", "says": "hello there acme"}],
        "budget": 64,
        "tone": "shouty",
        "stream": False,
    }
    assert sent["headers"]["x-acme-key"] == "acme-secret"


def test_a_stream_through_an_adapter_from_outside_the_package(client: openai.OpenAI, acme: AcmeUpstream) -> None:
    stream = client.chat.completions.create(
        model="house",
        messages=[{"role": "user", "content": "one two three"}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "THREE TWO ONE "
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (3, 3)
    assert acme.seen[-1]["body"]["budget"] == 5 and acme.seen[-1]["body"]["stream"] is True


def check(tmp_path: Path, text: str) -> tuple[int, str, Path]:
    path = tmp_path / "modelyard.yaml"
    path.write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "modelyard.cli.main", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **ENV},
        cwd=tmp_path,  # not the checkout: the adapter is found through PYTHONPATH, like an installed one
    )
    return done.returncode, (done.stdout + done.stderr).replace("\n", ""), path


def test_check_accepts_the_adapter_and_its_options(tmp_path: Path) -> None:
    code, out, _ = check(tmp_path, config_yaml("http://127.0.0.1:9"))
    assert code == 0, out
    assert "OK" in out


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (("tone: shouty", "tonne: formal"), ":10: deployments[0].options.tonne: Object contains unknown field `tonne`"),
        (("tone: whisper",), ":9: deployments[0].options.tone: Invalid enum value 'whisper'"),
        (("tone: plain", "default_budget: 0"), ":10: deployments[0].options.default_budget: Expected `int` >= 1"),
    ],
)
def test_check_reports_a_mistake_in_the_adapters_options_with_file_and_line(
    tmp_path: Path, options: tuple[str, ...], expected: str
) -> None:
    code, out, path = check(tmp_path, config_yaml("http://127.0.0.1:9", options=options))
    assert code == 2, out
    assert f"{path}{expected}" in out


@pytest.mark.parametrize(
    ("provider", "expected"),
    [
        ("tests.plugins.nowhere:AcmeAdapter", "cannot import 'tests.plugins.nowhere'"),
        ("tests.plugins.acme_adapter:AcmeAdaptor", "'tests.plugins.acme_adapter:AcmeAdaptor' names nothing"),
        ("tests.plugins.acme_adapter:PATH", "names a str, not a class"),
        ("tests.plugins.acme_adapter:AcmeOptions", "is not an adapter: it lacks chat_call, parse_chat"),
        ("acme", "unknown provider 'acme': one of openai, anthropic, gemini"),
    ],
)
def test_check_reports_a_provider_that_names_no_adapter_with_file_and_line(
    tmp_path: Path, provider: str, expected: str
) -> None:
    code, out, path = check(tmp_path, config_yaml("http://127.0.0.1:9", provider=provider))
    assert code == 2, out
    assert f"{path}:3: deployments[0].provider: " in out
    assert expected in out
